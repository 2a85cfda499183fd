"""Using a trained model: load a trainer checkpoint, classify images.

    from igc_np.app.predict import load_trained, predict, load_images, top_k
    model = load_trained("runs/digits-resnet_igc8-L4M4/model-0020.npz")   # eval mode, on the CPU
    probs = predict(model, ["three.png", "x.npy"])                        # (N, classes), rows sum to 1
    for name, p in top_k(probs[0], model.input_spec.classes, k=3):
        print(name, p)

The command line: ``python -m igc_np predict --checkpoint FILE IMAGE [IMAGE ...] --top-k 5``.

A trainer checkpoint (``examples/cifar10_igc.py``) stores the options of its run (network, depth,
L, M, data set, dtype): ``load_trained`` rebuilds that network, copies the weights and the BN
running statistics in, and attaches ``model.input_spec`` (the data set's image size, normalisation
and class names) so that ``predict`` prepares raw images as the data set's test images were.

Images: PNG/JPEG files of any size (the short side scaled to the data set's image size, then the
centre square, as the ImageNet validation transform; greyscale for the digits), or ``.npy`` arrays
on the 0..255 scale, (3, H, W), (H, W, 3) or (H, W) for one image and (N, 3, H, W) for several
(an array of the data set's size is used as it is, so a test image saved with ``np.save`` gives
exactly the trainer's input). Every error names the file.
"""
import io
import os
from dataclasses import dataclass

import numpy as np

import igc_np as ig
from igc_np import functional as F
from igc_np.app.checkpoint import CheckpointError, load_checkpoint, restore
from igc_np.app.data import CIFAR, SVHN, DatasetError, load_dataset
from igc_np.app.datasets import TrainingData
from igc_np.app.evaluation import PRECISE_BN_BATCHES, batch_norms, precise_bn_statistics
from igc_np.app.imagenet import (IMAGENET_MEAN, IMAGENET_STD, ImageNetTrainingData, ValTransform,
                                 default_workers, imagenet_dir, load_imagenet)
from igc_np.serialization import open_regular

__all__ = ["InputSpec", "PredictError", "load_trained", "input_spec", "load_images", "predict",
           "top_k", "CLASS_NAMES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
CIFAR100_CLASSES = tuple((  # the fine labels, in the order of the files' label numbers
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab "
    "crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard "
    "lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom "
    "oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine "
    "possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake "
    "spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor "
    "train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split())
DIGIT_CLASSES = tuple(str(i) for i in range(10))
CLASS_NAMES = {"digits": DIGIT_CLASSES, "svhn": DIGIT_CLASSES, "cifar10": CIFAR10_CLASSES,
               "cifar100": CIFAR100_CLASSES}  # imagenet: "class 0", ... (the wnids are not stored)
IMAGE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32, "svhn": 32}


class PredictError(ValueError):
    """An input that cannot be classified; the message names the file (or the argument)."""


@dataclass(frozen=True)
class InputSpec:
    """How the training data looked: images (3, image_size, image_size) on the 0..255 scale,
    normalised by per-channel ``mean``/``std``; ``grey``: one channel repeated (the digits)."""
    dataset: str
    image_size: int
    mean: tuple
    std: tuple
    classes: tuple
    grey: bool = False


def input_spec(dataset, num_classes, image_size=None):
    """The InputSpec of a data set the trainer knows (no data is read, except the embedded digits,
    whose mean and std are computed from their training split as the trainer does)."""
    if dataset == "digits":
        ds = load_dataset("digits")
        mean, std = ds.mean, ds.std
    elif dataset in CIFAR:
        mean, std = CIFAR[dataset]["mean"], CIFAR[dataset]["std"]
    elif dataset == "svhn":
        mean, std = SVHN["mean"], SVHN["std"]
    elif dataset == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        raise PredictError(f"data set {dataset!r}: unknown; choose one of digits, cifar10, cifar100, "
                           "svhn, imagenet")
    classes = CLASS_NAMES.get(dataset, tuple(f"class {i}" for i in range(num_classes)))
    if len(classes) != num_classes:
        classes = tuple(f"class {i}" for i in range(num_classes))
    size = image_size or IMAGE_SIZE.get(dataset, 224)
    return InputSpec(dataset, int(size), tuple(mean), tuple(std), classes, grey=dataset == "digits")


BN_STATISTICS = ("as-tested", "running", "precise")


def load_trained(path, device="cpu", bn_statistics="as-tested", data_dir=None):
    """The model a trainer checkpoint holds, rebuilt from its stored options, in eval mode.

    path: a ``model-NNNN.npz`` (or ``model-interrupted.npz``) of examples/cifar10_igc.py. Raises
    CheckpointError naming the file for anything else (an MXNet ``.params`` file says how to load
    it). The model carries ``model.input_spec`` (InputSpec) for ``predict``.

    bn_statistics: which BatchNorm statistics the model keeps. 'running': the stored ones.
    'precise': recalibrated on the run's first PRECISE_BN_BATCHES training batches (its data set,
    from ``data_dir``; the file is not changed). 'as-tested' (default): those the trainer's last
    test pass used (its log says 'precise ...' for a short run, whose running statistics lag the
    weights), so that the model predicts as well as the logged test accuracy.
    """
    if bn_statistics not in BN_STATISTICS:
        raise ValueError(f"bn_statistics must be one of {', '.join(BN_STATISTICS)}, got {bn_statistics!r}")
    path = os.fspath(path)
    if path.endswith(".params"):
        raise CheckpointError(f"{path}: an MXNet .params file, not a trainer checkpoint; load it with "
                              "igc_np.app.mxnet_io.load_released(NAME, FILE)")
    ckpt = load_checkpoint(path)
    o = ckpt.args
    missing = [k for k in ("network", "depth", "primary_partition", "secondary_partition",
                           "dataset") if k not in o]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt.path}: its stored options lack {missing}")
    if ckpt.nonfinite:
        raise CheckpointError(f"checkpoint {ckpt.path}: NaN/inf in {', '.join(ckpt.nonfinite[:3])}: "
                              "the training had diverged; this is not a usable model")
    # the classifier is the one 2-D weight (convs are 4-D, BN vectors 1-D): its rows are the classes
    fc = [v for v in ckpt.model_state.values() if np.ndim(v) == 2]
    if len(fc) != 1:
        raise CheckpointError(f"checkpoint {ckpt.path}: expected one fully connected layer, found "
                              f"{len(fc)} two-dimensional weights")
    num_classes = fc[0].shape[0]
    if o["network"] in ig.nets.IMAGENET_CONFIGS:
        model = ig.nets.imagenet_model(o["network"], num_classes=num_classes)
    else:
        model = ig.nets.get_network(o["network"], o["depth"], num_classes=num_classes,
                                    primary_partition=o["primary_partition"],
                                    secondary_partition=o["secondary_partition"])
    model.to(device, np.dtype(o.get("dtype", "float32")))
    restore(ckpt, model)  # errors name the file and the entry that does not fit
    tested = ckpt.history[-1].get("eval_bn", "running") if ckpt.history else "running"
    if bn_statistics == "precise" or (bn_statistics == "as-tested" and tested.startswith("precise")):
        _recalibrate(model, ckpt, device, data_dir, bn_statistics)
    model.input_spec = input_spec(o["dataset"], num_classes,
                                  o.get("image_size") if o["dataset"] == "imagenet" else None)
    model.eval()
    return model


def _recalibrate(model, ckpt, device, data_dir, asked):
    """Keep precise BN statistics (PRECISE_BN_BATCHES training batches) in ``model``."""
    o = ckpt.args
    try:
        if o["dataset"] == "imagenet":
            ds = load_imagenet(imagenet_dir(data_dir), image_size=o.get("image_size") or 224,
                               workers=o.get("workers") or default_workers())
            data = ImageNetTrainingData(ds, o.get("batch_size", 256), model_dtype(model), device)
        else:
            ds = load_dataset(o["dataset"], data_dir, subset=o.get("subset"))
            data = TrainingData(ds, o.get("batch_size", 64), model_dtype(model), device)
    except (DatasetError, OSError, ImportError) as e:
        why = ("asked for" if asked == "precise" else
               "the trainer tested this checkpoint with them: its running statistics lag the weights")
        raise CheckpointError(
            f"checkpoint {ckpt.path}: precise BN statistics ({why}) are computed on training images "
            f"of {o['dataset']}, which could not be read ({e}); give data_dir (--data-dir), or keep "
            "the stored running statistics with bn_statistics='running' (--bn-statistics running)") \
            from None
    bns = batch_norms(model)
    with precise_bn_statistics(model, data.plain_train_batches(PRECISE_BN_BATCHES)):
        kept = [(m.running_mean.copy(), m.running_var.copy()) for m in bns]
    for m, (mean, var) in zip(bns, kept):  # the block put the stored ones back: keep these
        m.running_mean[...] = mean
        m.running_var[...] = var


def model_dtype(model):
    return _parameter(model).data.dtype


# ---- images -----------------------------------------------------------------------------------------
def _resize(payload, spec, where):
    """Encoded image bytes -> (3, S, S) uint8: short side to S, centre square (bilinear)."""
    size = spec.image_size
    # the trainer's ImageNet validation scales the short side to 256/224 of the crop; the small
    # data sets are stored at their size, so an image is scaled to exactly the crop
    short = round(size * 256 / 224) if spec.dataset == "imagenet" else size
    hwc = ValTransform(crop=size, short_side=short)(payload, where=where)
    if spec.grey:  # the digits: one grey channel, repeated
        grey = np.rint(hwc.astype(np.float64).mean(axis=2)).astype(np.uint8)
        return np.repeat(grey[None], 3, axis=0)
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def _from_array(a, spec, where):
    """One image array (3, H, W), (H, W, 3) or (H, W) on 0..255 -> (3, S, S) uint8."""
    if a.ndim == 2:
        a = np.repeat(a[None], 3, axis=0)
    elif a.ndim == 3 and a.shape[0] != 3 and a.shape[2] == 3:
        a = a.transpose(2, 0, 1)
    if a.ndim != 3 or a.shape[0] != 3:
        raise PredictError(f"{where}: shape {a.shape} is not an image: expected (3, H, W), (H, W, 3), "
                           "(H, W) or a batch (N, 3, H, W)")
    if a.dtype.kind not in "uif" or not np.isfinite(a).all() or a.min() < 0 or a.max() > 255:
        raise PredictError(f"{where}: values must be finite numbers on the 0..255 scale (dtype "
                           f"{a.dtype}, range {a.min()}..{a.max()})")
    if a.shape[1:] == (spec.image_size, spec.image_size):
        return a.astype(np.float64) if a.dtype.kind == "f" else a.astype(np.uint8)
    from PIL import Image  # lazy: Pillow only for resizing
    buf = io.BytesIO()
    Image.fromarray(np.rint(a).astype(np.uint8).transpose(1, 2, 0)).save(buf, format="PNG")
    return _resize(buf.getvalue(), spec, where)


def load_images(items, spec):
    """Files (PNG/JPEG/.npy) or arrays -> ((N, 3, S, S) float64 on 0..255, [name per image])."""
    if isinstance(items, (str, os.PathLike, np.ndarray)):
        items = [items]
    images, names = [], []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray) or hasattr(item, "numpy"):
            a, where = np.asarray(item), f"images[{i}]"
            parts = list(a) if a.ndim == 4 else [a]
            for j, part in enumerate(parts):
                name = f"{where}[{j}]" if a.ndim == 4 else where
                images.append(_from_array(part, spec, name))
                names.append(name)
            continue
        path = os.fspath(item)
        # regular files only (a FIFO or /dev/zero would block or read forever), named in the error
        with open_regular(path, "image", PredictError) as f:
            payload = f.read() if not path.lower().endswith(".npy") else None
            if payload is None:
                try:
                    a = np.load(f, allow_pickle=False)
                except (ValueError, OSError, EOFError) as e:
                    raise PredictError(f"{path}: not a NumPy .npy array ({e})") from None
        if payload is None:
            parts = list(a) if a.ndim == 4 else [a]
            for j, part in enumerate(parts):
                name = f"{path}[{j}]" if a.ndim == 4 else path
                images.append(_from_array(part, spec, name))
                names.append(name)
        else:
            try:
                images.append(_resize(payload, spec, path))
            except ImportError as e:
                raise PredictError(f"{path}: reading images needs Pillow: pip install Pillow ({e})") \
                    from None
            except Exception as e:  # ImageError from the decoder names the file already
                raise PredictError(str(e) if path in str(e) else f"{path}: {e}") from None
            names.append(path)
    if not images:
        raise PredictError("no images given")
    return np.stack([im.astype(np.float64) for im in images]), names


# ---- predicting -------------------------------------------------------------------------------------
def _parameter(model):
    for p in model.parameters():
        return p
    raise PredictError("the model has no parameters")


def predict(model, images, batch_size=256, spec=None):
    """Class probabilities (N, classes) float64 of ``images`` under ``model`` in eval mode.

    images: raw images as the data set stores them, (N, 3, S, S) or (3, S, S) on 0..255 (e.g.
    ``ds.test_x``), or a list of files / arrays (``load_images``). spec: the InputSpec; default
    ``model.input_spec`` (set by ``load_trained``). A batch of one gives the same row as the same
    image inside a larger batch: BatchNorm uses its running statistics in eval mode.
    """
    spec = spec or getattr(model, "input_spec", None)
    if spec is None:
        raise PredictError("predict: the model has no input_spec (its data set's size and "
                           "normalisation): load it with load_trained(path), or pass spec=input_spec("
                           "'cifar10', 10)")
    if isinstance(images, np.ndarray) and images.ndim == 4 and \
            images.shape[1:] == (3, spec.image_size, spec.image_size):
        x = images.astype(np.float64)
    else:
        x, _ = load_images(images, spec)
    p = _parameter(model)
    dtype = model_dtype(model)
    # exactly as data.iterate_batches normalises: (x - mean) * (1 / std), each in the model's dtype
    mean = np.asarray(spec.mean, np.float64).astype(dtype).reshape(1, 3, 1, 1)
    inv_std = (1.0 / np.asarray(spec.std, np.float64)).astype(dtype).reshape(1, 3, 1, 1)
    model.eval()
    out = []
    with ig.no_grad():
        for i in range(0, len(x), batch_size):
            xb = (x[i:i + batch_size].astype(dtype) - mean) * inv_std
            logits = model(ig.Tensor(xb, device=p.device))
            out.append(np.asarray(F.softmax(logits, dim=1).numpy(), dtype=np.float64))
    return np.concatenate(out)


def top_k(probs, classes, k=5):
    """[(class name, probability)] of the k largest entries of one row ``probs`` (classes,)."""
    probs = np.asarray(probs)
    order = np.argsort(-probs, kind="stable")[:max(1, min(int(k), len(probs)))]
    return [(classes[i], float(probs[i])) for i in order]
