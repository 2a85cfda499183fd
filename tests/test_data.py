"""Tests for igc_np.data: every official file format is written here in miniature, then read back.

No network: downloads are served by a fake ``urlopen`` from archives built in ``tmp_path``.
"""
import hashlib
import io
import os
import pickle
import struct
import sys
import tarfile
import urllib.error

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from igc_np.app import data
from igc_np.data import DatasetError, DatasetNotFoundError, iterate_batches, load_dataset


# ---------------------------------------------------------------------------------------------
# writers for the official formats
# ---------------------------------------------------------------------------------------------
class Py2Pickler(pickle._Pickler):
    """Pickles like Python 2's cPickle did for the CIFAR batches: str and bytes as 8-bit strings.

    Loaded with encoding='bytes' they come back as bytes, exactly as the official files do.
    """
    dispatch = dict(pickle._Pickler.dispatch)

    def save_string(self, obj):
        if isinstance(obj, str):
            obj = obj.encode("latin-1")
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_string
    dispatch[str] = save_string


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # the official files name NumPy 1's module, not NumPy 2's
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def images(rng, n, size=32):
    return rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


def write_cifar_bin(path, x, y, coarse=None):
    """Records of [coarse byte] + label byte + 3072 planar RGB bytes."""
    cols = [] if coarse is None else [np.asarray(coarse, np.uint8)[:, None]]
    cols += [np.asarray(y, np.uint8)[:, None], x.reshape(len(x), -1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.concatenate(cols, axis=1).tofile(path)


def write_cifar_py(path, x, y, label_key="labels", extra=None):
    batch = {b"batch_label": b"testing batch", label_key.encode(): [int(v) for v in y],
             b"data": x.reshape(len(x), -1),
             b"filenames": [b"img%d.png" % i for i in range(len(x))]}
    batch.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(py2_pickle(batch))


def make_cifar10(root, layout, per_batch=3, seed=0):
    """A tiny CIFAR-10 in ``layout`` ('bin' or 'py') under root -> (folder, x, y, tx, ty)."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-10-batches-bin" if layout == "bin" else "cifar-10-batches-py")
    xs, ys = [], []
    for i in range(1, 7):
        x, y = images(rng, per_batch), rng.integers(0, 10, per_batch)
        name = f"data_batch_{i}" if i < 6 else "test_batch"
        if layout == "bin":
            write_cifar_bin(folder / (name + ".bin"), x, y)
        else:
            write_cifar_py(folder / name, x, y)
        xs.append(x)
        ys.append(y)
    return folder, np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def make_cifar100(root, layout, n=4, seed=1):
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-binary" if layout == "bin" else "cifar-100-python")
    out = []
    for name in ("train", "test"):
        x, fine, coarse = images(rng, n), rng.integers(0, 100, n), rng.integers(0, 20, n)
        if layout == "bin":
            write_cifar_bin(folder / (name + ".bin"), x, fine, coarse=coarse)
        else:
            write_cifar_py(folder / name, x, fine, "fine_labels",
                           extra={b"coarse_labels": [int(c) for c in coarse]})
        out += [x, fine]
    return (folder, *out)


def write_svhn(folder, name, n, seed, labels=None):
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8) if labels is None else labels
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / name, {"X": X, "y": y})
    return X, y


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


# ---------------------------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["bin", "py"])
@pytest.mark.parametrize("point_at_batches", [False, True])
def test_cifar10_round_trip(tmp_path, layout, point_at_batches):
    folder, x, y, tx, ty = make_cifar10(tmp_path, layout)
    ds = load_dataset("cifar10", folder if point_at_batches else tmp_path)
    assert ds.train_x.shape == (15, 3, 32, 32) and ds.train_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int64 and ds.test_y.dtype == np.int64
    np.testing.assert_array_equal(ds.train_x, x)
    np.testing.assert_array_equal(ds.train_y, y)
    np.testing.assert_array_equal(ds.test_x, tx)
    np.testing.assert_array_equal(ds.test_y, ty)
    assert (ds.num_classes, ds.image_size, ds.augment) == (10, 32, True)
    assert ds.mean == (125.307, 122.950, 113.865) and ds.std == (62.993, 62.089, 66.705)


@pytest.mark.parametrize("layout", ["bin", "py"])
def test_cifar100_uses_fine_labels(tmp_path, layout):
    _, x, y, tx, ty = make_cifar100(tmp_path, layout)
    ds = load_dataset("cifar100", tmp_path)
    np.testing.assert_array_equal(ds.train_x, x)
    np.testing.assert_array_equal(ds.train_y, y)
    np.testing.assert_array_equal(ds.test_x, tx)
    np.testing.assert_array_equal(ds.test_y, ty)
    assert ds.num_classes == 100 and ds.mean == (129.304, 124.070, 112.434)


def test_cifar_pickle_written_by_numpy2_also_loads(tmp_path):
    # a batch re-pickled today (protocol 4, numpy._core names, str keys) is accepted too
    folder, x, y, _, _ = make_cifar10(tmp_path, "py")
    batch = {"data": x[:3].reshape(3, -1), "labels": [int(v) for v in y[:3]]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=4))
    np.testing.assert_array_equal(load_dataset("cifar10", tmp_path).train_x[:3], x[:3])


def test_binary_layout_preferred_over_pickles(tmp_path):
    make_cifar10(tmp_path, "py", seed=1)
    _, x, _, _, _ = make_cifar10(tmp_path, "bin", seed=2)
    np.testing.assert_array_equal(load_dataset("cifar10", tmp_path).train_x, x)


def test_subset_keeps_first_training_images(tmp_path):
    _, x, y, tx, _ = make_cifar10(tmp_path, "bin")
    ds = load_dataset("cifar10", tmp_path, subset=4)
    np.testing.assert_array_equal(ds.train_x, x[:4])
    np.testing.assert_array_equal(ds.train_y, y[:4])
    assert len(ds.test_x) == len(tx)
    with pytest.raises(ValueError):
        load_dataset("cifar10", tmp_path, subset=0)


def test_missing_dataset_message(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10", tmp_path)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "cifar-10-batches-bin" in msg and "--download" in msg
    assert "cifar-10-python.tar.gz" in msg
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("mnist", tmp_path)


def test_missing_one_batch_names_it(tmp_path):
    folder, *_ = make_cifar10(tmp_path, "bin")
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_4.bin") as e:
        load_dataset("cifar10", tmp_path)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, DatasetError)


def test_truncated_binary_file(tmp_path):
    folder, *_ = make_cifar10(tmp_path, "bin")
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"cifar-10-batches-bin/data_batch_3.bin: 9119 bytes, "
                                           r"expected a non-zero multiple of 3073"):
        load_dataset("cifar10", tmp_path)


def test_wrong_label_range_binary(tmp_path):
    folder, x, *_ = make_cifar10(tmp_path, "bin")
    write_cifar_bin(folder / "test_batch.bin", x[:2], [3, 10])
    with pytest.raises(DatasetError, match="test_batch.bin: wrong label range 3..10"):
        load_dataset("cifar10", tmp_path)


def test_wrong_coarse_label_cifar100(tmp_path):
    folder, x, *_ = make_cifar100(tmp_path, "bin")
    write_cifar_bin(folder / "train.bin", x[:2], [1, 2], coarse=[0, 20])
    with pytest.raises(DatasetError, match="coarse labels"):
        load_dataset("cifar100", tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "labels", "shape"])
def test_corrupt_pickle(tmp_path, damage):
    folder, x, y, *_ = make_cifar10(tmp_path, "py")
    path = folder / "data_batch_2"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x80\x02not a pickle at all")
    elif damage == "labels":
        write_cifar_py(path, x[:3], [1, 2, 11])
    else:
        path.write_bytes(py2_pickle({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 0, 0]}))
    with pytest.raises(DatasetError, match="cifar-10-batches-py/data_batch_2"):
        load_dataset("cifar10", tmp_path)


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import builtins
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [_SystemCall, _Eval])
def test_malicious_pickle_refused_without_running(tmp_path, payload):
    folder, *_ = make_cifar10(tmp_path, "py")
    marker = tmp_path / "pwned"
    # hidden inside an otherwise valid-looking batch, with the array it would carry
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": payload(marker)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load global"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# SVHN
# ---------------------------------------------------------------------------------------------
def test_svhn_round_trip(tmp_path):
    folder = tmp_path / "svhn"
    labels = np.array([[1], [10], [3], [10], [9]])
    X1, _ = write_svhn(folder, "train_32x32.mat", 5, 0, labels=labels)
    X2, y2 = write_svhn(folder, "extra_32x32.mat", 4, 1)
    X3, y3 = write_svhn(folder, "test_32x32.mat", 3, 2)
    ds = load_dataset("svhn", tmp_path)
    assert ds.train_x.shape == (9, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    # (H, W, C, N) -> (N, C, H, W)
    np.testing.assert_array_equal(ds.train_x[:5], X1.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(ds.train_x[5:], X2.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(ds.test_x, X3.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(ds.train_y[:5], [1, 0, 3, 0, 9])   # digit 0 is stored as 10
    np.testing.assert_array_equal(ds.train_y[5:], y2.ravel() % 10)
    np.testing.assert_array_equal(ds.test_y, y3.ravel() % 10)
    assert ds.train_y.dtype == np.int64 and not ds.augment
    assert ds.mean == (111.609, 113.161, 120.565)


def test_svhn_small_subset_does_not_need_extra(tmp_path):
    X1, _ = write_svhn(tmp_path / "svhn", "train_32x32.mat", 5, 0)
    write_svhn(tmp_path / "svhn", "test_32x32.mat", 2, 1)
    ds = load_dataset("svhn", tmp_path, subset=3)
    np.testing.assert_array_equal(ds.train_x, X1.transpose(3, 2, 0, 1)[:3])
    with pytest.raises(DatasetNotFoundError, match="extra_32x32.mat"):
        load_dataset("svhn", tmp_path)


def test_svhn_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        load_dataset("svhn", tmp_path)
    folder = tmp_path / "svhn"
    write_svhn(folder, "train_32x32.mat", 2, 0, labels=np.array([[0], [3]]))
    write_svhn(folder, "extra_32x32.mat", 2, 0)
    write_svhn(folder, "test_32x32.mat", 2, 0)
    with pytest.raises(DatasetError, match="train_32x32.mat: wrong label range"):
        load_dataset("svhn", tmp_path)
    (folder / "train_32x32.mat").write_bytes(b"MATLAB 5.0 garbage" * 10)
    with pytest.raises(DatasetError, match="svhn/train_32x32.mat: cannot read"):
        load_dataset("svhn", tmp_path)


def test_svhn_without_scipy(tmp_path, monkeypatch):
    write_svhn(tmp_path / "svhn", "train_32x32.mat", 2, 0)
    monkeypatch.setitem(sys.modules, "scipy.io", None)   # makes "from scipy.io import" fail
    with pytest.raises(ImportError, match="scipy"):
        load_dataset("svhn", tmp_path)


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------
def test_digits_split():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape == (1437, 3, 8, 8) and a.test_x.shape == (360, 3, 8, 8)
    assert a.train_x.dtype == np.uint8 and a.train_x.max() == 255 and a.image_size == 8
    np.testing.assert_array_equal(a.train_x, b.train_x)              # fixed split
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert (a.train_x[:, 0] == a.train_x[:, 2]).all()                 # grey replicated
    full = load_digits()
    counts = np.bincount(np.concatenate([a.train_y, a.test_y]), minlength=10)
    np.testing.assert_array_equal(counts, np.bincount(full.target))  # a partition of the set
    np.testing.assert_allclose(a.mean, [a.train_x.mean()] * 3)        # from the training split
    np.testing.assert_allclose(a.std, [a.train_x.std()] * 3)
    assert load_dataset("digits", subset=100).train_x.shape[0] == 100


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'\.\[examples\]'):
        load_dataset("digits")


# ---------------------------------------------------------------------------------------------
# download, checksum, extraction (fake network)
# ---------------------------------------------------------------------------------------------
class FakeResponse(io.BytesIO):
    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def serve(monkeypatch, files):
    """Replace urlopen: url -> bytes, or an exception to raise. Returns the list of URLs asked."""
    asked = []

    def fake_urlopen(url, timeout=None):
        asked.append(url)
        payload = files[url]
        if isinstance(payload, Exception):
            raise payload
        return FakeResponse(payload)
    monkeypatch.setattr(data, "_urlopen", fake_urlopen)
    return asked


def tar_bytes(entries):
    """entries: list of (TarInfo kwargs dict, bytes or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, payload in entries:
            ti = tarfile.TarInfo(info["name"])
            for k, v in info.items():
                setattr(ti, k, v)
            if payload is not None:
                ti.size = len(payload)
            tar.addfile(ti, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def cifar10_archive(tmp_path):
    src = tmp_path / "src"
    folder, x, *_ = make_cifar10(src, "py")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return buf.getvalue(), x


URL10 = data.CIFAR["cifar10"]["url"]


def test_download_verifies_and_extracts(tmp_path, monkeypatch):
    archive, x = cifar10_archive(tmp_path)
    monkeypatch.setitem(data.CIFAR["cifar10"], "md5", md5(archive))
    asked = serve(monkeypatch, {URL10: archive})
    root = tmp_path / "data"
    ds = load_dataset("cifar10", root, download=True)
    np.testing.assert_array_equal(ds.train_x, x)
    assert asked == [URL10]
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py",
                                                      "cifar-10-python.tar.gz"]
    load_dataset("cifar10", root, download=True)   # already there: no second request
    assert asked == [URL10]


def test_download_md5_mismatch(tmp_path, monkeypatch):
    archive, _ = cifar10_archive(tmp_path)
    serve(monkeypatch, {URL10: archive})            # md5 stays the official one: mismatch
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz: md5 mismatch"):
        load_dataset("cifar10", root, download=True)
    assert list(root.iterdir()) == []               # no .part, no half folder


def test_download_offline_message(tmp_path, monkeypatch):
    serve(monkeypatch, {URL10: urllib.error.URLError("no route to host")})
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", tmp_path, download=True)
    assert URL10 in str(e.value) and str(tmp_path / "cifar-10-batches-py") in str(e.value)


@pytest.mark.parametrize("bad", [
    ({"name": "../evil.txt"}, b"x"),
    ({"name": "/tmp/igc_np_evil.txt"}, b"x"),
    ({"name": "cifar-10-batches-py/../../evil.txt"}, b"x"),
    ({"name": "cifar-10-batches-py/ln", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None),
    ({"name": "cifar-10-batches-py/hl", "type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}, None),
])
def test_unsafe_archive_refused(tmp_path, monkeypatch, bad):
    archive = tar_bytes([({"name": "cifar-10-batches-py", "type": tarfile.DIRTYPE}, None),
                         ({"name": "cifar-10-batches-py/test_batch"}, b"abc"), bad])
    monkeypatch.setitem(data.CIFAR["cifar10"], "md5", md5(archive))
    serve(monkeypatch, {URL10: archive})
    root = tmp_path / "a" / "b"
    with pytest.raises(DatasetError, match="unsafe path|refusing link"):
        load_dataset("cifar10", root, download=True)
    assert not (tmp_path / "a" / "evil.txt").exists() and not (root / "evil.txt").exists()
    assert not os.path.exists("/tmp/igc_np_evil.txt")
    assert [p.name for p in root.iterdir()] == ["cifar-10-python.tar.gz"]   # no temp folder left


def test_corrupt_archive(tmp_path, monkeypatch):
    archive = b"\x1f\x8b not really gzip"
    monkeypatch.setitem(data.CIFAR["cifar10"], "md5", md5(archive))
    serve(monkeypatch, {URL10: archive})
    with pytest.raises(DatasetError, match="corrupt archive"):
        load_dataset("cifar10", tmp_path, download=True)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_svhn_download(tmp_path, monkeypatch):
    src = tmp_path / "src"
    files, want = {}, {}
    for split, n in (("train", 3), ("extra", 2), ("test", 2)):
        fname = data.SVHN["files"][split][0]
        X, _ = write_svhn(src, fname, n, len(want))
        payload = (src / fname).read_bytes()
        files[data.SVHN["url"].format(fname)] = payload
        monkeypatch.setitem(data.SVHN["files"], split, (fname, md5(payload)))
        want[split] = X.transpose(3, 2, 0, 1)
    serve(monkeypatch, files)
    ds = load_dataset("svhn", tmp_path / "data", download=True)
    np.testing.assert_array_equal(ds.train_x, np.concatenate([want["train"], want["extra"]]))
    np.testing.assert_array_equal(ds.test_x, want["test"])
    assert sorted(p.name for p in (tmp_path / "data" / "svhn").iterdir()) == \
        ["extra_32x32.mat", "test_32x32.mat", "train_32x32.mat"]


def test_plain_progress_without_tqdm(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    payload = bytes(300_000)
    serve(monkeypatch, {"http://x/f.bin": payload})
    data._fetch("http://x/f.bin", tmp_path / "f.bin", md5(payload), "hint")
    assert "100%" in capsys.readouterr().err
    assert (tmp_path / "f.bin").read_bytes() == payload


# ---------------------------------------------------------------------------------------------
# batching and augmentation
# ---------------------------------------------------------------------------------------------
MEAN, STD = (125.307, 122.950, 113.865), (62.993, 62.089, 66.705)


def test_batches_normalise_and_cover_everything():
    rng = np.random.default_rng(0)
    x, y = images(rng, 10, size=4), np.arange(10)
    batches = list(iterate_batches(x, y, 4, shuffle=True, rng=rng, mean=MEAN, std=STD))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    order = np.concatenate([b[1] for b in batches])
    assert sorted(order) == list(range(10)) and list(order) != list(range(10))
    xb, yb = batches[0]
    assert xb.dtype == np.float32 and yb.dtype == np.int64
    want = (x[yb] - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    np.testing.assert_allclose(xb, want, rtol=1e-5, atol=1e-5)
    assert len(list(iterate_batches(x, y, 4, drop_last=True))) == 2
    xb64, _ = next(iterate_batches(x, y, 4, dtype=np.float64))
    assert xb64.dtype == np.float64
    with pytest.raises(ValueError, match="Generator"):
        next(iterate_batches(x, y, 4, shuffle=True))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), size=st.integers(1, 6), pad=st.integers(0, 3),
       seed=st.integers(0, 2**32))
def test_augment_is_a_crop_of_the_mean_padded_image(n, size, pad, seed):
    rng = np.random.default_rng(seed)
    x, y = images(rng, n, size), np.arange(n)
    xb, yb = next(iterate_batches(x, y, n, rng=rng, augment=True, mean=MEAN, std=STD, pad=pad))
    assert xb.shape == (n, 3, size, size)
    norm = (x - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    padded = np.pad(norm, ((0, 0), (0, 0), (pad, pad), (pad, pad)))   # mean -> 0
    offsets = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    for i in range(n):
        crops = [padded[i, :, dy:dy + size, dx:dx + size] for dy, dx in offsets]
        candidates = crops + [c[:, :, ::-1] for c in crops]
        assert any(np.allclose(xb[i], c, atol=1e-5) for c in candidates)


def test_padding_is_filled_with_the_mean():
    rng = np.random.default_rng(3)
    x = np.full((64, 3, 8, 8), 255, np.uint8)
    xb, _ = next(iterate_batches(x, np.zeros(64), 64, rng=rng, augment=True, mean=MEAN, std=STD))
    raw = xb * np.array(STD, np.float32)[:, None, None] + np.array(MEAN, np.float32)[:, None, None]
    is_image = np.isclose(raw, 255, atol=1e-3)
    is_mean = np.isclose(raw, np.array(MEAN)[:, None, None], atol=1e-3)
    assert (is_image | is_mean).all()
    assert is_mean.any() and (xb[is_mean] == 0).all()   # padding is exactly 0 after normalising
    # some images are shifted by the full 4 pixels
    assert (is_mean[:, 0].sum(axis=(1, 2)) >= 4 * 8).any()


def test_mirror_actually_mirrors():
    rng = np.random.default_rng(5)
    x = images(rng, 1, size=6).repeat(64, axis=0)
    xb, _ = next(iterate_batches(x, np.zeros(64), 64, rng=rng, augment=True, pad=0))
    same = [np.array_equal(b, x[0]) for b in xb]
    flipped = [np.array_equal(b, x[0, :, :, ::-1]) for b in xb]
    assert all(s or f for s, f in zip(same, flipped))
    assert 10 < sum(flipped) < 54
    xb, _ = next(iterate_batches(x, np.zeros(64), 64, rng=rng, augment=True, pad=0, mirror=False))
    assert (xb == x[0]).all()


class _CountsGathers(np.ndarray):
    """Images that record how many rows each fancy-indexing gather takes."""
    gathered: list

    def __getitem__(self, key):
        if isinstance(key, np.ndarray):
            self.gathered.append(len(key))
        return super().__getitem__(key)


@pytest.mark.parametrize("size", [1, 2, 3, 9])
def test_a_rank_builds_only_its_rows_of_the_whole_batch(monkeypatch, size):
    """part=(rank, size): the rows slice_of(B, rank, size) of every whole batch, bit for bit,
    the rng advanced as for the whole batch; only those rows are gathered and augmented
    (23 images in batches of 8: 8, 8, 7 rows; with 9 ranks some ranks get no rows)."""
    from igc_np.distributed import slice_of
    x, y = images(np.random.default_rng(0), 23, size=5), np.arange(23)

    def epoch(images_, **kw):
        rng = np.random.default_rng(4)
        out = list(iterate_batches(images_, y, 8, shuffle=True, rng=rng, augment=True, mean=MEAN,
                                   std=STD, pad=2, **kw))
        return out, rng.bit_generator.state
    whole, state_after = epoch(x)
    augmented, real = [], data._pad_crop_mirror
    monkeypatch.setattr(data, "_pad_crop_mirror",
                        lambda xb, *a: augmented.append(len(xb)) or real(xb, *a))
    for rank in range(size):
        counted = x.view(_CountsGathers)
        counted.gathered = []
        augmented.clear()
        mine, state = epoch(counted, part=(rank, size))
        assert state == state_after  # every rank draws the numbers of the whole batches
        rows = [slice_of(len(yb), rank, size) for _, yb in whole]
        for (xw, yw), (xp, yp), r in zip(whole, mine, rows):
            np.testing.assert_array_equal(np.asarray(xp), xw[r])
            np.testing.assert_array_equal(yp, yw[r])
        built = [r.stop - r.start for r in rows]
        assert counted.gathered == built and augmented == built, (rank, size)
    # a resumed epoch gives the same slices; a rank outside the world is refused at once
    rng = np.random.default_rng(4)
    resumed = list(iterate_batches(x, y, 8, shuffle=True, rng=rng, augment=True, mean=MEAN,
                                   std=STD, pad=2, start_batch=2, part=(0, 2)))
    np.testing.assert_array_equal(resumed[0][0], whole[2][0][:3])
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        next(iterate_batches(x, y, 8, part=(2, 2)))


def test_deterministic_and_resumable():
    x, y = images(np.random.default_rng(0), 20, size=5), np.arange(20)

    def epoch(rng, **kw):
        return list(iterate_batches(x, y, 6, shuffle=True, rng=rng, augment=True,
                                    mean=MEAN, std=STD, **kw))
    a, b = epoch(np.random.default_rng(7)), epoch(np.random.default_rng(7))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    c = epoch(np.random.default_rng(8))
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, c))

    # save the generator state at an epoch boundary, restore it later: same epoch again
    rng = np.random.default_rng(11)
    epoch(rng)
    state = rng.bit_generator.state
    second = epoch(rng)
    rng2 = np.random.default_rng(0)
    rng2.bit_generator.state = state
    for (xa, _), (xb, _) in zip(second, epoch(rng2)):
        np.testing.assert_array_equal(xa, xb)
    # resume mid-epoch: restore the epoch-start state and skip the batches already done
    rng2.bit_generator.state = state
    tail = epoch(rng2, start_batch=2)
    assert len(tail) == len(second) - 2
    for (xa, ya), (xb, yb) in zip(second[2:], tail):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert rng2.bit_generator.state == rng.bit_generator.state


# ---------------------------------------------------------------------------------------------
# pickles written by Python 3, labels, empty splits
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_pickles_of_every_python3_protocol_load(tmp_path, protocol):
    """What pickle.dump writes by default (4/5) or with protocol=2 (bytes via _codecs.encode)."""
    rng = np.random.default_rng(protocol)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    want = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = images(rng, 2), rng.integers(0, 10, 2)
        batch = {"batch_label": b"a batch", "labels": y.tolist(), "data": x.reshape(2, -1),
                 "filenames": [b"a.png", b"b.png"]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        want[name] = x
    ds = load_dataset("cifar10", tmp_path)
    np.testing.assert_array_equal(ds.test_x, want["test_batch"])
    np.testing.assert_array_equal(ds.train_x[:2], want["data_batch_1"])


@pytest.mark.parametrize("payload,message", [
    # _codecs.encode with another codec than latin-1
    (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.", "latin-1"),
    # _frombuffer of an object dtype (protocol 5 form)
    (None, "refusing (_frombuffer with )?dtype"),
    # a protocol-5 os.system is still refused
    (b"\x80\x05\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R.", "refusing to load global os.system"),
])
def test_python3_pickle_helpers_are_admitted_only_in_checked_form(tmp_path, payload, message):
    if payload is None:
        class ObjectArray:
            def __reduce__(self):
                return np._core.numeric._frombuffer, (bytes(8), np.dtype("O"), (1,), "C")
        payload = pickle.dumps(ObjectArray(), protocol=5)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.parent.mkdir()
    path.write_bytes(payload)
    with pytest.raises(DatasetError, match=message):
        data._read_cifar_pickle(path, data.CIFAR["cifar10"])


@pytest.mark.parametrize("labels,ok", [([1.0, 2.0], True), ([1.5, 2.0], False),
                                       ([float("nan"), 1.0], False), (["1", "2"], False)])
def test_float_labels_must_be_whole_numbers(tmp_path, labels, ok):
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.parent.mkdir()
    x = images(np.random.default_rng(0), 2)
    path.write_bytes(pickle.dumps({"data": x.reshape(2, -1), "labels": labels}))
    if ok:
        _, y = data._read_cifar_pickle(path, data.CIFAR["cifar10"])
        assert y.dtype == np.int64 and y.tolist() == [1, 2]
    else:
        with pytest.raises(DatasetError, match="labels must be whole numbers"):
            data._read_cifar_pickle(path, data.CIFAR["cifar10"])


def test_an_empty_svhn_split_is_an_error(tmp_path):
    pytest.importorskip("scipy")
    folder = tmp_path / "svhn"
    write_svhn(folder, "train_32x32.mat", 3, 0)
    write_svhn(folder, "extra_32x32.mat", 2, 1)
    write_svhn(folder, "test_32x32.mat", 0, 2, labels=np.zeros((0, 1), np.uint8))
    with pytest.raises(DatasetError, match="the test split .* has no images"):
        load_dataset("svhn", tmp_path)


# ---------------------------------------------------------------------------------------------
# download against a real HTTP server on 127.0.0.1 (started here, stops by itself)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def http_server():
    """Serves PAYLOAD at /f.bin; modes: 'slow' (1 byte per 20 ms), 'cut' (first response stops
    half-way), 'full'. Records the Range headers asked. Threads end within a few seconds."""
    import http.server
    import threading
    import time as _time

    state = {"payload": bytes(range(256)) * 400, "mode": "full", "ranges": [], "served": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            payload, start = state["payload"], 0
            asked = self.headers.get("Range")
            state["ranges"].append(asked)
            if asked:
                start = int(asked.split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(payload) - start))
            self.end_headers()
            body = payload[start:]
            state["served"] += 1
            try:
                if state["mode"] == "slow":
                    t_end = _time.monotonic() + 5  # bounded: gives up after 5 s
                    for i in range(len(body)):
                        if _time.monotonic() > t_end:
                            break
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        _time.sleep(0.02)
                elif state["mode"] == "cut" and state["served"] == 1:
                    self.wfile.write(body[:len(body) // 2])
                else:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/f.bin"
    yield state
    server.shutdown()
    server.server_close()


def test_download_of_a_trickling_server_stops_at_the_minimum_rate(tmp_path, http_server):
    http_server["mode"] = "slow"
    dest = tmp_path / "f.bin"
    t0 = __import__("time").monotonic()
    with pytest.raises(DatasetError, match=r"too slow: \d+ bytes/s over the last .* \(minimum 1000\).*kept"):
        data._fetch(http_server["url"], dest, md5(http_server["payload"]), "hint",
                    min_rate=1000, window_s=0.5, timeout_s=5)
    assert __import__("time").monotonic() - t0 < 4
    assert not dest.exists() and (tmp_path / "f.bin.part").stat().st_size > 0


def test_download_has_an_overall_deadline(tmp_path, http_server):
    http_server["mode"] = "slow"
    with pytest.raises(DatasetError, match="deadline"):
        data._fetch(http_server["url"], tmp_path / "f.bin", md5(http_server["payload"]), "hint",
                    deadline_s=0.3, min_rate=0, timeout_s=5)


def test_download_resumes_a_partial_file_with_http_range(tmp_path, http_server, capsys):
    http_server["mode"] = "cut"
    dest, payload = tmp_path / "f.bin", http_server["payload"]
    with pytest.raises(DatasetError, match="closed after 51200 of 102400 bytes.*run again"):
        data._fetch(http_server["url"], dest, md5(payload), "hint", timeout_s=5)
    assert (tmp_path / "f.bin.part").stat().st_size == len(payload) // 2
    data._fetch(http_server["url"], dest, md5(payload), "hint", timeout_s=5)
    assert dest.read_bytes() == payload and not (tmp_path / "f.bin.part").exists()
    assert http_server["ranges"] == [None, f"bytes={len(payload) // 2}-"]


# ---- bounded unpickling: declared sizes are checked before anything is allocated -----------------
def _cifar_pickle_path(tmp_path, payload):
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.parent.mkdir()
    path.write_bytes(payload)
    return path


_TERA = pickle.dumps(10 ** 12, protocol=2)[2:-1]  # the opcode pushing the int 10**12


@pytest.mark.parametrize("payload,message", [
    # BINBYTES8 claiming 2**62 bytes (pickle would allocate them before reading)
    (b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 62) + b"abc.", "does not fit the file"),
    # BINUNICODE8 claiming 2**62 bytes
    (b"\x80\x04\x8d" + struct.pack("<Q", 2 ** 62) + b"abc.", "does not fit the file"),
    # numpy.ndarray((10**12,)) through the allowed global
    (b"\x80\x02cnumpy\nndarray\n" + _TERA + b"\x85\x85R.", "more than the file"),
    # _reconstruct of a 10**12-element array, and a state declaring one
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
     + _TERA + b"\x85C\x01b\x87R.", "more than the file"),
    (pickle.dumps(np.zeros(4, np.uint8), protocol=2).replace(b"K\x04\x85", _TERA + b"\x85"),
     "bytes of data for shape"),
], ids=["bytes8", "unicode8", "ndarray", "reconstruct", "setstate"])
def test_a_pickle_declaring_a_huge_object_is_refused_before_allocating(tmp_path, payload, message):
    path = _cifar_pickle_path(tmp_path, payload)
    import tracemalloc
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=message):
            data._read_cifar_pickle(path, data.CIFAR["cifar10"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


def test_many_arrays_sharing_one_memoised_state_cannot_multiply_memory(tmp_path):
    """100 arrays rebuilt from one memoised 1 MiB bytes object: a 1 MiB file asking for 100 MiB."""
    shared = bytes(1 << 20)

    class SharedState:
        def __reduce__(self):
            return (np.empty(0).__reduce__()[0], (np.ndarray, (0,), b"b"),
                    (1, (len(shared),), np.dtype("u1"), False, shared))
    payload = pickle.dumps({"data": [SharedState() for _ in range(100)], "labels": []}, protocol=2)
    assert len(payload) < 2 << 20
    assert len(pickle.loads(payload)["data"]) == 100  # plain pickle builds all 100 (100 MiB)
    path = _cifar_pickle_path(tmp_path, payload)
    with pytest.raises(DatasetError, match="more than the file can hold"):
        data._read_cifar_pickle(path, data.CIFAR["cifar10"])


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_a_fifo_or_device_as_a_data_file_is_refused_at_once(tmp_path, kind):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar10(tmp_path, "py")
    target = folder / "data_batch_1"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    with pytest.raises(DatasetError, match="data_batch_1: is a (FIFO|character device)"):
        load_dataset("cifar10", tmp_path)


def test_binary_cifar_fifo_is_refused(tmp_path):
    make_cifar10(tmp_path, "bin")
    target = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(DatasetError, match="test_batch.bin: is a FIFO"):
        load_dataset("cifar10", tmp_path)


def test_svhn_fifo_is_refused_naming_it(tmp_path):
    pytest.importorskip("scipy")
    folder = tmp_path / "svhn"
    write_svhn(folder, "train_32x32.mat", 3, 0)
    write_svhn(folder, "extra_32x32.mat", 3, 1)
    os.mkfifo(folder / "test_32x32.mat")
    with pytest.raises(DatasetError, match="test_32x32.mat: is a FIFO"):
        load_dataset("svhn", tmp_path)


@pytest.mark.parametrize("module", ["igc_np.data", "igc_np.app.data"])
def test_the_command_line_without_data_is_one_line_not_a_traceback(tmp_path, module):
    """python -m igc_np.data (the documented path) and igc_np.app.data: one line, exit 1."""
    import subprocess
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", module, "cifar10", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: CIFAR-10 not found under") and "--download" in r.stderr
    (tmp_path / "f").write_text("x")
    r = subprocess.run([sys.executable, "-m", module, "cifar10", "--data-dir", str(tmp_path / "f")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
