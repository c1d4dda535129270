"""slcodec.pipeline.inputs: reading label files (.pt, .npy, .npz, .h5), validating them and telling
logits from probabilities."""
import os

import h5py
import numpy as np
import pytest
import torch

from slcodec.errors import InputError, SlcodecError
from slcodec.pipeline.inputs import as_source, detect_kind, load_array, load_labels

SHAPES = [(12, 16), (3, 5, 20)]


def make_logits(shape, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).normal(size=shape) * 3).astype(dtype)


def make_probs(shape, seed=0, dtype=np.float32):
    x = np.random.default_rng(seed).normal(size=shape) * 3
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(dtype)


def truncated_copy(src, dst):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[:len(data) // 2])
    return dst


# --------------------------------------------------------------------------- .pt
@pytest.mark.parametrize("shape", SHAPES)
def test_pt_plain_tensor(tmp_path, shape):
    x = make_logits(shape)
    path = str(tmp_path / "labels.pt")
    torch.save(torch.from_numpy(x), path)
    src = load_labels(path)
    assert src.shape == shape
    assert src.array.dtype == np.float32
    np.testing.assert_array_equal(src.array, x)
    assert src.kind == "logits"
    assert src.path == path
    assert src.classes == shape[-1]
    assert src.count == int(np.prod(shape[:-1]))
    assert src.rows().shape == (src.count, shape[-1])
    np.testing.assert_array_equal(src.rows(), x.reshape(-1, shape[-1]))


def test_pt_dict_with_logits_entry(tmp_path):
    x = make_logits((12, 16))
    path = str(tmp_path / "labels.pt")
    torch.save({"logits": torch.from_numpy(x), "epoch": torch.tensor(3)}, path)
    src = load_labels(path)
    np.testing.assert_array_equal(src.array, x)
    assert src.kind == "logits"
    assert "'logits'" in src.kind_reason


def test_pt_dict_with_probs_entry(tmp_path):
    p = make_probs((3, 5, 20))
    path = str(tmp_path / "labels.pt")
    torch.save({"probs": torch.from_numpy(p)}, path)
    src = load_labels(path)
    np.testing.assert_array_equal(src.array, p)
    assert src.kind == "probs"
    assert src.shape == (3, 5, 20)


def test_pt_dict_named_key(tmp_path):
    x = make_logits((12, 16), seed=1)
    other = make_logits((12, 16), seed=2)
    path = str(tmp_path / "labels.pt")
    torch.save({"teacher": torch.from_numpy(x), "student": torch.from_numpy(other)}, path)
    np.testing.assert_array_equal(load_labels(path + ":teacher").array, x)
    np.testing.assert_array_equal(load_labels(path + ":student").array, other)
    with pytest.raises(InputError, match="several entries"):
        load_labels(path)
    with pytest.raises(InputError, match="no entry 'nope'"):
        load_labels(path + ":nope")


def test_pt_bfloat16_is_widened_to_float32(tmp_path):
    t = torch.from_numpy(make_logits((12, 16))).bfloat16()
    path = str(tmp_path / "labels.pt")
    torch.save(t, path)
    src = load_labels(path)
    assert src.array.dtype == np.float32
    np.testing.assert_array_equal(src.array, t.float().numpy())
    assert src.kind == "logits"


def test_pt_float16_kept(tmp_path):
    x = make_logits((12, 16), dtype=np.float16)
    path = str(tmp_path / "labels.pt")
    torch.save(torch.from_numpy(x), path)
    src = load_labels(path)
    assert src.array.dtype == np.float16
    np.testing.assert_array_equal(src.array, x)


# --------------------------------------------------------------------------- .npy / .npz
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npy(tmp_path, shape, dtype):
    x = make_logits(shape, dtype=dtype)
    path = str(tmp_path / "labels.npy")
    np.save(path, x)
    src = load_labels(path)
    assert src.shape == shape
    assert src.array.dtype == dtype
    np.testing.assert_array_equal(src.array, x)
    assert src.kind == "logits"


def test_npz_single_unnamed_array(tmp_path):
    x = make_logits((12, 16))
    path = str(tmp_path / "labels.npz")
    np.savez(path, x)  # stored as arr_0
    src = load_labels(path)
    np.testing.assert_array_equal(src.array, x)
    assert src.kind == "logits"
    assert src.path == path


def test_npz_named_logits_preferred(tmp_path):
    x = make_logits((3, 5, 20))
    path = str(tmp_path / "labels.npz")
    np.savez(path, other=make_logits((3, 5, 20), seed=9), logits=x)
    src = load_labels(path)
    np.testing.assert_array_equal(src.array, x)
    assert src.kind == "logits"
    assert "'logits'" in src.kind_reason


def test_npz_named_probs(tmp_path):
    p = make_probs((12, 16))
    path = str(tmp_path / "labels.npz")
    np.savez(path, probs=p)
    src = load_labels(path)
    np.testing.assert_array_equal(src.array, p)
    assert src.kind == "probs"


def test_npz_key_spec(tmp_path):
    a, b = make_logits((12, 16), seed=1), make_logits((12, 16), seed=2)
    path = str(tmp_path / "labels.npz")
    np.savez(path, a=a, b=b)
    np.testing.assert_array_equal(load_labels(path + ":b").array, b)
    np.testing.assert_array_equal(load_labels(path + ":a").array, a)
    with pytest.raises(InputError) as exc:
        load_labels(path)
    assert path in str(exc.value) and "several entries" in str(exc.value)
    with pytest.raises(InputError, match="no entry 'c'"):
        load_labels(path + ":c")


# --------------------------------------------------------------------------- .h5
def test_h5_named_dataset(tmp_path):
    a, b = make_logits((12, 16), seed=1), make_logits((12, 16), seed=2)
    path = str(tmp_path / "labels.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("teacher_a", data=a)
        f.create_dataset("teacher_b", data=b)
    src = load_labels(path + ":teacher_b")
    np.testing.assert_array_equal(src.array, b)
    assert src.path == path
    np.testing.assert_array_equal(load_labels(path + ":teacher_a").array, a)
    with pytest.raises(InputError) as exc:
        load_labels(path)
    assert path in str(exc.value) and "teacher_a" in str(exc.value)
    with pytest.raises(InputError, match="no dataset 'missing'"):
        load_labels(path + ":missing")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_h5_single_dataset_auto_picked(tmp_path, shape, compression):
    x = make_logits(shape)
    path = str(tmp_path / "labels.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("whatever", data=x, compression=compression)
    src = load_labels(path)
    assert src.shape == shape
    np.testing.assert_array_equal(np.asarray(src.array), x)
    assert src.kind == "logits"


def test_h5_nested_group_path(tmp_path):
    p = make_probs((3, 5, 20))
    path = str(tmp_path / "labels.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("run1/teacher/probs", data=p)
        f.create_dataset("run1/meta", data=np.arange(4.0))
    src = load_labels(path + ":run1/teacher/probs")
    np.testing.assert_array_equal(np.asarray(src.array), p)
    assert src.kind == "probs"  # named by the leaf of the dataset path
    assert src.shape == (3, 5, 20)


def test_h5_logits_entry_preferred_like_other_formats(tmp_path):
    # .pt and .npz files holding both 'logits' and 'probs' are read as their 'logits' entry;
    # an .h5 file with the same two datasets must be read the same way.
    x = make_logits((12, 16))
    p = make_probs((12, 16), seed=5)
    npz = str(tmp_path / "both.npz")
    np.savez(npz, logits=x, probs=p)
    pt = str(tmp_path / "both.pt")
    torch.save({"logits": torch.from_numpy(x), "probs": torch.from_numpy(p)}, pt)
    h5 = str(tmp_path / "both.h5")
    with h5py.File(h5, "w") as f:
        f.create_dataset("logits", data=x)
        f.create_dataset("probs", data=p)
    for path in (npz, pt, h5):
        src = load_labels(path)
        assert src.kind == "logits", path
        np.testing.assert_array_equal(np.asarray(src.array), x)


# --------------------------------------------------------------------------- logits vs probs
def test_softmax_rows_detected_as_probs():
    src = as_source(make_probs((12, 16)))
    assert src.kind == "probs"
    assert src.kind_reason.startswith("detected")


def test_fp16_softmax_rows_detected_as_probs():
    p = make_probs((3, 5, 20), dtype=np.float16)
    assert np.abs(p.astype(np.float64).sum(-1) - 1).max() > 1e-4  # fp16 rounding exceeds the fp32 tolerance
    assert as_source(p).kind == "probs"


def test_random_normal_detected_as_logits():
    src = as_source(make_logits((12, 16)))
    assert src.kind == "logits"
    assert "negative" in src.kind_reason


def test_nonnegative_rows_not_summing_to_one_are_logits():
    x = np.abs(make_logits((12, 16))) + 0.5
    kind, reason = detect_kind(x)
    assert kind == "logits"
    assert "sum to 1" in reason


def test_forced_logits_on_probs_data():
    src = as_source(make_probs((12, 16)), input_kind="logits")
    assert src.kind == "logits"
    assert src.kind_reason == "forced by --input-kind"


def test_forced_probs_on_probs_data():
    src = as_source(make_probs((12, 16)), input_kind="probs")
    assert src.kind == "probs"
    assert src.kind_reason == "forced by --input-kind"


def test_forced_probs_in_load_labels(tmp_path):
    path = str(tmp_path / "p.npy")
    np.save(path, make_probs((3, 5, 20)))
    assert load_labels(path, input_kind="probs").kind == "probs"
    assert load_labels(path, input_kind="logits").kind == "logits"
    assert load_labels(path).kind == "probs"


def test_forcing_probs_on_negative_data_raises(tmp_path):
    path = str(tmp_path / "x.npy")
    np.save(path, make_logits((12, 16)))
    with pytest.raises(InputError) as exc:
        load_labels(path, input_kind="probs")
    assert path in str(exc.value) and "negative" in str(exc.value)


def test_forcing_probs_on_unnormalised_data_raises():
    with pytest.raises(InputError, match="do not sum to 1"):
        as_source(np.abs(make_logits((12, 16))), input_kind="probs")


def test_probs_entry_that_is_not_probs_raises(tmp_path):
    path = str(tmp_path / "x.pt")
    torch.save({"probs": torch.from_numpy(make_logits((12, 16)))}, path)
    with pytest.raises(InputError) as exc:
        load_labels(path)
    assert path in str(exc.value)


def test_unknown_input_kind_raises():
    with pytest.raises(InputError, match="input kind"):
        as_source(make_logits((12, 16)), input_kind="logprobs")


def test_as_source_accepts_torch_tensors():
    t = torch.from_numpy(make_logits((3, 5, 20))).bfloat16()
    src = as_source(t)
    assert src.array.dtype == np.float32
    assert src.shape == (3, 5, 20)
    np.testing.assert_array_equal(src.array, t.float().numpy())


# --------------------------------------------------------------------------- errors
def _npy_header(path, shape, descr="<f4", fortran=False, data=b""):
    """A .npy file (a path or a file object) with any header (numpy writes what it is given)
    followed by ``data``."""
    from numpy.lib import format as npy_format
    if not isinstance(path, str):
        npy_format.write_array_header_1_0(path, {"descr": descr, "fortran_order": fortran, "shape": shape})
        path.write(data)
        return
    with open(path, "wb") as f:
        _npy_header(f, shape, descr, fortran, data)


def _save_npy(arr):
    def write(path):
        np.save(path, arr)
    return write


def _save_pt(obj):
    def write(path):
        torch.save(obj, path)
    return write


def _nan():
    x = make_logits((12, 16))
    x[7, 3] = np.nan
    return x


def _inf():
    x = make_logits((3, 5, 20))
    x[1, 2, 0] = -np.inf
    return x


def _truncated_npy(path):
    full = path + ".full.npy"
    np.save(full, make_logits((12, 16)))
    truncated_copy(full, path)


def _truncated_pt(path):
    full = path + ".full.pt"
    torch.save(torch.from_numpy(make_logits((12, 16))), full)
    truncated_copy(full, path)


def _truncated_npz(path):
    full = path + ".full.npz"
    np.savez(full, logits=make_logits((12, 16)))
    truncated_copy(full, path)


def _truncated_h5(path):
    full = path + ".full.h5"
    with h5py.File(full, "w") as f:
        f.create_dataset("logits", data=make_logits((12, 16)))
    truncated_copy(full, path)


ERROR_CASES = [
    ("nan.npy", _save_npy(_nan()), "NaN"),
    ("inf.npy", _save_npy(_inf()), "Inf"),
    ("nan.pt", _save_pt(torch.from_numpy(_nan())), "NaN"),
    ("rank1.npy", _save_npy(make_logits((16,))), "shape"),
    ("rank4.npy", _save_npy(make_logits((2, 3, 4, 5))), "shape"),
    ("c1.npy", _save_npy(make_logits((12, 1))), "class"),
    ("empty.npy", _save_npy(np.zeros((0, 16), np.float32)), "empty"),
    ("empty3.npy", _save_npy(np.zeros((3, 0, 20), np.float32)), "empty"),
    ("int.npy", _save_npy(np.arange(12 * 16).reshape(12, 16)), "int64"),
    ("int.pt", _save_pt(torch.arange(12 * 16).reshape(12, 16)), "int64"),
    ("bool.npy", _save_npy(np.ones((12, 16), dtype=bool)), "bool"),
    ("trunc.npy", _truncated_npy, "truncated"),
    ("trunc.pt", _truncated_pt, "torch"),
    ("trunc.npz", _truncated_npz, ""),
    ("trunc.h5", _truncated_h5, "cannot read"),
    ("dictint.pt", _save_pt({"a": 1}), "holds a int"),
    ("list.pt", _save_pt([torch.zeros(3, 4)]), "holds a list"),
    ("objects.npz", lambda p: np.savez(p, a=np.array([{"x": 1}], dtype=object)), "Python objects"),
    ("unknown.txt", lambda p: open(p, "w").write("1 2 3\n"), "unknown label file type"),
    ("noext", lambda p: open(p, "wb").write(b"\0" * 64), "unknown label file type"),
    ("garbage.pt", lambda p: open(p, "wb").write(b"definitely not a torch file"), ""),
    ("zero.npy", lambda p: open(p, "wb").write(b""), "not a valid .npy"),
    ("negdim.npy", lambda p: _npy_header(p, (-1, 16)), "negative dimension"),
    ("hugedims.npy", lambda p: _npy_header(p, (2**62, 2**62)), "truncated"),
    ("objects.npy", lambda p: _npy_header(p, (2, 3), descr="|O"), "Python objects"),
    ("badheader.npy", lambda p: open(p, "wb").write(b"\x93NUMPY\x01\x00\x10\x00{'descr': 'x'}"),
     "not a valid .npy"),
]


@pytest.mark.parametrize("name,write,fragment", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_input_raises_input_error_naming_the_file(tmp_path, name, write, fragment):
    path = str(tmp_path / name)
    write(path)
    with pytest.raises(InputError) as exc:
        load_labels(path)
    assert path in str(exc.value)
    assert fragment in str(exc.value)


def test_nan_message_names_the_row(tmp_path):
    path = str(tmp_path / "nan.npy")
    np.save(path, _nan())
    with pytest.raises(InputError, match="row 7 "):
        load_labels(path)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.npy")
    with pytest.raises(InputError) as exc:
        load_labels(path)
    assert path in str(exc.value) and "no such file" in str(exc.value)


def test_missing_file_with_key(tmp_path):
    path = str(tmp_path / "nope.h5")
    with pytest.raises(InputError) as exc:
        load_labels(path + ":logits")
    assert path in str(exc.value) and "no such file" in str(exc.value)


def test_folder(tmp_path):
    folder = tmp_path / "labels.npy"
    folder.mkdir()
    with pytest.raises(InputError) as exc:
        load_labels(str(folder))
    assert str(folder) in str(exc.value) and "folder" in str(exc.value)


def test_input_error_is_an_slcodec_error():
    assert issubclass(InputError, SlcodecError)


# --------------------------------------------------------------------------- pickle payloads
class _OpenPayload:
    """Unpickling this object calls open(marker, 'w') - it creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _ExecPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_OpenPayload, _ExecPayload])
@pytest.mark.parametrize("wrap", ["bare", "dict"])
def test_pickle_payload_is_refused_and_not_run(tmp_path, payload, wrap):
    def build(marker, path):
        obj = payload(str(marker))
        if wrap == "dict":
            obj = {"logits": torch.zeros(3, 4), "extra": obj}
        torch.save(obj, path)

    # The payload is live: an unsafe load runs it (and creates its marker) ...
    control_marker = tmp_path / "control-marker"
    control = str(tmp_path / "control.pt")
    build(control_marker, control)
    torch.load(control, weights_only=False)
    assert control_marker.exists()

    # ... but load_labels refuses it without running it.
    marker = tmp_path / "marker"
    path = str(tmp_path / "payload.pt")
    build(marker, path)
    with pytest.raises(InputError) as exc:
        load_labels(path)
    assert path in str(exc.value)
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["control-marker", "control.pt", "payload.pt"]


def test_load_array_returns_key_kind(tmp_path):
    path = str(tmp_path / "x.npz")
    np.savez(path, probs=make_probs((12, 16)))
    arr, kind = load_array(path)
    assert kind == "probs"
    assert arr.shape == (12, 16)


# --------------------------------------------------------------------------- hostile .npy headers
def _cli(*args):
    import subprocess
    import sys
    env = dict(os.environ)
    env.pop("SLCODEC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "slcodec", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


HOSTILE_NPY = [
    ((-1, 16), b"", "negative dimension"),
    ((-(2**62), 4), b"\0" * 64, "negative dimension"),      # numpy warned on two more lines
    ((-1, 2**62), b"", "negative dimension"),
    ((2**62, 2**62), b"", "truncated"),
    ((2**32, 2**31), b"\0" * 64, "truncated"),              # numpy warned on four more lines
    ((2**63, 2**63, 2**63), b"\0" * 64, "truncated"),
    ((12, 16), b"\0" * 100, "truncated"),
]
HOSTILE_NPY_IDS = ["negative", "negative-huge", "negative-times-huge", "2^62x2^62", "2^32x2^31", "2^63-cubed",
                   "short-data"]


@pytest.mark.parametrize("shape,data,fragment", HOSTILE_NPY, ids=HOSTILE_NPY_IDS)
def test_hostile_npy_header_is_refused_without_a_warning(tmp_path, shape, data, fragment):
    import warnings
    path = str(tmp_path / "x.npy")
    _npy_header(path, shape, data=data)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=fragment) as exc:
            load_labels(path)
    assert str(exc.value).startswith(path + ": ") and "\n" not in str(exc.value)
    assert [str(w.message) for w in seen] == []


@pytest.mark.parametrize("shape,data,fragment", HOSTILE_NPY, ids=HOSTILE_NPY_IDS)
def test_hostile_npy_header_in_an_npz_is_refused_the_same_way(tmp_path, shape, data, fragment):
    import io
    import warnings
    import zipfile
    member = io.BytesIO()
    _npy_header(member, shape, data=data)
    path = str(tmp_path / "x.npz")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("logits.npy", member.getvalue())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=fragment) as exc:
            load_labels(path)
    assert str(exc.value).startswith(path + ":logits: ")
    assert [str(w.message) for w in seen] == []


@pytest.mark.parametrize("shape,data,fragment", [HOSTILE_NPY[1], HOSTILE_NPY[3]], ids=["negative-huge", "2^62x2^62"])
def test_hostile_npy_header_is_one_line_and_exit_2(tmp_path, shape, data, fragment):
    path = tmp_path / "x.npy"
    _npy_header(str(path), shape, data=data)
    r = _cli("encode", path, "-o", tmp_path / "x.vqsl", "--codec", "fp16")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"slcodec: error: {path}: "), r.stderr
    assert fragment in r.stderr and r.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


@pytest.mark.parametrize("fortran", [False, True])
def test_npy_is_memory_mapped_with_its_layout(tmp_path, fortran):
    x = make_logits((3, 5, 20))
    x = np.asfortranarray(x) if fortran else x
    path = str(tmp_path / "x.npy")
    np.save(path, x)
    with open(path, "ab") as f:
        f.write(b"trailing bytes numpy ignores")
    arr, _ = load_array(path)
    assert isinstance(arr, np.memmap) and arr.flags.f_contiguous == fortran
    np.testing.assert_array_equal(arr, x)


# --------------------------------------------------------------------------- HDF5 data kept in other files
def _external_h5(tmp_path, secret):
    path = str(tmp_path / "ext.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("logits", shape=(4, 6), dtype="<f4", external=[(str(secret), 0, 96)])
    return path


def _virtual_h5(tmp_path, secret):
    src = str(tmp_path / "other.h5")
    with h5py.File(src, "w") as f:
        f["data"] = np.frombuffer(secret.read_bytes()[:96], "<f4").reshape(4, 6)
    path = str(tmp_path / "vds.h5")
    with h5py.File(path, "w") as f:
        layout = h5py.VirtualLayout(shape=(4, 6), dtype="<f4")
        layout[:] = h5py.VirtualSource(src, "data", shape=(4, 6))
        f.create_virtual_dataset("logits", layout)
    return path


@pytest.mark.parametrize("make,fragment", [(_external_h5, "external files"), (_virtual_h5, "virtual dataset")],
                         ids=["external-storage", "virtual-dataset"])
def test_h5_data_in_other_files_is_refused(tmp_path, make, fragment):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(24, dtype="<f4").tobytes())  # stands for any file the process can read
    path = make(tmp_path, secret)
    with h5py.File(path, "r") as f:  # the control: h5py reads the other file's bytes through it
        assert np.array_equal(f["logits"][()].reshape(-1), np.arange(24, dtype="<f4"))
    with pytest.raises(InputError, match=fragment) as exc:
        load_labels(path)
    assert path in str(exc.value)
    out = tmp_path / "x.vqsl"
    r = _cli("encode", path, "-o", out, "--codec", "fp32")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and fragment in r.stderr, r.stderr
    assert not out.exists()
