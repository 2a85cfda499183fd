"""MXNet files without MXNet: .params in and out (MXNet's NDArray list format; docs/reference_protocol.md,
"MXNet files"), the symbol graphs, RecordIO.

The .params files here are written by ``write_params_by_hand``, a writer that follows the format
byte for byte with struct.pack and shares no code with igc_np.mxnet_io, so a reader bug cannot be
cancelled by the same bug in the writer. Every corruption must raise MXNetFormatError naming the
file, and leave the model exactly as it was.
"""
import json
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

import igc_np as ig
from igc_np import mxnet_io
from igc_np.mxnet_graph import UnknownGraphError, identify_graph
from igc_np.mxnet_io import MXNetFormatError, RecordIO

SYMBOLS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mxnet-symbols"
needs_graphs = pytest.mark.skipif(not SYMBOLS.is_dir(), reason=f"{SYMBOLS} not present")

FLAG = {np.float32: 0, np.float64: 1, np.float16: 2, np.uint8: 3, np.int32: 4, np.int8: 5, np.int64: 6}


# ---- a test-side writer of the format -------------------------------------------------------
def array_bytes(a, version="v2"):
    """One NDArray as the format lays it out: v2 / v3 (magic, stype, ndim, int64 shape), v1 (MXNet's
    first versioned header: magic, ndim, int64 shape; no storage type) or legacy (uint32 ndim,
    uint32 shape); then device type, device id, type flag, the raw data."""
    a = np.array(a, order="C")  # (not ascontiguousarray: it turns a 0-d array into 1-d)
    if version == "legacy":
        head = struct.pack("<I", a.ndim) + b"".join(struct.pack("<I", d) for d in a.shape)
    elif version == "v1":
        head = struct.pack("<I", 0xF993FAC8) + struct.pack("<I", a.ndim)
        head += b"".join(struct.pack("<q", d) for d in a.shape)
    else:
        magic = {"v2": 0xF993FAC9, "v3": 0xF993FACA}[version]
        head = struct.pack("<I", magic) + struct.pack("<i", 0) + struct.pack("<I", a.ndim)
        head += b"".join(struct.pack("<q", d) for d in a.shape)
    dev = struct.pack("<i", 1) + struct.pack("<i", 0)
    flag = struct.pack("<i", FLAG[a.dtype.type])
    return head + dev + flag + a.astype(a.dtype.newbyteorder("<")).tobytes()


def params_bytes(entries, version="v2", names=None):
    """entries: [(name with 'arg:'/'aux:', array)] -> the bytes of a .params file."""
    out = struct.pack("<Q", 0x112) + struct.pack("<Q", 0) + struct.pack("<Q", len(entries))
    for _, a in entries:
        out += array_bytes(a, version)
    names = [n for n, _ in entries] if names is None else names
    out += struct.pack("<Q", len(names))
    for n in names:
        out += struct.pack("<Q", len(n.encode())) + n.encode()
    return out


def model_entries(model, dtype=None):
    """The seed's naming: 'arg:' learned parameters, 'aux:' BN moving statistics."""
    buffers = {n for n, _, _ in model.named_buffers()}
    return [((("aux:" if n in buffers else "arg:") + n), a if dtype is None else a.astype(dtype))
            for n, a in model.state_dict().items()]


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for n in sa:
        assert sa[n].dtype == sb[n].dtype and np.array_equal(sa[n], sb[n]), n


def small_model(rng=0):
    """A CIFAR resnet_igc: reference names, BN statistics, an FC bias; fast to build."""
    m = ig.nets.get_network("resnet_igc", depth=8, primary_partition=2, secondary_partition=2, rng=rng)
    for _, mod, key in m.named_buffers():  # non-trivial statistics, so that loading them shows
        object.__setattr__(mod, key, np.random.default_rng(7).random(getattr(mod, key).shape).astype(np.float32))
    return m


# ---- reading what the format describes-----------------------------------------------------
@pytest.mark.parametrize("version", ["v2", "v3", "v1", "legacy"])
def test_load_params_reads_every_array_header_version(tmp_path, version):
    src, dst = small_model(0), small_model(1)
    path = tmp_path / f"m-{version}.params"
    path.write_bytes(params_bytes(model_entries(src), version))
    assert mxnet_io.load_params(dst, path) is dst
    assert_same_state(dst, src)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_load_params_casts_other_float_dtypes_with_a_note(tmp_path, dtype):
    src, dst = small_model(0), small_model(1)
    path = tmp_path / "m.params"
    path.write_bytes(params_bytes(model_entries(src, dtype)))
    with pytest.warns(UserWarning, match=np.dtype(dtype).name):
        mxnet_io.load_params(dst, path)
    for n, a in dst.state_dict().items():
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, src.state_dict()[n].astype(dtype).astype(np.float32))


def test_read_ndarray_list_reads_every_dtype_and_scalars(tmp_path):
    arrays = [np.arange(6, dtype=t).reshape(2, 3) for t in FLAG]
    path = tmp_path / "all.params"
    path.write_bytes(params_bytes([(f"arg:a{i}", a) for i, a in enumerate(arrays)]))
    got, names = mxnet_io.read_ndarray_list(path)
    assert names == [f"arg:a{i}" for i in range(len(arrays))]
    for a, b in zip(arrays, got):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # V3 (NumPy shapes): ndim 0 is a scalar, not an empty array
    path.write_bytes(params_bytes([("arg:s", np.array(2.5, np.float32))], "v3"))
    (s,), _ = mxnet_io.read_ndarray_list(path)
    assert s.shape == () and s == 2.5


# ---- writing: what we write, the format reads------------------------------------------------
def test_save_params_writes_section_8_byte_for_byte(tmp_path):
    model = small_model(3)
    path = tmp_path / "out.params"
    mxnet_io.save_params(model, path)
    assert path.read_bytes() == params_bytes(model_entries(model))
    assert [p.name for p in tmp_path.iterdir()] == ["out.params"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600


@pytest.mark.parametrize("name", list(ig.nets.IMAGENET_CONFIGS))
def test_imagenet_models_round_trip(tmp_path, name):
    """load(save(model)) == model for the five released models (each built once: the weights are
    overwritten after saving and must all come back)."""
    model = ig.nets.imagenet_model(name, rng=1)
    for _, mod, key in model.named_buffers():
        object.__setattr__(mod, key, getattr(mod, key) + 0.5)
    saved = model.state_dict()
    path = tmp_path / f"{name}-0001.params"
    mxnet_io.save_params(model, path)
    model.load_state_dict({n: np.full_like(a, 7.0) for n, a in saved.items()})
    mxnet_io.load_params(model, path)
    for n, a in model.state_dict().items():
        assert a.dtype == saved[n].dtype and np.array_equal(a, saved[n]), n


def test_imagenet_model_weights_argument(tmp_path):
    src = ig.nets.imagenet_model("igc_l100m2", rng=1)
    path = tmp_path / "igc_l100m2-0001.params"
    mxnet_io.save_params(src, path)
    assert_same_state(mxnet_io.load_released("igc_l100m2", path), src)
    with pytest.raises(MXNetFormatError, match="another configuration.*stem is that of 'igc_l100m2'"):
        mxnet_io.load_released("igc_l4m32", path)
    with pytest.raises(TypeError, match="load_released"):  # the core reads no MXNet file
        ig.nets.imagenet_model("igc_l100m2", weights=path)


# ---- errors: nothing half-loaded ----------------------------------------------------------------
def _expect_error(model, path, match):
    before = model.state_dict()
    with pytest.raises(MXNetFormatError, match=match) as err:
        mxnet_io.load_params(model, path)
    assert str(path) in str(err.value)
    after = model.state_dict()
    assert all(np.array_equal(before[n], after[n]) for n in before), "model changed by a failed load"
    return err.value


def _boundaries(entries):
    """Byte offsets where a section of the file ends: header words, each array's header fields and
    data, the name count, each name's length and text."""
    cuts = [8, 16, 24]
    pos = 24
    for _, a in entries:
        fields = [4, 4, 4] + [8] * a.ndim + [4, 4, 4, a.nbytes]
        for f in fields:
            pos += f
            cuts.append(pos)
    pos += 8
    cuts.append(pos)
    for n, _ in entries:
        pos += 8
        cuts.append(pos)
        pos += len(n)
        cuts.append(pos)
    return cuts


def test_truncated_at_every_section_boundary(tmp_path):
    model = small_model(0)
    entries = model_entries(small_model(1))[:3]
    data = params_bytes(entries)
    cuts = _boundaries(entries)
    assert cuts[-1] == len(data)
    path = tmp_path / "cut.params"
    for cut in [0, 4] + cuts[:-1] + [c - 1 for c in cuts[1:]]:
        path.write_bytes(data[:cut])
        _expect_error(model, path, "truncated|empty|names")


@pytest.mark.parametrize("case, match", [
    ("list magic", "not an MXNet NDArray list"),
    ("array magic", "unknown array magic"),
    ("huge count", "declared 18446744073709551615 arrays"),
    ("huge ndim", "ndim .* is not in"),
    ("huge shape", "truncated: array 0 of shape"),
    ("negative shape", "negative dimension"),
    ("dtype flag", "unknown type flag 9"),
    ("short names", "arrays but 1 names"),
    ("no names", "no names"),
    ("huge name", "truncated: name 0"),
    ("trailing", "unexpected bytes"),
    ("sparse", "storage type 1"),
])
def test_corrupt_files_are_clear_errors(tmp_path, case, match):
    model = small_model(0)
    entries = model_entries(small_model(1))
    good = params_bytes(entries)
    a0 = len(array_bytes(entries[0][1]))
    data = bytearray(good)
    if case == "list magic":
        data[0:8] = struct.pack("<Q", 0x113)
    elif case == "array magic":
        data[24:28] = struct.pack("<I", 0xDEADBEEF)
    elif case == "huge count":
        data[16:24] = struct.pack("<Q", 2 ** 64 - 1)
    elif case == "huge ndim":
        data[32:36] = struct.pack("<I", 2 ** 31 - 1)
    elif case == "huge shape":
        data[36:44] = struct.pack("<q", 2 ** 40)
    elif case == "negative shape":
        data[36:44] = struct.pack("<q", -3)
    elif case == "dtype flag":
        ndim = entries[0][1].ndim
        data[36 + 8 * ndim + 8:36 + 8 * ndim + 12] = struct.pack("<i", 9)
    elif case == "short names":
        data = bytearray(params_bytes(entries, names=[entries[0][0]]))
    elif case == "no names":
        data = bytearray(params_bytes(entries, names=[]))
    elif case == "huge name":
        data = bytearray(params_bytes(entries[:1]))
        at = 24 + a0 + 8
        data[at:at + 8] = struct.pack("<Q", 2 ** 62)
    elif case == "trailing":
        data += b"\0" * 8
    elif case == "sparse":
        data[28:32] = struct.pack("<i", 1)
    path = tmp_path / "bad.params"
    path.write_bytes(bytes(data))
    _expect_error(model, path, match)


def test_a_none_array_reads_as_none_and_is_refused_as_a_weight(tmp_path):
    """MXNet writes an empty NDArray as its header up to the shape, ndim 0 (V2) or -1 (V3)."""
    entries = model_entries(small_model(1))
    none_v2 = struct.pack("<IiI", 0xF993FAC9, 0, 0)
    none_v3 = struct.pack("<Iii", 0xF993FACA, 0, -1)
    for none in (none_v2, none_v3):
        data = params_bytes(entries)
        a0 = len(array_bytes(entries[0][1]))
        path = tmp_path / "none.params"
        path.write_bytes(data[:24] + none + data[24 + a0:])
        arrays, _ = mxnet_io.read_ndarray_list(path)
        assert arrays[0] is None and np.array_equal(arrays[1], entries[1][1])
        _expect_error(small_model(0), path, "empty .none. array")


def test_foreign_and_missing_files(tmp_path):
    model = small_model(0)
    path = tmp_path / "notes.params"
    path.write_text("these are not weights, just a text file of some length")
    _expect_error(model, path, "not an MXNet NDArray list")
    _expect_error(model, tmp_path / "absent.params", "absent.params: no such file")


def test_a_model_of_another_configuration_is_refused(tmp_path):
    path = tmp_path / "l4.params"
    path.write_bytes(params_bytes(model_entries(small_model(1))))
    other = ig.nets.get_network("resnet_igc", depth=8, primary_partition=2, secondary_partition=4, rng=0)
    err = _expect_error(other, path, r"arrays do not fit .* another configuration")
    assert "g0_conv_weight (4, 3, 3, 3) in the file, (8, 3, 3, 3) in the model" in str(err)
    deeper = ig.nets.get_network("resnet_igc", depth=14, primary_partition=2, secondary_partition=2, rng=0)
    err = _expect_error(deeper, path, "missing")
    assert "g1_b2_p2_two1_conv1_weight" in str(err)


def test_strict_names_and_arg_aux(tmp_path):
    model = small_model(0)
    entries = model_entries(small_model(1))
    path = tmp_path / "m.params"
    path.write_bytes(params_bytes(entries[1:] + [("arg:extra_weight", np.zeros(3, np.float32))]))
    err = _expect_error(model, path, "1 missing .*1 unexpected")
    assert entries[0][0][4:] in str(err) and "extra_weight" in str(err)
    # strict=False loads the common names and leaves the missing one as it was
    first = model.state_dict()[entries[0][0][4:]].copy()
    mxnet_io.load_params(model, path, strict=False)
    np.testing.assert_array_equal(model.state_dict()[entries[0][0][4:]], first)
    np.testing.assert_array_equal(model.state_dict()[entries[1][0][4:]], entries[1][1])
    # a BN statistic stored as a learned parameter
    swapped = [(("arg:" + n[4:]) if n.startswith("aux:") else n, a) for n, a in entries]
    path.write_bytes(params_bytes(swapped))
    _expect_error(small_model(0), path, "stored as 'arg:' but it is a BN statistic")


def test_integer_weights_refused(tmp_path):
    path = tmp_path / "int.params"
    path.write_bytes(params_bytes(model_entries(small_model(1), np.int32)))
    _expect_error(small_model(0), path, "int32; weights must be floating point")


# ---- the symbol graphs --------------------------------------------------------------------------
@needs_graphs
@pytest.mark.parametrize("name", list(ig.nets.IMAGENET_GRAPHS))
def test_identify_graph_names_each_released_model(name):
    assert identify_graph(SYMBOLS / ig.nets.IMAGENET_GRAPHS[name]) == name


@needs_graphs
def test_load_checkpoint_from_a_prefix_like_mxnet(tmp_path):
    prefix = tmp_path / "resnet_gcwf_noshare_imagenet_d18b100"
    (tmp_path / f"{prefix.name}-symbol.json").write_bytes((SYMBOLS / f"{prefix.name}.json").read_bytes())
    src = ig.nets.imagenet_model("igc_l100m2", rng=4)
    mxnet_io.save_params(src, f"{prefix}-0120.params")
    model, name = mxnet_io.load_mxnet_checkpoint(prefix, 120)
    assert name == "igc_l100m2"
    assert_same_state(model, src)
    with pytest.raises(FileNotFoundError, match="-0007.params does not exist"):
        mxnet_io.load_mxnet_checkpoint(prefix, 7)


def _conv_graph(tmp_path, filters):
    nodes = [{"op": "null", "name": "data", "inputs": []},
             {"op": "null", "name": "g0_weight", "inputs": []},
             {"op": "Convolution", "name": "g0", "inputs": [[0, 0], [1, 0]],
              "attr": {"kernel": "(7,7)", "num_filter": str(filters), "stride": "(2,2)", "pad": "(3,3)",
                       "no_bias": "True"}},
             {"op": "null", "name": "fc_score_weight", "inputs": []},
             {"op": "null", "name": "fc_score_bias", "inputs": []},
             {"op": "FullyConnected", "name": "fc_score", "inputs": [[2, 0], [3, 0], [4, 0]],
              "attr": {"num_hidden": "10"}}]
    path = tmp_path / "net-symbol.json"
    path.write_text(json.dumps({"nodes": nodes, "arg_nodes": [0, 1, 3, 4], "heads": [[5, 0]]}))
    return path


def test_identify_graph_refuses_other_graphs(tmp_path):
    with pytest.raises(UnknownGraphError, match="not one of the released ImageNet graphs"):
        identify_graph(_conv_graph(tmp_path, 32))
    with pytest.raises(UnknownGraphError, match="stem is that of 'resnet18_c64'.*missing"):
        identify_graph(_conv_graph(tmp_path, 64))


# ---- RecordIO -----------------------------------------------------------------------------------
MAGIC = struct.pack("<I", 0xCED7230A)


def record_bytes(payload):
    """dmlc's writer: split at each 4-aligned occurrence of the magic (dropping it), flags 1/2/3."""
    cuts, start = [], 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i:i + 4] == MAGIC:
            cuts.append((start, i))
            start = i + 4
    parts = cuts + [(start, len(payload))]
    out = b""
    for k, (a, b) in enumerate(parts):
        flag = 0 if len(parts) == 1 else 1 if k == 0 else 3 if k == len(parts) - 1 else 2
        out += MAGIC + struct.pack("<I", flag << 29 | (b - a)) + payload[a:b] + b"\0" * (-(b - a) % 4)
    return out


def image_record(label, body, rid=0):
    if np.ndim(label):
        return struct.pack("<IfQQ", len(label), 0.0, rid, 0) + np.asarray(label, "<f4").tobytes() + body
    return struct.pack("<IfQQ", 0, label, rid, 0) + body


def write_rec(tmp_path, payloads, name="data"):
    rec, idx = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    data, lines = b"", []
    for k, p in enumerate(payloads):
        lines.append(f"{k}\t{len(data)}\n")
        data += record_bytes(p)
    rec.write_bytes(data)
    idx.write_text("".join(lines))
    return rec, idx


BODIES = [b"plain jpeg bytes", b"ab" + b"cd" + MAGIC + b"efgh" + MAGIC + MAGIC + b"xyz", b"", b"z" * 9]
LABELS = [3.0, 7.0, [1.0, 2.5, 4.0], 0.0]


def test_recordio_single_multipart_and_vector_labels(tmp_path):
    bodies, labels = BODIES, LABELS
    payloads = [image_record(l, b, k) for k, (l, b) in enumerate(zip(labels, bodies))]
    # the multi-part record really is split: the header is 24 bytes, so b'abcd' + MAGIC is aligned
    assert record_bytes(payloads[1]).count(MAGIC) == 4
    rec, idx = write_rec(tmp_path, payloads)
    for r in (RecordIO(rec, idx), RecordIO(rec)):
        assert len(r) == 4
        for k in (2, 0, 3, 1):  # random access
            label, body = r[k]
            assert body == bodies[k]
            np.testing.assert_array_equal(label, np.float32(labels[k]))
        assert [b for _, b in r] == bodies  # sequential
        assert r.read_raw(1) == payloads[1]
    assert isinstance(RecordIO(rec, idx)[2][0], np.ndarray) and RecordIO(rec, idx)[2][0].dtype == np.float32


@given(st.lists(st.lists(st.sampled_from([b"a", b"bc", b"defg", MAGIC, MAGIC[:2], MAGIC[1:]]), max_size=12),
                min_size=1, max_size=5))
def test_recordio_reads_back_any_payload(tmp_path_factory, pieces):
    """Payloads with the magic at aligned and unaligned places, several in a row, at the start
    and at the end: every record comes back whole, by index and sequentially."""
    payloads = [b"".join(p) for p in pieces]
    rec, idx = write_rec(tmp_path_factory.mktemp("rec"), payloads)
    for r in (RecordIO(rec, idx), RecordIO(rec)):  # through the index, and by walking the headers
        assert len(r) == len(payloads)
        assert [r.read_raw(i) for i in range(len(r))] == payloads


def test_recordio_corruption_names_file_and_offset(tmp_path):
    payloads = [image_record(1.0, b"x" * 10), image_record(2.0, b"y" * 30)]
    rec, idx = write_rec(tmp_path, payloads)
    good = rec.read_bytes()
    second = len(record_bytes(payloads[0]))
    rec.write_bytes(good[:second] + b"\x00\x11\x22\x33" + good[second + 4:])
    with pytest.raises(MXNetFormatError, match=rf"data.rec: at byte {second}: bad record magic"):
        RecordIO(rec, idx)[1]
    with pytest.raises(MXNetFormatError, match="bad record magic"):
        list(RecordIO(rec))
    rec.write_bytes(good[:-8])
    with pytest.raises(MXNetFormatError, match=rf"at byte {second}: truncated record"):
        RecordIO(rec, idx)[1]
    rec.write_bytes(good[:second + 5])
    with pytest.raises(MXNetFormatError, match="truncated record header"):
        len(RecordIO(rec))
    rec.write_bytes(good)
    idx.write_text(f"0\t0\n1\t{len(good) + 40}\n")
    with pytest.raises(MXNetFormatError, match="offset .* is outside"):
        RecordIO(rec, idx)
    with pytest.raises(IndexError, match="out of range"):
        RecordIO(rec)[5]


# ---- files written by MXNet itself ---------------------------------------------------------------
# Made once with MXNet 1.9.1 (pip install mxnet==1.9.1 in a separate venv; igc_np never imports it):
#   mx.nd.save('mxdtypes.params', {'arg:' + t: mx.nd.array(np.arange(6).reshape(2, 3), dtype=t)
#                                   for t in ['float32', 'float64', 'float16', 'uint8', 'int32', 'int8', 'int64']})
#   mx.npx.set_np(); mx.npx.save('mxnp.params', {'arg:s': mx.np.array(2.5), 'arg:v': mx.np.arange(4).reshape(2, 2)})
#   MXIndexedRecordIO('t.idx', 't.rec', 'w').write_idx(k, mx.recordio.pack(IRHeader(0, LABELS[k], k, 0), BODIES[k]))
# (the same session checked that mx.nd.load reads save_params's file of IGC-L100M2, value for value,
# and that mx.nd.save of that state writes the very same bytes)
MX_DTYPES = bytes.fromhex(
    "120100000000000000000000000000000700000000000000c9fa93f90000000002000000020000000000000003000000"
    "00000000010000000000000000000000000000000000803f0000004000004040000080400000a040c9fa93f900000000"
    "02000000020000000000000003000000000000000100000000000000010000000000000000000000000000000000f03f"
    "0000000000000040000000000000084000000000000010400000000000001440c9fa93f9000000000200000002000000"
    "0000000003000000000000000100000000000000020000000000003c0040004200440045c9fa93f90000000002000000"
    "02000000000000000300000000000000010000000000000003000000000102030405c9fa93f900000000020000000200"
    "000000000000030000000000000001000000000000000400000000000000010000000200000003000000040000000500"
    "0000c9fa93f9000000000200000002000000000000000300000000000000010000000000000005000000000102030405"
    "c9fa93f90000000002000000020000000000000003000000000000000100000000000000060000000000000000000000"
    "010000000000000002000000000000000300000000000000040000000000000005000000000000000700000000000000"
    "0b000000000000006172673a666c6f617433320b000000000000006172673a666c6f617436340b000000000000006172"
    "673a666c6f6174313609000000000000006172673a75696e743809000000000000006172673a696e7433320800000000"
    "0000006172673a696e743809000000000000006172673a696e743634")
MX_NP_SHAPES = bytes.fromhex(
    "120100000000000000000000000000000200000000000000cafa93f90000000000000000010000000000000000000000"
    "00002040cafa93f900000000020000000200000000000000020000000000000001000000000000000000000000000000"
    "0000803f0000004000004040020000000000000005000000000000006172673a7305000000000000006172673a76")
MX_REC = bytes.fromhex(
    "0a23d7ce28000000000000000000404000000000000000000000000000000000706c61696e206a706567206279746573"
    "0a23d7ce1c000020000000000000e04001000000000000000000000000000000616263640a23d7ce0400004065666768"
    "0a23d7ce000000400a23d7ce0300006078797a000a23d7ce240000000300000000000000020000000000000000000000"
    "000000000000803f00002040000080400a23d7ce21000000000000000000000003000000000000000000000000000000"
    "7a7a7a7a7a7a7a7a7a000000")


def test_files_written_by_mxnet(tmp_path):
    path = tmp_path / "mxdtypes.params"
    path.write_bytes(MX_DTYPES)
    arrays, names = mxnet_io.read_ndarray_list(path)
    kinds = ["float32", "float64", "float16", "uint8", "int32", "int8", "int64"]
    assert names == [f"arg:{k}" for k in kinds]
    for a, k in zip(arrays, kinds):
        assert a.dtype == np.dtype(k) and a.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert params_bytes(list(zip(names, arrays))) == MX_DTYPES  # the test-side writer is MXNet's format
    path.write_bytes(MX_NP_SHAPES)  # V3 arrays, a 0-d scalar among them
    (s, v), names = mxnet_io.read_ndarray_list(path)
    assert names == ["arg:s", "arg:v"] and s.shape == () and s == 2.5 and v.tolist() == [[0, 1], [2, 3]]
    # RecordIO: MXNet's writer split the record with the magic inside exactly as record_bytes does
    data = b"".join(record_bytes(image_record(l, b, k)) for k, (l, b) in enumerate(zip(LABELS, BODIES)))
    assert data == MX_REC
    rec = tmp_path / "t.rec"
    rec.write_bytes(MX_REC)
    assert [b for _, b in RecordIO(rec)] == BODIES
    np.testing.assert_array_equal(RecordIO(rec)[2][0], np.float32([1.0, 2.5, 4.0]))


# ---- shapes NumPy cannot represent, FIFOs and devices (issue 18) ---------------------------------
def _huge_shape_params(shape):
    """A .params holding one float32 array header of ``shape`` (0 elements) and no data."""
    head = struct.pack("<IiI", 0xF993FAC9, 0, len(shape)) + b"".join(struct.pack("<q", d) for d in shape)
    body = head + struct.pack("<iii", 1, 0, 0)
    name = b"arg:w"
    return (struct.pack("<QQQ", 0x112, 0, 1) + body + struct.pack("<QQ", 1, len(name)) + name)


@pytest.mark.parametrize("shape", [(2 ** 62, 2 ** 62, 0), (2 ** 63 - 1, 0), (0, 2 ** 40, 2 ** 40)])
def test_a_zero_size_shape_numpy_cannot_represent_is_a_format_error(tmp_path, shape):
    path = tmp_path / "huge.params"
    path.write_bytes(_huge_shape_params(shape))
    with pytest.raises(MXNetFormatError, match=rf"huge.params: at byte 24: array 0: shape .* is impossible"):
        mxnet_io.read_ndarray_list(path)


def test_an_empty_array_of_a_representable_shape_still_reads(tmp_path):
    path = tmp_path / "empty.params"
    path.write_bytes(_huge_shape_params((0, 5)))
    arrays, names = mxnet_io.read_ndarray_list(path)
    assert arrays[0].shape == (0, 5) and names == ["arg:w"]


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
def test_fifos_and_devices_are_refused_without_blocking(tmp_path, kind):
    """A FIFO (no writer: reading would wait forever) or /dev/zero (never ends) where a file is
    read: .params, .rec, .idx, a -symbol.json, an igc_np .npz."""
    import signal

    def make(name):
        path = tmp_path / name
        os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
        return path
    what = "FIFO" if kind == "fifo" else "character device"

    def expired(*_):
        raise TimeoutError("blocked")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    try:
        with pytest.raises(MXNetFormatError, match=rf"weights file .*w.params: is a {what}"):
            mxnet_io.load_params(small_model(0), make("w.params"))
        with pytest.raises(MXNetFormatError, match=rf"RecordIO file .*d.rec: is a {what}"):
            RecordIO(make("d.rec"))
        (tmp_path / "e.rec").write_bytes(b"")
        with pytest.raises(MXNetFormatError, match=rf"RecordIO index .*e.idx: is a {what}"):
            RecordIO(tmp_path / "e.rec", make("e.idx"))
        with pytest.raises(ValueError, match=rf"symbol file .*s-symbol.json: is a {what}"):
            identify_graph(make("s-symbol.json"))
        with pytest.raises(ig.serialization.SerializationError, match=rf"m.npz: is a {what}"):
            ig.load(make("m.npz"))
        make("r-symbol.json")
        (tmp_path / "r-0001.params").write_bytes(b"")
        with pytest.raises(ValueError, match=rf"r-symbol.json: is a {what}"):
            mxnet_io.load_mxnet_checkpoint(tmp_path / "r", 1)  # not "does not exist"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
