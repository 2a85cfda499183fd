"""ImageNet for igc_np: the seed's data (RecordIO or image folders), its augmentation, and batches.

    from igc_np.imagenet import load_imagenet
    data = load_imagenet("data/imagenet")            # imagenet_{train,val}.rec/.idx, or train/ val/ folders
    for x, y in data.train.batches(256, rng=np.random.default_rng(0)):
        ...                                          # x (256, 3, 224, 224) float32 normalised, y (256,) int64

Layouts (``load_imagenet`` takes the first it finds in ``data_dir``):

* RecordIO, as the seed trains: ``imagenet_train.rec`` + ``imagenet_train.idx`` and
  ``imagenet_val.rec`` + ``.idx`` (also ``train.rec`` / ``val.rec``); labels are the records' float
  labels (docs/reference_protocol.md, "ImageNet training": JPEGs stored with the short side at 480).
* Image folders: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``; class k is the k-th wnid of
  ``train/`` in sorted order (the usual torchvision ImageFolder convention).

The seed's protocol (docs/reference_protocol.md, "ImageNet training"), as we read MXNet's default image augmenter:

* training: short side scaled to a random size in [256, 480] (the seed's scale 0.533..1 of 480),
  aspect ratio jittered by a factor r in [0.75, 1.25] (x scaled by 2s/(1+r), y by r times that, the
  content centred on a canvas of the scaled size, the fill value (123, 113, 99) where it does not
  reach), a random 224x224 crop, a mirror with probability 1/2, a colour jitter in OpenCV's 8-bit
  HLS space (hue +-36 in half-degrees, lightness and saturation +-50 on 0..255, clamped as MXNet
  does), then ``(x - mean) / std`` with the ImageNet mean/std of section 4;
* validation: short side 256, the centre 224x224 crop, the same normalisation.

Checked against MXNet 1.9.1's ImageRecordIter (pip-installed in a separate venv, once): its
validation output (resize=256, centre crop) differs from ValTransform's by 0.64 grey levels on
average (p99: 3, the two JPEG decoders and resamplers), with no pixel shift; with scale fixed and
max_aspect_ratio 0.25 its x and y scales are 2/(1+r) and r times that (they sum to 2, ratio in
[0.75, 1.25]), as here; random_h 36 turns a red by at most ~72 degrees and never below 0 (the clamp).

Scale, crop and mirror are one affine resampling (bilinear, Pillow's C code) from the decoded image
straight to the 224x224 output, so the full-size canvas is never built; JPEGs are decoded with
Pillow, at a reduced DCT scale when the output needs fewer pixels (``Image.draft``). The colour
jitter and the normalisation run vectorised over the whole batch.

Reproducibility: ``batches(batch_size, rng, start_batch)`` draws, from ``rng`` and before any
image is read, the epoch's permutation and then every image's augmentation numbers (one block of
uniforms per image). Batch k is therefore a function of the rng state at the call, whatever the
number of workers; to resume mid-epoch, restore that state and pass ``start_batch=k``.

Workers: ``workers`` threads (or, with ``processes=True``, worker processes) each build whole
batches (decode, warp, jitter, normalise), at most ``prefetch`` batches ahead of the consumer (a
bounded queue: memory stays at a few batches). Pillow and NumPy release the GIL inside their loops,
so threads overlap without copying batches between processes; the Python between those loops still
takes the GIL, which processes avoid at the price of sending every finished batch back (a float32
batch of 256 is 154 MB).
"""
from __future__ import annotations

import io
import math
import os
import stat
import sys
from collections import deque
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import functional as F
from .. import nets
from ..autograd import Tensor, no_grad
from ..serialization import describe_os_error, read_regular
from .data import DEFAULT_DATA_DIR, DatasetError, DatasetNotFoundError, check_data_dir, slice_of
from .evaluation import Metrics
from .mxnet_io import MXNetFormatError, RecordIO, load_released

__all__ = ["load_imagenet", "ImageNetNotFoundError", "ImageError", "ImageNet", "ImageNetSource", "ImageNetTrainingData", "evaluate_imagenet", "RecordSamples",
           "FolderSamples", "TrainAugment", "ValTransform", "open_image", "decode", "warp", "hls_jitter", "normalize",
           "IMAGENET_MEAN", "IMAGENET_STD", "FILL_VALUE"]

IMAGENET_MEAN = (123.370, 112.757, 99.406)   # docs/reference_protocol.md, 0..255 scale, RGB
IMAGENET_STD = (68.998, 66.093, 68.292)
FILL_VALUE = (123, 113, 99)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")
MAX_IMAGE_BYTES = 256 << 20   # the largest ImageNet JPEG is ~15 MB; a bigger file is not an image
RECORD_NAMES = (("imagenet_train", "imagenet_val"), ("train", "val"))


class ImageNetNotFoundError(DatasetNotFoundError):
    """No ImageNet layout in the folder; the message lists what was looked for."""


class ImageError(DatasetError):
    """An image that cannot be decoded, or a label outside the classes; names the file or record."""


class LabelError(ImageError):
    """A sample's label is not one of the classes (never skipped: the data set is wrong)."""


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with the 'imagenet' extra
        raise ImportError("ImageNet needs Pillow to decode JPEGs: pip install 'igc_np[imagenet]'") from e
    return Image


# ---- samples: (label, encoded image bytes) by index ------------------------------------------
class RecordSamples:
    """The images of a RecordIO pair: ``len()``, ``[i] -> (label int, JPEG bytes)``."""

    def __init__(self, rec_path, idx_path=None):
        self.records = RecordIO(rec_path, idx_path)
        self.where = str(rec_path)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        label, payload = self.records[i]
        if isinstance(label, np.ndarray):  # a label vector: the class is its first entry
            label = label[0] if len(label) else np.nan
        if not float(label).is_integer():
            raise LabelError(f"{self.describe(i)}: label {label} is not a class number")
        return int(label), payload

    def describe(self, i):
        """Where sample i lives, for messages: the file, the record and its byte offset."""
        return f"{self.where} record {i} at byte {self.records.offsets[i]}"


class FolderSamples:
    """The images of ``root/<class>/*.<ext>``: ``len()``, ``[i] -> (label int, file bytes)``.

    classes: the class folder names, in the order that gives their labels (default: sorted
    folders of root). Files are sorted within a class, so the order is the same on every machine.
    Hidden names (a leading dot: macOS's ``._x.JPEG`` resource forks, ``.DS_Store``, editor and
    sync folders) are never classes or images. An entry that cannot be examined (a symbolic link
    loop, a broken link, no permission) is an error naming it, never skipped silently.
    """

    def __init__(self, root, classes=None, split=None):
        root = Path(root)
        self.where = str(root)
        self.split = split or root.name
        folders = [e for e in _entries(root, self.split) if stat.S_ISDIR(e[1])]
        self.classes = sorted(name for name, _ in folders) if classes is None else list(classes)
        index = {c: k for k, c in enumerate(self.classes)}
        self.files, self.labels = [], []
        for c in sorted(name for name, _ in folders):
            if c not in index:
                raise ImageError(f"{root / c}: class folder not among the {len(self.classes)} training classes")
            for name, mode in sorted(_entries(root / c, self.split)):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not stat.S_ISDIR(mode):
                    self.files.append(root / c / name)  # a FIFO or device is refused when read
                    self.labels.append(index[c])
        if not self.files:
            raise ImageNetNotFoundError(f"the {self.split} split {root}: no images "
                                        f"({', '.join(IMAGE_EXTENSIONS)}) in its class folders")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.labels[i], read_regular(self.files[i], "image", MAX_IMAGE_BYTES, ImageError)

    def describe(self, i):
        """Where sample i lives, for messages: its file and class."""
        return f"{self.files[i]} (class {self.classes[self.labels[i]]!r}, image {i})"


def _entries(folder, split):
    """(name, st_mode after following links) of the non-hidden entries of ``folder``; an entry
    that cannot be examined (a link loop, a broken link) is an ImageError naming it. scandir
    knows the kind of plain files and folders without a stat call each (1.28M files); only
    links are followed (os.stat)."""
    out = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_symlink():
                    mode = os.stat(entry.path).st_mode  # follows it: a loop or a dead end raises
                elif entry.is_dir(follow_symlinks=False):
                    mode = stat.S_IFDIR
                elif entry.is_file(follow_symlinks=False):
                    mode = stat.S_IFREG
                else:
                    mode = entry.stat(follow_symlinks=False).st_mode
                out.append((entry.name, mode))
    except OSError as e:
        where = e.filename if e.filename else folder
        raise ImageError(f"the {split} split: {where}: {describe_os_error(e)}") from None
    return out


# ---- the transforms ---------------------------------------------------------------------------
def open_image(payload, where="image"):
    """Encoded bytes -> a lazy Pillow image: its size is known, no pixel is decoded yet."""
    Image = _pil()
    try:
        return Image.open(io.BytesIO(payload))
    except Exception as e:  # Pillow raises several types for a broken file
        raise ImageError(f"{where}: not an image Pillow can read ({type(e).__name__}: {e})") from e


def decode(img, need=None, where="image"):
    """A lazy Pillow image (open_image) -> its RGB pixels. need: (w, h), the fewest pixels the
    caller needs; a JPEG is then decoded at 1/2, 1/4 or 1/8 scale if that keeps at least this many
    (Image.draft: the DCT skips the detail a downscale would discard anyway)."""
    try:
        if need is not None and img.format == "JPEG":
            img.draft("RGB", (max(1, math.ceil(need[0])), max(1, math.ceil(need[1]))))
        img.load()
        if img.mode in _WIDE_MODES:
            return _wide_to_rgb(img, where)
        return img if img.mode == "RGB" else img.convert("RGB")  # (convert would copy an RGB image)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"{where}: cannot decode the image ({type(e).__name__}: {e})") from e


# Pillow modes holding more than 8 bits per pixel (16-bit PNG greys): convert("RGB") would clip
# every value above 255 to white, so they are scaled to 0..255 first
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _wide_to_rgb(img, where):
    """A 16-bit grey image (Pillow mode I;16*, or I holding 0..65535) -> RGB, scaled x 255/65535."""
    Image = _pil()
    values = np.asarray(img)
    if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageError(f"{where}: a 32-bit integer image (values {values.min()}..{values.max()}): "
                         "only 8- and 16-bit images are read")
    grey = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def warp(img, full_size, sx, sy, corner, shift, crop, mirror, fill=FILL_VALUE):
    """Scale, crop and mirror in one bilinear resampling -> (crop, crop, 3) uint8.

    The content (the image of full_size = (W, H), img possibly decoded smaller) is scaled by
    (sx, sy) and shifted by shift = (tx, ty) onto a canvas; the crop's corner in the canvas is
    corner = (ox, oy); mirror flips the crop left-right; fill where no source pixel falls.
    """
    Image = _pil()
    W, H = full_size
    (ox, oy), (tx, ty) = corner, shift
    # output x (continuous) -> canvas ox + x (ox + crop - x when mirrored) -> source (canvas - tx) / sx
    if mirror:
        a, c = -1.0 / sx, (ox + crop - tx) / sx
    else:
        a, c = 1.0 / sx, (ox - tx) / sx
    e, f = 1.0 / sy, (oy - ty) / sy
    kx, ky = img.size[0] / W, img.size[1] / H  # the decoder may have reduced the image
    data = (a * kx, 0.0, c * kx, 0.0, e * ky, f * ky)
    out = img.transform((crop, crop), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR,
                        fillcolor=tuple(fill))
    return np.asarray(out)


@dataclass(frozen=True)
class TrainAugment:
    """The seed's training augmentation (aug_type 1). ``draw(rng, n)`` -> (n, 8) uniforms, one row
    per image; ``__call__(payload, u)`` -> (crop, crop, 3) uint8 before the colour jitter."""
    crop: int = 224
    short_side: tuple = (256, 480)
    max_aspect_ratio: float = 0.25
    hls: tuple = (36.0, 50.0, 50.0)        # hue (half-degrees), lightness, saturation amplitudes
    mirror: bool = True
    fill: tuple = FILL_VALUE
    NUMBERS = 8  # scale, aspect, crop x, crop y, mirror, hue, lightness, saturation

    def draw(self, rng, n):
        return rng.random((n, self.NUMBERS))

    def geometry(self, u, W, H):
        """(sx, sy, crop corner (ox, oy), content shift (tx, ty), mirror) for one image of W x H
        from its row of uniforms u: the canvas is (int(s W), int(s H)), the content scaled by
        (sx, sy) is centred on it (shift), the crop starts at the corner."""
        lo, hi = self.short_side
        s = (lo + u[0] * (hi - lo)) / min(W, H)
        r = 1 + self.max_aspect_ratio * (2 * u[1] - 1)
        sx = 2 * s / (1 + r)            # MXNet's hs, ws: x and y scales around s, their ratio r
        sy = r * sx
        cw, ch = int(s * W), int(s * H)
        tx, ty = (cw - sx * W) / 2, (ch - sy * H) / 2
        ox = _crop_start(u[2], cw, self.crop)
        oy = _crop_start(u[3], ch, self.crop)
        return sx, sy, (ox, oy), (tx, ty), bool(self.mirror and u[4] < 0.5)

    def offsets(self, u):
        """(n, 3) HLS offsets (hue, lightness, saturation) from the last three uniforms."""
        amp = np.asarray(self.hls, dtype=np.float32)
        return (2 * u[:, 5:8].astype(np.float32) - 1) * amp

    def __call__(self, payload, u, where="image"):
        img = open_image(payload, where)
        W, H = img.size
        sx, sy, corner, shift, mirror = self.geometry(u, W, H)
        # keep at least one decoded pixel per output pixel along each axis: no detail is lost
        img = decode(img, need=(W * min(sx, 1.0), H * min(sy, 1.0)), where=where)
        return warp(img, (W, H), sx, sy, corner, shift, self.crop, mirror, self.fill)


@dataclass(frozen=True)
class ValTransform:
    """The seed's validation preprocessing: short side 256, centre crop 224, nothing random."""
    crop: int = 224
    short_side: int = 256
    fill: tuple = FILL_VALUE
    NUMBERS = 0

    def draw(self, rng, n):
        return np.zeros((n, 0))

    def offsets(self, u):
        return None

    def __call__(self, payload, u=None, where="image"):
        img = open_image(payload, where)
        W, H = img.size
        s = self.short_side / min(W, H)
        cw, ch = int(s * W), int(s * H)
        shift = ((cw - s * W) / 2, (ch - s * H) / 2)
        corner = ((cw - self.crop) // 2, (ch - self.crop) // 2)
        img = decode(img, need=(W * min(s, 1.0), H * min(s, 1.0)), where=where)
        return warp(img, (W, H), s, s, corner, shift, self.crop, False, self.fill)


def _crop_start(u, size, crop):
    """A uniform u in [0, 1) -> the crop's first pixel, uniform over the size - crop + 1 positions;
    a canvas smaller than the crop is centred (the rest is fill)."""
    if size < crop:
        return (size - crop) // 2
    return min(int(u * (size - crop + 1)), size - crop)


def hls_jitter(x, offsets):
    """Shift each image's colours in OpenCV's 8-bit HLS space and clamp, as MXNet's augmenter.

    x: (B, 3, H, W) RGB planes on 0..255 (uint8 or float); offsets: (B, 3), the shifts of hue
    (half-degrees: OpenCV's byte holds degrees / 2, range 0..180), lightness and saturation (both
    on 0..255). -> (B, 3, H, W) float32. All three are clamped, hue too (MXNet does not wrap it).
    Offsets of 0 give back x (up to float rounding). One image at a time, on its contiguous
    planes, so the temporaries stay in cache.
    """
    x = np.asarray(x)
    offsets = np.asarray(offsets, np.float64).reshape(-1, 3)
    out = np.empty(x.shape, np.float32)
    for i in range(x.shape[0]):
        dh, dl, ds = offsets[i]
        r, g, b = (x[i, c].astype(np.float32) for c in range(3))
        mx = np.maximum(np.maximum(r, g), b)
        mn = np.minimum(np.minimum(r, g), b)
        chroma = mx - mn
        light = (mx + mn) * 0.5
        span = 255.0 - np.abs(2.0 * light - 255.0)       # 2 min(L, 255 - L): the chroma at S = 1
        sat = np.divide(chroma, span, out=np.zeros_like(chroma), where=span > 0)
        inv = np.divide(1.0, chroma, out=np.zeros_like(chroma), where=chroma > 0)
        # hue in sextants [0, 6), by which channel is the largest (a grey gets hue 0, as in OpenCV)
        hue = np.where(mx == r, (g - b) * inv, np.where(mx == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
        hue[hue < 0] += 6.0
        hue += dh / 30.0                                   # half-degrees -> sextants
        np.clip(hue, 0.0, 6.0, out=hue)
        light += dl
        np.clip(light, 0.0, 255.0, out=light)
        sat += ds / 255.0
        np.clip(sat, 0.0, 1.0, out=sat)
        amp = sat * (127.5 - np.abs(light - 127.5))        # S min(L, 255 - L): half the new chroma
        hue *= 2.0                                         # k below counts in 30-degree steps
        for c, n in enumerate((0.0, 8.0, 4.0)):            # HLS -> R, G, B
            k = np.mod(hue + n, 12.0)
            w = np.minimum(k - 3.0, 9.0 - k)
            np.clip(w, -1.0, 1.0, out=w)
            w *= amp
            np.subtract(light, w, out=out[i, c])
    return out


def normalize(x, mean=IMAGENET_MEAN, std=IMAGENET_STD, inplace=False):
    """(B, 3, H, W) on 0..255 -> (B, 3, H, W) float32 ``(x - mean) / std`` per channel. inplace:
    x is a float32 array that may be overwritten (saves a batch-sized copy)."""
    x = np.asarray(x, np.float32) if inplace else np.array(x, np.float32)
    x -= np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    x *= (1.0 / np.asarray(std, np.float64)).astype(np.float32).reshape(1, -1, 1, 1)
    return x


# ---- batches ------------------------------------------------------------------------------------
class ImageNetSource:
    """One split as the trainer reads it: ``batches(batch_size, rng, start_batch)`` yields
    ``(x (B, 3, crop, crop) float32 normalised, y (B,) int64)``; ``len()`` images.

    samples: RecordSamples or FolderSamples (anything with len() and [i] -> (label, bytes));
    transform: TrainAugment() (shuffled, random) or ValTransform() (in order, deterministic).

    The last batch of a training epoch (round_batch, the default for training, as MXNet's
    ImageRecordIter): filled up to B images with the epoch's first images again (each with
    numbers of its own), so every training batch has B images (BatchNorm on a batch of one 1x1
    map has nothing to normalise). drop_last drops it instead; validation batches are never
    filled (every image counts once), the last one is smaller.

    A corrupt training image (unreadable, not decodable, a FIFO...) is skipped: a warning names
    its file (path and class, or .rec file, record and byte offset), the next image in file
    order takes its place in the batch, and the files are counted (``corrupt``); past
    ``max_corrupt`` distinct files (default: 10, or 0.1% of the split if more) the epoch stops
    with an ImageError listing them. A bad label, and any error in a validation split (whose
    metrics must cover every image), stop at once.
    """

    def __init__(self, samples, transform, num_classes, workers=2, prefetch=4, drop_last=False,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, processes=False, round_batch=None,
                 max_corrupt=None, skip_corrupt=None):
        if not isinstance(workers, (int, np.integer)) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"ImageNetSource: workers must be an integer >= 1, got {workers!r}")
        self.processes = processes
        self.samples, self.transform = samples, transform
        self.num_classes, self.workers, self.prefetch = num_classes, workers, max(prefetch, workers)
        self.drop_last, self.mean, self.std = drop_last, mean, std
        self.train = isinstance(transform, TrainAugment)
        self.round_batch = (self.train and not drop_last) if round_batch is None else round_batch
        self.skip_corrupt = self.train if skip_corrupt is None else skip_corrupt
        self.max_corrupt = max(10, len(samples) // 1000) if max_corrupt is None else max_corrupt
        self.corrupt = {}  # sample index -> the reason it was skipped (training only)
        self.image_size = transform.crop

    def __len__(self):
        return len(self.samples)

    def num_batches(self, batch_size):
        n = len(self.samples)
        return n // batch_size if self.drop_last else -(-n // batch_size)

    def last_batch(self):
        """How the last batch of an epoch is handled, in words (printed by the trainer)."""
        if self.drop_last:
            return "dropped when smaller than the batch"
        if self.round_batch:
            return "filled with the epoch's first images (MXNet's round_batch)"
        return "smaller"

    def plan(self, batch_size, rng=None):
        """The epoch drawn from rng: (order (N',), uniforms (N', k)) - all the randomness of it.
        N' = N, or with round_batch N rounded up to whole batches (the epoch's first images again)."""
        n = len(self.samples)
        if not self.train:
            return np.arange(n), self.transform.draw(None, n)
        if not isinstance(rng, np.random.Generator):
            raise ValueError("ImageNetSource.batches: a training split needs rng, a numpy.random.Generator")
        order = rng.permutation(n)
        fill = -n % batch_size if self.round_batch and not self.drop_last else 0
        if fill:
            order = np.concatenate([order, order[np.arange(fill) % n]])
        return order, self.transform.draw(rng, len(order))

    def describe(self, i):
        """Sample i's file for messages (path and class, or .rec file, record and offset)."""
        describe = getattr(self.samples, "describe", None)
        return describe(i) if describe is not None else f"{self.samples.where} image {i}"

    def make_batch(self, idx, u):
        """The batch of samples idx with their uniforms u -> (x, y); corrupt training images
        skipped and counted as described in the class docstring."""
        x, y, skipped = self._build(idx, u)
        self._note_corrupt(skipped)
        return x, y

    def _image(self, i, row):
        """(label, (crop, crop, 3) uint8) of sample i."""
        label, payload = self.samples[i]
        if not 0 <= label < self.num_classes:
            raise LabelError(f"{self.describe(i)}: label {label}, outside 0..{self.num_classes - 1}")
        return label, self.transform(payload, row, where=self.describe(i))

    def _build(self, idx, u):
        """make_batch without the bookkeeping (runs in the workers) -> (x, y, [(index, reason)])."""
        labels = np.empty(len(idx), np.int64)
        images = np.empty((len(idx), self.transform.crop, self.transform.crop, 3), np.uint8)
        skipped, n = [], len(self.samples)
        for j, (i, row) in enumerate(zip(idx, u)):
            i = int(i)
            for k in range(self.max_corrupt + 1):  # i, then the next images in file order
                try:
                    labels[j], images[j] = self._image((i + k) % n, row)
                    break
                except LabelError:
                    raise
                except ImageError as e:
                    if not self.skip_corrupt:
                        raise
                    skipped.append(((i + k) % n, str(e)))
            else:
                raise ImageError(f"{self.max_corrupt + 1} corrupt images in a row from "
                                 f"{self.describe(i)} on: {skipped[-1][1]}")
        planes = images.transpose(0, 3, 1, 2)  # NHWC (what Pillow gives) -> NCHW, a view
        offsets = self.transform.offsets(u)
        if offsets is None or not offsets.any():
            x = planes.astype(np.float32)
        else:
            x = hls_jitter(planes, offsets)
        return normalize(x, self.mean, self.std, inplace=True), labels, skipped

    def _note_corrupt(self, skipped):
        """Count the skipped images; warn once per file; stop past max_corrupt files."""
        for i, reason in skipped:
            if i in self.corrupt:
                continue
            self.corrupt[i] = reason
            print(f"warning: skipped a corrupt training image ({len(self.corrupt)} so far, the "
                  f"run stops past {self.max_corrupt}): {reason}", file=sys.stderr, flush=True)
        if len(self.corrupt) > self.max_corrupt:
            first = "; ".join(list(self.corrupt.values())[:3])
            raise ImageError(f"{len(self.corrupt)} corrupt training images, more than the limit "
                             f"of {self.max_corrupt} (ImageNetSource.max_corrupt); the first: {first}")

    def batches(self, batch_size, rng=None, start_batch=0, part=None):
        """The epoch's batches from start_batch on (see the module docstring on resuming).

        part=(rank, size): data-parallel rank `rank` of `size` reads, decodes and augments only
        rows ``distributed.slice_of(B, rank, size)`` of each batch of B; the epoch's numbers are
        drawn whole (``plan``), so those rows equal the same rows of the whole batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if part is not None:
            slice_of(0, *part)  # a rank outside 0..size-1 fails here, before any batch
        order, u = self.plan(batch_size, rng)
        n_b = self.num_batches(batch_size)

        def rows(b):  # positions in the epoch of batch b (of this rank's part of it)
            lo, hi = b * batch_size, min((b + 1) * batch_size, len(order))
            if part is None:
                return slice(lo, hi)
            mine = slice_of(hi - lo, *part)
            return slice(lo + mine.start, lo + mine.stop)
        # row k of u belongs to the k-th image of the epoch (position, not image index)
        jobs = ((order[r], u[r]) for r in map(rows, range(start_batch, n_b)))
        if self.workers == 1 and self.prefetch <= 1:
            for idx, uu in jobs:
                yield self.make_batch(idx, uu)
            return
        if self.processes:
            # the source is sent to each worker once (initializer), then only indices travel there
            # and finished batches back; forkserver: no fork of this (threaded) process
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            pool = ProcessPoolExecutor(self.workers, mp.get_context(method), _worker_init, (self,))
            work = _worker_batch
        else:
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="imagenet")
            work = self._build

        def done(future):  # the corrupt images are counted here, in the consumer's thread
            x, y, skipped = future.result()
            self._note_corrupt(skipped)
            return x, y
        with pool:
            pending = deque()
            try:
                for idx, uu in jobs:
                    pending.append(pool.submit(work, idx, uu))
                    if len(pending) >= self.prefetch:  # the bounded queue: wait for the oldest
                        yield done(pending.popleft())
                while pending:
                    yield done(pending.popleft())
            finally:
                for fut in pending:  # an abandoned epoch: drop the batches not started
                    fut.cancel()

    def __repr__(self):
        return (f"ImageNetSource({self.samples.where!r}, {len(self)} images, "
                f"{'train' if self.train else 'val'}, workers={self.workers}"
                f"{' processes' if self.processes else ''})")


_WORKER_SOURCE = None  # the ImageNetSource of this worker process


def _worker_init(source):
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _worker_batch(idx, u):
    return _WORKER_SOURCE._build(idx, u)


@dataclass
class ImageNet:
    """The two splits of an ImageNet layout; ``classes`` the wnids (folders) or None (RecordIO);
    ``train`` is None when loaded with val_only."""
    train: ImageNetSource
    val: ImageNetSource
    num_classes: int
    layout: str
    classes: list = field(default=None)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    image_size: int = 224
    name: str = "imagenet"

    def __repr__(self):
        train = f"train={len(self.train)}" if self.train is not None else "no train split"
        last = f", last batch {self.train.last_batch()}" if self.train is not None else ""
        return (f"ImageNet({self.layout}: {train}, val={len(self.val)}, classes={self.num_classes}, "
                f"{self.image_size}x{self.image_size}, workers={self.val.workers}"
                f"{' processes' if self.val.processes else ''}{last})")


class ImageNetTrainingData:
    """An ImageNet as the trainer's data source: ``batches(rng, start_batch)`` (x, y) Tensors on
    ``device``, ``len()`` batches per epoch, ``test_batches()`` / ``test_len()`` (the validation
    split), ``plain_train_batches(count)`` (training images in file order through the validation
    transform, e.g. to re-estimate BN statistics), and ``name``, ``num_classes``, ``train_size``."""

    def __init__(self, data, batch_size, dtype=np.float32, device="cpu", test_batch_size=256):
        self.data, self.batch_size, self.dtype, self.device = data, batch_size, np.dtype(dtype), device
        self.test_batch_size = test_batch_size
        self.name, self.num_classes = "imagenet", data.num_classes
        # the rows of an epoch as the trainer counts them (batch b has min(B, train_size - b B)
        # rows): every batch whole when the last one is filled (round_batch) or dropped
        t = data.train
        self.train_size = t.num_batches(batch_size) * batch_size if (t.round_batch or t.drop_last) \
            else len(t)

    def __len__(self):
        return self.data.train.num_batches(self.batch_size)

    def _tensors(self, batches):
        for xb, yb in batches:
            yield Tensor(xb.astype(self.dtype, copy=False), device=self.device), Tensor(yb, device=self.device)

    def batches(self, rng, start_batch=0, part=None):
        """part=(rank, size): this rank's rows of each batch only (``ImageNetSource.batches``)."""
        return self._tensors(self.data.train.batches(self.batch_size, rng=rng, start_batch=start_batch,
                                                     part=part))

    def plain_train_batches(self, count):
        t = self.data.train
        plain = ImageNetSource(t.samples, ValTransform(t.transform.crop), t.num_classes, t.workers, t.prefetch,
                               mean=t.mean, std=t.std, processes=t.processes,
                               max_corrupt=t.max_corrupt, skip_corrupt=t.skip_corrupt)
        plain.corrupt = t.corrupt  # one count of corrupt training files
        return self._tensors(b for _, b in zip(range(count), plain.batches(self.batch_size)))

    def test_batches(self):
        return self._tensors(self.data.val.batches(self.test_batch_size))

    def test_len(self):
        return self.data.val.num_batches(self.test_batch_size)


def load_imagenet(data_dir, num_classes=None, workers=2, prefetch=4, augment=None, val_transform=None,
                  processes=False, val_only=False, image_size=224, subset=None):
    """Find the ImageNet files in data_dir (RecordIO pairs, else train/ and val/ folders) -> ImageNet.

    num_classes: default 1000 for RecordIO (the labels are checked per batch), the number of class
    folders otherwise. augment / val_transform replace TrainAugment() / ValTransform(); workers,
    prefetch, processes: see ImageNetSource. val_only: the validation split alone is enough (to
    evaluate a released model); ``train`` is then None, and folder classes are val/'s sorted wnids.
    image_size: the crop (224 in the seed); another size scales the short sides with it (256..480
    and 256 at 224), for quick experiments. subset: train on the first N training images only.
    """
    root = check_data_dir(Path(data_dir).expanduser())
    looked = []
    splits = ("val",) if val_only else ("train", "val")
    if augment is None or val_transform is None:
        k = image_size / 224
        augment = augment or TrainAugment(image_size, (round(256 * k), round(480 * k)))
        val_transform = val_transform or ValTransform(image_size, round(256 * k))
    make = dict(workers=workers, prefetch=prefetch, processes=processes, augment=augment,
                val_transform=val_transform, subset=subset)
    for names in RECORD_NAMES:
        rec = {s: root / f"{name}.rec" for s, name in zip(("train", "val"), names) if s in splits}
        looked.append(" + ".join(p.name for p in rec.values()) + " (.idx beside them, optional)")
        # exists(), not is_file(): a FIFO or device under the name is refused naming it
        if all(p.exists() for p in rec.values()):
            samples = {}
            for s, path in rec.items():
                idx = path.with_suffix(".idx")
                samples[s] = RecordSamples(path, idx if os.path.lexists(idx) else None)
            return _assemble(samples, num_classes or 1000, "recordio", None, **make)
    looked.append(" + ".join(f"{s}/<wnid>/*.JPEG" for s in splits))
    if all(os.path.lexists(root / s) for s in splits):  # a link loop is named by FolderSamples
        samples = {}
        if not val_only:
            samples["train"] = FolderSamples(root / "train", split="training")
        samples["val"] = FolderSamples(root / "val", classes=samples["train"].classes if not val_only else None,
                                       split="validation")
        classes = samples["val"].classes
        return _assemble(samples, num_classes or len(classes), "folders", classes, **make)
    raise ImageNetNotFoundError(f"no ImageNet in {root}: looked for {'; '.join(looked)}"
                                + ("" if root.exists() else f" ({root} does not exist)"))


class _First:
    """The first n samples of another sample list (load_imagenet's subset)."""

    def __init__(self, samples, n):
        self.samples, self.n, self.where = samples, min(n, len(samples)), samples.where

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(f"{self.where}: image {i} out of the subset of {self.n}")
        return self.samples[i]

    def describe(self, i):
        describe = getattr(self.samples, "describe", None)
        return describe(i) if describe is not None else f"{self.where} image {i}"


def _assemble(samples, num_classes, layout, classes, workers, prefetch, processes, augment, val_transform,
              subset):
    for split, name in (("train", "training"), ("val", "validation")):
        if split in samples and len(samples[split]) == 0:  # a run would "train" or report 0.0000
            raise DatasetError(f"the {name} split {samples[split].where} has no images")
    train = None
    if "train" in samples:
        if subset is not None:
            if int(subset) != subset or subset < 1:
                raise ValueError(f"subset must be a positive integer, got {subset!r}")
            samples["train"] = _First(samples["train"], int(subset))
        train = ImageNetSource(samples["train"], augment, num_classes, workers, prefetch, processes=processes)
    val = ImageNetSource(samples["val"], val_transform, num_classes, workers, prefetch, processes=processes)
    return ImageNet(train, val, num_classes, layout, classes, image_size=val_transform.crop)


def imagenet_dir(data_dir=None):
    """Where load_dataset("imagenet") looks: data_dir (default $IGC_NP_DATA or ./data), or its
    imagenet/ subfolder when there is one."""
    root = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
    return root / "imagenet" if (root / "imagenet").is_dir() else root


def positive_int(text):
    """argparse type of --workers and the like: an integer >= 1 (else a usage error, exit 2)."""
    import argparse
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def default_workers():
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ---- evaluation ---------------------------------------------------------------------------------
def evaluate_imagenet(model, source, batch_size=256, device="cpu", dtype=np.float32, limit=None, log=None):
    """Metrics (loss, top-1, top-5; igc_np.training.Metrics) of model on an ImageNetSource (its
    validation transform), in inference mode. limit: stop after that many images; log: a function
    called with a line every 10 batches."""
    model.eval()
    metrics = Metrics()
    with no_grad():
        for b, (xb, yb) in enumerate(source.batches(batch_size)):
            if limit is not None and metrics.count >= limit:
                break
            logits = model(Tensor(xb.astype(dtype, copy=False), device=device))
            loss = F.cross_entropy(logits, Tensor(yb, device=device))
            metrics.update(loss.item(), logits.numpy(), yb)
            if log is not None and (b + 1) % 10 == 0:
                log(f"Batch [{b + 1}] {metrics.count} images  top1 {metrics.top1:.4f}  top5 {metrics.top5:.4f}")
    return metrics


def main(argv=None):
    """python -m igc_np.imagenet --model igc_l4m32 --weights seed-0001.params --data-dir DIR:
    top-1 / top-5 of a released (or any .params) model on the validation split."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description="Top-1 / top-5 of an ImageNet model on the validation split "
                                            "(short side 256, centre crop 224).")
    p.add_argument("--model", required=True, choices=list(nets.IMAGENET_CONFIGS))
    p.add_argument("--weights", required=True, metavar="PARAMS", help="an MXNet .params file")
    p.add_argument("--data-dir", required=True, help="holds imagenet_val.rec (+ .idx) or val/<wnid>/*.JPEG")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=positive_int, default=default_workers(), metavar="W",
                   help="threads decoding JPEGs [one per core]")
    p.add_argument("--limit", type=int, help="only the first N validation images")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "emu"))
    args = p.parse_args(argv)
    try:
        data = load_imagenet(args.data_dir, workers=args.workers, val_only=True)
        model = load_released(args.model, args.weights, num_classes=data.num_classes)
    except (OSError, ValueError, MXNetFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model.to(args.device)
    print(f"{args.model} from {args.weights}; {data.val}")
    m = evaluate_imagenet(model, data.val, args.batch_size, device=args.device, limit=args.limit, log=print)
    print(f"Validation: {m.count} images  loss {m.loss:.4f}  top1 {m.top1:.4f}  top5 {m.top5:.4f}  "
          f"(error {1 - m.top1:.4f} / {1 - m.top5:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
