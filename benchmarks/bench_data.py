"""ImageNet data path speed: JPEG decode, the seed's augmentation, batches with 1 and 2 workers, and
reading the released model format (.params) for IGC-L16M16.

    pip install 'igc_np[imagenet]'           # Pillow; simplejpeg optional, only compared here
    python benchmarks/bench_data.py          # --images 256 --quick

Images are synthetic JPEGs made here with a 480 short side (as the seed's .rec files store them):
smooth colour fields plus noise, quality 90, ~60-110 KB each, half landscape 640x480 and half
portrait 480x600. Figures:

1. decode only: Pillow (full size) and, when installed, simplejpeg, images/s on one core;
2. decode + the training augmentation (scale 256..480, aspect, 224 crop, mirror, HLS jitter,
   normalise to NCHW float32) and decode + the validation transform, images/s on one core;
3. ImageNetSource.batches (batch 64) with 1 and 2 worker threads, images/s;
4. save_params / load_params of IGC-L16M16 (13.5 M parameters, 118 arrays), seconds.

Times are medians of repeats in one process; on a shared machine they are noisy (compare ratios).
"""
import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import igc_np as ig  # noqa: E402
from igc_np import imagenet as inet  # noqa: E402
from igc_np import mxnet_io  # noqa: E402
from PIL import Image  # noqa: E402


def synthetic_jpegs(n, rng):
    out = []
    for i in range(n):
        w, h = (640, 480) if i % 2 == 0 else (480, 600)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        f = rng.random((3, 3)) * 0.03
        field = [127 + 100 * np.sin(f[c, 0] * xx + f[c, 1] * yy + 6 * f[c, 2]) for c in range(3)]
        img = np.stack(field, -1) + rng.normal(0, 12, (h, w, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Samples:
    def __init__(self, payloads):
        self.payloads, self.where = payloads, "synthetic"

    def __len__(self):
        return len(self.payloads)

    def __getitem__(self, i):
        return i % 1000, self.payloads[i]


def row(what, images_per_s, note=""):
    print(f"{what:<44}{images_per_s:7.0f} images/s" + (f" ({note})" if note else ""))


def rate(fn, n, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    repeats = 2 if args.quick else 3
    rng = np.random.default_rng(0)
    payloads = synthetic_jpegs(args.images, rng)
    print(f"{len(payloads)} synthetic JPEGs, short side 480, mean {np.mean([len(b) for b in payloads]) / 1e3:.0f} KB;"
          f" {len(os.sched_getaffinity(0))} cores; numbers are noisy on a shared machine")

    def pil_decode():
        for b in payloads:
            Image.open(io.BytesIO(b)).convert("RGB").load()
    row("decode, Pillow " + Image.__version__, rate(pil_decode, len(payloads), repeats), "1 core")
    try:
        import simplejpeg

        def sj_decode():
            for b in payloads:
                simplejpeg.decode_jpeg(b, colorspace="RGB")
        row("decode, simplejpeg " + simplejpeg.__version__, rate(sj_decode, len(payloads), repeats), "1 core")
    except ImportError:
        print("decode, simplejpeg: not installed")

    aug, val = inet.TrainAugment(), inet.ValTransform()
    u = aug.draw(rng, len(payloads))

    def train_one_core():
        x = np.stack([aug(b, u[i]) for i, b in enumerate(payloads)]).transpose(0, 3, 1, 2)
        inet.normalize(inet.hls_jitter(x, aug.offsets(u)))

    def val_one_core():
        inet.normalize(np.stack([val(b) for b in payloads]).transpose(0, 3, 1, 2))
    row("decode + train augmentation + normalise", rate(train_one_core, len(payloads), repeats), "1 core")
    row("decode + validation transform + normalise", rate(val_one_core, len(payloads), repeats), "1 core")

    for processes in (False, True):
        for workers in (1, 2):
            src = inet.ImageNetSource(Samples(payloads), aug, 1000, workers=workers, prefetch=2 * workers,
                                      processes=processes)

            def epoch():
                for _ in src.batches(32, rng=np.random.default_rng(1)):
                    pass
            kind = ("process" if processes else "thread") + (("es" if processes else "s") if workers > 1 else "")
            row(f"ImageNetSource.batches(32), {workers} {kind}", rate(epoch, len(payloads), repeats))

    model = ig.nets.imagenet_model("igc_l16m16", rng=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "igc_l16m16-0001.params")
        t_save = 1 / rate(lambda: mxnet_io.save_params(model, path), 1, repeats)
        size = os.path.getsize(path) / 1e6
        t_load = 1 / rate(lambda: mxnet_io.load_params(model, path), 1, repeats)
    print(f"IGC-L16M16 ({ig.nets.count_params(model) / 1e6:.1f} M parameters, {size:.1f} MB): "
          f"save_params {t_save:.3f} s, load_params {t_load:.3f} s")


if __name__ == "__main__":
    main()
