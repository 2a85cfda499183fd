"""The ImageNet data path: layouts (RecordIO pair, image folders), the seed's augmentation and
validation transform, and reproducible, resumable batches. Every image is made by the test."""
import colorsys
import io
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st

from igc_np import imagenet as inet
from igc_np.data import DatasetError
from igc_np.imagenet import (FILL_VALUE, IMAGENET_MEAN, IMAGENET_STD, ImageNetNotFoundError, TrainAugment,
                             ValTransform, hls_jitter, load_imagenet, normalize)

Image = pytest.importorskip("PIL.Image")


def encode(pixels, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buf, fmt, quality=95)
    return buf.getvalue()


def solid(w, h, colour, fmt="PNG"):
    return encode(np.broadcast_to(np.asarray(colour, np.uint8), (h, w, 3)), fmt)


def numbered(w, h):
    """Pixel (y, x) holds (x, y, 0) mod 256: where a pixel came from can be read off its value."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, np.zeros_like(x)], axis=-1).astype(np.uint8)


# ---- the transforms ---------------------------------------------------------------------------
@given(w=st.integers(230, 400), h=st.integers(230, 400), seed=st.integers(0, 2 ** 16))
def test_a_pure_colour_keeps_its_colour_under_scale_crop_mirror(w, h, seed):
    colour = (200, 31, 90)
    u = np.random.default_rng(seed).random(8)
    aug = TrainAugment(max_aspect_ratio=0.0)  # no aspect change: the content covers the canvas
    out = aug(solid(w, h, colour), u)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert (out == colour).all()


def test_aspect_jitter_fills_with_the_seed_value():
    """Squeezing x by 2s/(1+r) with r = 1.25 leaves the canvas's left and right edges empty."""
    aug = TrainAugment()
    u = np.array([0.0, 1.0, 0.0, 0.5, 0.9, 0.5, 0.5, 0.5])  # short 256, r = 1.25, left crop, no mirror
    out = aug(solid(256, 256, (10, 240, 10)), u)
    assert (out[:, 0] == FILL_VALUE).all()       # content starts at tx = (256 - 227.6) / 2 > 14
    assert (out[:, 20:] == (10, 240, 10)).all()
    sx, sy, corner, shift, mirror = aug.geometry(u, 256, 256)
    assert sy / sx == pytest.approx(1.25) and (sx + sy) / 2 == pytest.approx(1.0) and not mirror


def test_mirror_flips_and_crop_is_a_window_of_the_scaled_image():
    img = numbered(300, 240)
    aug = TrainAugment(short_side=(240, 240), max_aspect_ratio=0.0)   # scale 1: a pure crop
    u = np.array([0.0, 0.5, 0.3, 0.7, 0.9, 0.5, 0.5, 0.5])
    plain = aug(encode(img), u)
    _, _, (ox, oy), _, _ = aug.geometry(u, 300, 240)
    assert (ox, oy) == (int(0.3 * 77), int(0.7 * 17))
    np.testing.assert_array_equal(plain, img[oy:oy + 224, ox:ox + 224])
    u[4] = 0.1  # mirror
    np.testing.assert_array_equal(aug(encode(img), u), plain[:, ::-1])


def test_train_scale_stays_in_256_480_of_the_short_side():
    aug = TrainAugment()
    for u0, short in ((0.0, 256), (0.5, 368), (0.999999, 480)):
        sx, sy, *_ = aug.geometry(np.array([u0, 0.5, 0, 0, 0, 0, 0, 0]), 640, 480)
        assert sx == sy == pytest.approx(short / 480, rel=1e-5)


def test_validation_is_short_side_256_centre_crop():
    img = numbered(512, 256)                    # short side already 256: a pure centre crop
    out = ValTransform()(encode(img))
    np.testing.assert_array_equal(out, img[16:240, 144:368])
    big = ValTransform()(solid(960, 512, (5, 6, 7), "JPEG"))  # decoded at 1/2 scale by the draft
    assert big.shape == (224, 224, 3) and np.abs(big.astype(int) - (5, 6, 7)).max() <= 2


def test_hls_jitter_zero_is_the_identity_and_matches_colorsys():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 3, 4, 5)).astype(np.uint8)
    x[0, :, 0, 0] = (7, 7, 7)  # grey: hue undefined
    np.testing.assert_allclose(hls_jitter(x, np.zeros((3, 3))), x, atol=1e-3)
    offsets = np.array([[10.0, 20.0, -30.0], [-36.0, -50.0, 50.0], [36.0, 50.0, 50.0]])
    got = hls_jitter(x, offsets).transpose(0, 2, 3, 1)
    x = x.transpose(0, 2, 3, 1).astype(np.float64)
    for b in range(3):
        for px, want in zip(x[b].reshape(-1, 3), got[b].reshape(-1, 3)):
            h, l, s = colorsys.rgb_to_hls(*(px / 255))
            dh, dl, ds = offsets[b]
            # hue in half-degrees, clamped at 0 and 360 degrees (not wrapped), as MXNet does
            ref = colorsys.hls_to_rgb(np.clip(h + 2 * dh / 360, 0, 1), np.clip(l + dl / 255, 0, 1),
                                      np.clip(s + ds / 255, 0, 1))
            np.testing.assert_allclose(want, np.array(ref) * 255, atol=0.05)


@given(st.floats(-50, 50), st.integers(0, 255))
def test_hls_jitter_lightness_moves_a_grey_and_clamps(dl, grey):
    x = np.full((1, 3, 2, 2), grey, np.float32)
    out = hls_jitter(x, [[0.0, dl, 0.0]])
    np.testing.assert_allclose(out, np.clip(grey + dl, 0, 255), atol=1e-3)


def test_normalize_is_nchw_per_channel():
    x = np.asarray(IMAGENET_MEAN, np.float32) + np.asarray(IMAGENET_STD, np.float32)
    out = normalize(np.broadcast_to(x.reshape(1, 3, 1, 1), (2, 3, 4, 5)))
    assert out.shape == (2, 3, 4, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


# ---- layouts -----------------------------------------------------------------------------------
COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]


def make_folders(root, per_class=3, classes=("n02", "n01", "n03")):
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; class k (sorted wnid) is coloured COLOURS[k]."""
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            k = sorted(classes).index(c)
            for i in range(per_class):
                (root / split / c / f"{c}_{i}.JPEG").write_bytes(solid(260 + 10 * i, 250, COLOURS[k], "JPEG"))
    (root / "train" / "n01" / "README.txt").write_text("not an image")
    return root


def record(label, body):
    return struct.pack("<IfQQ", 0, label, 0, 0) + body


def make_recordio(root, n=5, with_idx=True):
    for split in ("imagenet_train", "imagenet_val"):
        data, idx = b"", ""
        for i in range(n):
            payload = record(float(i % 3), solid(250, 250, COLOURS[i % 3], "JPEG"))
            idx += f"{i}\t{len(data)}\n"
            data += struct.pack("<II", 0xCED7230A, len(payload)) + payload + b"\0" * (-len(payload) % 4)
        (root / f"{split}.rec").write_bytes(data)
        if with_idx:
            (root / f"{split}.idx").write_text(idx)
    return root


def _colour_class(x):
    """The class whose colour a normalised (3, H, W) image's centre pixel is closest to."""
    rgb = x[:, 112, 112] * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return int(np.argmin([np.abs(rgb - c).sum() for c in COLOURS]))


def test_folder_layout_labels_by_sorted_wnid(tmp_path):
    data = load_imagenet(make_folders(tmp_path), workers=1)
    assert data.layout == "folders" and data.classes == ["n01", "n02", "n03"] and data.num_classes == 3
    assert repr(data) == ("ImageNet(folders: train=9, val=9, classes=3, 224x224, workers=1, last batch "
                          "filled with the epoch's first images (MXNet's round_batch))")
    assert len(data.train) == len(data.val) == 9
    x, y = next(data.val.batches(9))
    assert x.shape == (9, 3, 224, 224) and x.dtype == np.float32 and y.dtype == np.int64
    assert list(y) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [_colour_class(xi) for xi in x] == list(y)


@pytest.mark.parametrize("with_idx", [True, False])
def test_recordio_layout(tmp_path, with_idx):
    # hue kept (a 72-degree turn makes green cyan): lightness and saturation jitter keep the class colour
    data = load_imagenet(make_recordio(tmp_path, with_idx=with_idx), num_classes=3, workers=2,
                         augment=TrainAugment(hls=(0.0, 50.0, 50.0)))
    assert data.layout == "recordio" and len(data.train) == 5
    xs, ys = zip(*data.train.batches(2, rng=np.random.default_rng(1)))
    assert [len(y) for y in ys] == [2, 2, 2]  # the last batch filled (round_batch)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert sorted(y[:5]) == [0, 0, 1, 1, 2] and y[5] == y[0]
    assert [_colour_class(xi) for xi in x] == list(y)


def test_a_smaller_image_size_and_a_subset(tmp_path):
    data = load_imagenet(make_folders(tmp_path, per_class=2), workers=1, image_size=32, subset=4)
    assert len(data.train) == 4 and len(data.val) == 6 and data.image_size == 32
    assert data.train.transform.short_side == (37, 69) and data.val.transform.short_side == 37
    x, y = next(data.train.batches(4, rng=np.random.default_rng(0)))
    assert x.shape == (4, 3, 32, 32) and sorted(y) == [0, 0, 1, 1]  # the first 4 files, shuffled
    assert next(data.val.batches(6))[0].shape == (6, 3, 32, 32)


def test_missing_layout_says_what_it_looked_for(tmp_path):
    with pytest.raises(ImageNetNotFoundError, match=r"imagenet_train.rec \+ imagenet_val.rec.*train/<wnid>"):
        load_imagenet(tmp_path)
    make_recordio(tmp_path)
    (tmp_path / "imagenet_train.rec").unlink()
    with pytest.raises(ImageNetNotFoundError, match=r"imagenet_train.rec \+ imagenet_val.rec"):
        load_imagenet(tmp_path)  # the validation file alone is not a training set
    assert load_imagenet(tmp_path, val_only=True).train is None
    (tmp_path / "imagenet_val.idx").unlink()
    (tmp_path / "imagenet_val.rec").unlink()
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ImageNetNotFoundError, match="no images"):
        load_imagenet(tmp_path)


def test_a_broken_image_and_a_bad_label_name_the_image(tmp_path):
    root = make_folders(tmp_path, per_class=1)
    (root / "val" / "n03" / "n03_0.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    data = load_imagenet(root, workers=1)
    with pytest.raises(ValueError, match=r"val/n03/n03_0.JPEG \(class 'n03', image 2\): not an image"):
        list(data.val.batches(4))
    (tmp_path / "r").mkdir()
    data = load_imagenet(make_recordio(tmp_path / "r"), num_classes=2, workers=1)
    with pytest.raises(ValueError, match="label 2, outside 0..1"):
        list(data.val.batches(8))


# ---- reproducible, resumable epochs -------------------------------------------------------------
def test_batches_are_a_function_of_the_rng_state_and_resume_mid_epoch(tmp_path):
    root = make_folders(tmp_path, per_class=4)
    one = load_imagenet(root, workers=1, prefetch=1).train
    two = load_imagenet(root, workers=2, prefetch=3).train
    state = np.random.default_rng(5).bit_generator.state
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    full = list(one.batches(5, rng=rng))
    after = rng.random()
    assert len(full) == one.num_batches(5) == 3
    rng.bit_generator.state = state
    resumed = list(two.batches(5, rng=rng, start_batch=1))
    assert rng.random() == after  # the epoch drew the same numbers whatever the start batch
    assert len(resumed) == 2
    for (xa, ya), (xb, yb) in zip(full[1:], resumed):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    procs = load_imagenet(root, workers=2, processes=True).train
    rng.bit_generator.state = state
    for (xa, ya), (xb, yb) in zip(full, procs.batches(5, rng=rng)):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    other = list(one.batches(5, rng=np.random.default_rng(6)))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(full, other))


class _CountsReads:
    """Samples that record which images were read (and so decoded and augmented)."""

    def __init__(self, samples):
        self.samples, self.where, self.read = samples, samples.where, []

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        self.read.append(i)
        return self.samples[i]


@pytest.mark.parametrize("size", [2, 3, 5])
def test_a_rank_reads_only_its_rows_of_the_whole_batch(tmp_path, size):
    """part=(rank, size): rows slice_of(B, rank, size) of every whole batch (9 images in batches
    of 4, the last filled with the epoch's first images: with 5 ranks a rank gets no row of a
    batch), the same bits, the same numbers drawn; a rank reads no other rank's image."""
    from igc_np.distributed import slice_of
    data = load_imagenet(make_folders(tmp_path, per_class=3), workers=1, prefetch=1, image_size=32)
    train = data.train
    rng = np.random.default_rng(2)
    order, _ = train.plan(4, rng)
    rng = np.random.default_rng(2)
    whole = list(train.batches(4, rng=rng))
    after = rng.random()
    train.samples = _CountsReads(train.samples)
    for rank in range(size):
        train.samples.read.clear()
        rng = np.random.default_rng(2)
        mine = list(train.batches(4, rng=rng, part=(rank, size)))
        assert rng.random() == after
        want_read = []
        for b, ((xw, yw), (xp, yp)) in enumerate(zip(whole, mine)):
            r = slice_of(len(yw), rank, size)
            np.testing.assert_array_equal(xp, xw[r])
            np.testing.assert_array_equal(yp, yw[r])
            want_read += list(order[4 * b:4 * b + 4][r])
        assert train.samples.read == want_read, (rank, size)
    td = inet.ImageNetTrainingData(data, batch_size=4)  # the trainer's source passes part on
    got = [y.numpy() for _, y in td.batches(np.random.default_rng(2), start_batch=1, part=(1, 2))]
    # the last batch is filled to 4 rows (round_batch): rank 1 of 2 has its 2 rows of it too
    assert [list(y) for y in got] == [list(whole[1][1][2:]), list(whole[2][1][2:])]


def test_training_needs_an_rng_and_validation_is_deterministic(tmp_path):
    data = load_imagenet(make_folders(tmp_path, per_class=1), workers=2)
    with pytest.raises(ValueError, match="needs rng"):
        next(data.train.batches(2))
    a = [x for x, _ in data.val.batches(2)]
    b = [x for x, _ in data.val.batches(2)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_an_abandoned_epoch_stops_its_workers(tmp_path):
    data = load_imagenet(make_folders(tmp_path, per_class=3), workers=2, prefetch=2)
    it = data.train.batches(1, rng=np.random.default_rng(0))
    next(it)
    it.close()  # runs the generator's finally: pending batches cancelled, the pool shut down
    assert not any(t.name.startswith("imagenet") for t in __import__("threading").enumerate())


# ---- evaluation ---------------------------------------------------------------------------------
def test_evaluate_counts_top1_top5_on_the_validation_transform(tmp_path):
    import igc_np as ig
    data = load_imagenet(make_folders(tmp_path, per_class=2), workers=1)
    net = ig.nets.get_network("resnet_igc", depth=8, num_classes=3, primary_partition=2,
                              secondary_partition=2, rng=0)
    m = inet.evaluate_imagenet(net, data.val, batch_size=4)
    assert m.count == 6 and m.top5 == 1.0  # 3 classes: the top 5 always holds the label
    with ig.no_grad():
        hits = sum(int((net(ig.Tensor(x)).numpy().argmax(1) == y).sum()) for x, y in data.val.batches(6))
    assert m.top1 == pytest.approx(hits / 6)
    assert inet.evaluate_imagenet(net, data.val, batch_size=2, limit=3).count == 4  # whole batches up to the limit


def test_the_command_line_reports_a_bad_weights_file(tmp_path, capsys):
    root = make_folders(tmp_path / "d", per_class=1)
    bad = tmp_path / "x-0001.params"
    bad.write_bytes(b"\x12\x01" + b"\0" * 18)  # magic, reserved, and half the array count
    assert inet.main(["--model", "igc_l100m2", "--weights", str(bad), "--data-dir", str(root)]) == 1
    err = capsys.readouterr().err
    assert "x-0001.params" in err and "truncated" in err


def test_grey_and_cmyk_jpegs_decode_to_rgb():
    """ImageNet holds a few greyscale and CMYK JPEGs: both come out as 3 RGB channels."""
    buf = io.BytesIO()
    Image.new("L", (300, 256), 77).save(buf, "JPEG", quality=95)
    grey = ValTransform()(buf.getvalue())
    assert grey.shape == (224, 224, 3) and np.abs(grey.astype(int) - 77).max() <= 1
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 40, 40)).convert("CMYK").save(buf, "JPEG", quality=95)
    cmyk = ValTransform()(buf.getvalue())
    assert cmyk.shape == (224, 224, 3) and np.abs(cmyk.astype(int) - (200, 40, 40)).max() <= 4


def test_the_trainer_data_source(tmp_path):
    import igc_np as ig
    data = load_imagenet(make_folders(tmp_path, per_class=3), workers=2)
    td = inet.ImageNetTrainingData(data, batch_size=4, test_batch_size=5)
    # 9 images, the last batch filled: 12 rows an epoch, as the trainer counts them
    assert (len(td), td.test_len(), td.train_size, td.num_classes, td.name) == (3, 2, 12, 3, "imagenet")
    state = np.random.default_rng(3).bit_generator.state
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    first = [(x.numpy(), y.numpy()) for x, y in td.batches(rng)]
    assert isinstance(next(td.test_batches())[0], ig.Tensor)
    assert [len(y) for _, y in first] == [4, 4, 4]  # the last batch filled (round_batch)
    # the rows Run.batches expects of batch b (dp_step's global_batch): what the source gives
    assert [len(y) for _, y in first] == [min(4, td.train_size - b * 4) for b in range(len(td))]
    rng.bit_generator.state = state
    again = [(x.numpy(), y.numpy()) for x, y in td.batches(rng, start_batch=2)]
    np.testing.assert_array_equal(again[0][0], first[2][0])
    plain = [y.numpy() for _, y in td.plain_train_batches(2)]
    assert [list(y) for y in plain] == [[0, 0, 0, 1], [1, 1, 2, 2]]  # file order, not shuffled


def test_the_command_line_evaluates_a_params_file(tmp_path, capsys):
    """python -m igc_np.imagenet on a validation folder alone, with a .params of IGC-L100M2."""
    import igc_np as ig
    from igc_np import mxnet_io
    root = make_folders(tmp_path / "d", per_class=1)
    (root / "train").rename(tmp_path / "elsewhere")  # evaluating needs the validation split only
    weights = tmp_path / "igc_l100m2-0001.params"
    mxnet_io.save_params(ig.nets.imagenet_model("igc_l100m2", num_classes=3, rng=0), weights)
    argv = ["--model", "igc_l100m2", "--weights", str(weights), "--data-dir", str(root), "--limit", "1",
            "--batch-size", "1", "--workers", "1"]
    assert inet.main(argv) == 0
    out = capsys.readouterr().out
    assert "Validation: 1 images" in out and "top5 1.0000" in out  # 3 classes: always in the top 5


# ---- hostile files and folders (issue 18) -------------------------------------------------------
import os  # noqa: E402

from timeouts import fails_after  # noqa: E402


def no_hang(seconds=20):
    """Fail (instead of blocking the suite forever) when the block takes longer than seconds."""
    return fails_after(seconds, "an image read")


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_a_fifo_or_device_named_like_an_image_is_refused_naming_it(tmp_path, kind):
    root = make_folders(tmp_path, per_class=2)
    for split in ("train", "val"):
        bad = root / split / "n02" / "n02_1.JPEG"
        bad.unlink()
        os.mkfifo(bad) if kind == "fifo" else bad.symlink_to("/dev/zero")
    data = load_imagenet(root, workers=2)
    what = "FIFO" if kind == "fifo" else "character device"
    with no_hang(), pytest.raises(inet.ImageError, match=rf"val/n02/n02_1.JPEG: is a {what}"):
        list(data.val.batches(6))  # validation: every image counts, an error stops
    with no_hang():  # training: skipped with a warning naming the file, counted
        batches = list(data.train.batches(3, rng=np.random.default_rng(0)))
    assert [len(y) for _, y in batches] == [3, 3]
    assert list(data.train.corrupt) == [3] and "train/n02/n02_1.JPEG" in data.train.corrupt[3]


def test_corrupt_training_images_are_skipped_counted_and_stop_past_the_limit(tmp_path, capsys):
    root = make_folders(tmp_path, per_class=3)
    (root / "train" / "n01" / "n01_1.JPEG").write_bytes(b"\xff\xd8 truncated")
    data = load_imagenet(root, workers=1, augment=TrainAugment(hls=(0.0, 50.0, 50.0)))
    assert data.train.max_corrupt == 10
    for _ in range(2):  # the same file in two epochs: one warning, counted once
        xs, ys = zip(*data.train.batches(4, rng=np.random.default_rng(0)))
    assert [len(y) for y in ys] == [4, 4, 4] and len(data.train.corrupt) == 1
    err = capsys.readouterr().err
    assert err.count("warning: skipped a corrupt training image") == 1
    assert "train/n01/n01_1.JPEG (class 'n01', image 1)" in err
    # the next image in file order (n01_2, same class here) took its place: labels stay right
    y = np.concatenate(ys)
    assert [_colour_class(x) for x in np.concatenate(xs)] == list(y)
    (root / "train" / "n02" / "n02_0.JPEG").write_bytes(b"not an image either")
    data = load_imagenet(root, workers=2)
    data.train.max_corrupt = 1
    with pytest.raises(inet.ImageError, match=r"2 corrupt training images, more than the limit of 1"):
        list(data.train.batches(4, rng=np.random.default_rng(0)))


def test_a_recordio_error_names_the_file_record_and_offset(tmp_path):
    make_recordio(tmp_path, n=3)
    raw = bytearray((tmp_path / "imagenet_val.rec").read_bytes())
    offsets = [int(line.split()[1]) for line in (tmp_path / "imagenet_val.idx").read_text().split("\n") if line]
    start = offsets[1] + 8 + 24
    raw[start:start + 40] = b"\0" * 40  # record 1's JPEG header destroyed
    (tmp_path / "imagenet_val.rec").write_bytes(bytes(raw))
    data = load_imagenet(tmp_path, num_classes=3, workers=1)
    with pytest.raises(inet.ImageError, match=rf"imagenet_val.rec record 1 at byte {offsets[1]}: "):
        list(data.val.batches(3))


def test_hidden_files_and_macos_resource_forks_are_not_images(tmp_path):
    root = make_folders(tmp_path, per_class=2)
    for split in ("train", "val"):
        (root / split / "n01" / "._n01_0.JPEG").write_bytes(b"\0\5\26\7 AppleDouble")
        (root / split / "n01" / ".DS_Store.jpg").write_bytes(b"Bud1")
        (root / split / ".ipynb_checkpoints").mkdir()
        (root / split / ".ipynb_checkpoints" / "x.JPEG").write_bytes(b"junk")
    data = load_imagenet(root, workers=1)
    assert data.classes == ["n01", "n02", "n03"] and len(data.train) == len(data.val) == 6
    assert len(list(data.val.batches(6))) == 1


def test_a_symlink_loop_is_named_not_skipped(tmp_path):
    root = make_folders(tmp_path, per_class=1)
    (root / "train" / "b").symlink_to(root / "train" / "b")
    with pytest.raises(inet.ImageError, match=r"training split: .*train/b: a symbolic link loop"):
        load_imagenet(root)
    (root / "train" / "b").unlink()
    (root / "train" / "n01" / "x.JPEG").symlink_to("gone.JPEG")
    with pytest.raises(inet.ImageError, match=r"train/n01/x.JPEG: no such file"):
        load_imagenet(root)  # a broken link is not an image to skip silently


def test_a_data_dir_that_is_a_file_or_a_too_long_path_says_so(tmp_path):
    from igc_np.data import load_dataset, DatasetError
    f = tmp_path / "imagenet"
    f.write_text("not a folder")
    for load in (lambda p: load_imagenet(p), lambda p: load_dataset("cifar10", p)):
        with pytest.raises(DatasetError, match="is a file, not a folder"):
            load(f)
        with pytest.raises(DatasetError, match="too long"):
            load(tmp_path / ("x" * 300) / "y")
        with pytest.raises(DatasetError, match="too long"):
            load("/".join(["abcdefgh"] * 600))


@pytest.mark.parametrize("layout", ["recordio", "folders"])
def test_an_empty_split_is_an_error_naming_it(tmp_path, layout):
    if layout == "recordio":
        make_recordio(tmp_path)
        (tmp_path / "imagenet_val.rec").write_bytes(b"")
        (tmp_path / "imagenet_val.idx").unlink()
        with pytest.raises(DatasetError, match=r"the validation split .*imagenet_val.rec has no images"):
            load_imagenet(tmp_path)
        (tmp_path / "imagenet_train.rec").write_bytes(b"")
        (tmp_path / "imagenet_train.idx").unlink()
        with pytest.raises(DatasetError, match=r"the training split .*imagenet_train.rec has no images"):
            load_imagenet(tmp_path)
    else:
        make_folders(tmp_path)
        for f in (tmp_path / "val").glob("*/*"):
            f.unlink()
        with pytest.raises(DatasetError, match=r"the validation split .*val: no images"):
            load_imagenet(tmp_path)


def test_the_last_training_batch_is_filled_or_dropped_never_a_batch_of_one(tmp_path):
    """5 images in batches of 4 at --image-size 32: the second batch holds image 5 and the
    epoch's first 3 again (each with numbers of its own), as MXNet's round_batch; drop_last
    drops it; validation keeps its batch of one."""
    make_recordio(tmp_path, n=5)
    data = load_imagenet(tmp_path, num_classes=3, workers=1, image_size=32)
    order, u = data.train.plan(4, np.random.default_rng(0))
    assert len(order) == 8 and list(order[5:]) == list(order[:3]) and len(u) == 8
    assert not np.array_equal(u[5:], u[:3])
    ys = [y for _, y in data.train.batches(4, rng=np.random.default_rng(0))]
    assert [len(y) for y in ys] == [4, 4]
    assert "last batch filled with the epoch's first images" in repr(data)
    data.train.drop_last = True
    assert [len(y) for _, y in data.train.batches(4, rng=np.random.default_rng(0))] == [4]
    assert "dropped" in data.train.last_batch()
    assert [len(y) for _, y in data.val.batches(4)] == [4, 1]


def test_a_16_bit_png_is_scaled_not_clipped():
    from PIL import Image
    grey = np.array([[0, 257, 32896, 65535]] * 4, np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    img = inet.open_image(buf.getvalue())
    assert img.mode.startswith("I")
    rgb = np.asarray(inet.decode(img))
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_the_command_line_refuses_a_negative_worker_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        inet.main(["--model", "igc_l4m32", "--weights", "w.params", "--data-dir", str(tmp_path),
                   "--workers", "-1"])
    assert e.value.code == 2 and "--workers: must be >= 1, got -1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        inet.ImageNetSource([], inet.ValTransform(), 3, workers=-1)


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_the_command_line_refuses_a_fifo_or_device_as_weights(tmp_path, capsys, kind):
    make_recordio(tmp_path)
    w = tmp_path / "w.params"
    os.mkfifo(w) if kind == "fifo" else w.symlink_to("/dev/zero")
    with no_hang():
        assert inet.main(["--model", "igc_l4m32", "--weights", str(w), "--data-dir", str(tmp_path)]) == 1
    assert f"w.params: is a {'FIFO' if kind == 'fifo' else 'character device'}" in capsys.readouterr().err
