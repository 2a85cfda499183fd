"""The application around the core: what a training job needs besides tensors, layers and optimizers.

The core (``igc_np/autograd.py``, ``ops/``, ``kernels/``, ``emu/``, ``nn.py``, ``nets.py``, ``igc.py``,
``optim.py``, ``ig.save/ig.load``) never imports this package; this package imports the core.

=================  ===========================================================================
module             what it holds
=================  ===========================================================================
``data``           CIFAR-10/100, SVHN, digits in memory; downloads; batches and augmentation
``imagenet``       ImageNet streamed from RecordIO or folders; the authors' augmentation
``datasets``       the data set registry: every data set by name, its loader, its trainer
                   defaults; ``TrainingData`` (the loop's batches of an in-memory data set)
``mxnet_io``       MXNet ``.params`` / RecordIO files; ``load_released`` (a released model)
``mxnet_graph``    MXNet ``-symbol.json`` graphs: which released model a file is
``distributed``    several processes (MPI, NCCL): ``dp_step``, reductions, ``spawn``
``options``        the trainer's option table: command line, checks, defaults, README table
``checkpoint``     trainer checkpoints: ``save_checkpoint``, ``load_checkpoint``, ``restore``
``run_folder``     the run folder: its lock, no earlier run replaced, writable
``signals``        Ctrl-C / SIGTERM as a flag between batches; ``Stop``; exit statuses
``progress``       ``log.jsonl``, the curves, progress bars and lines
``evaluation``     ``Metrics``, ``evaluate``, precise BN statistics, the test pass
``run``            ``Run`` (everything around the loop's step): folder, report, saver
``cli``            the trainer's command line: resolve options (resume), exit statuses
=================  ===========================================================================

Nothing is imported here: ``import igc_np.app.options`` loads only what that module needs.
"""
