"""slcodec.frameworks.importers and `slcodec import/export`: SRe2L/CDA/LPLD, LPQLD and FKD folders.

Small folders are built with torch.save in each layout; every label and every augmentation
parameter must survive the import exactly (lossless codecs), the export must write back
files equal to the originals, and nothing but tensors, numpy arrays and plain values may
ever be unpickled.
"""
import json
import os
from contextlib import redirect_stdout
import io

import numpy as np
import pytest
import torch

import slcodec
from slcodec import cli
from slcodec.format.container import Container
from slcodec.errors import ConfigError, InputError
from slcodec.frameworks.fields import grid_scale
from slcodec.frameworks.importers import export_folder, import_folder, load_file, read_augment
from slcodec.format.stats import file_stats

C = 10
B = 4
EPOCHS, BATCHES = 2, 3


# --------------------------------------------------------------------------- builders
def _coords_grid(rng, b, size=224, dtype=np.float32):
    # RandomResizedCropWithCoords: [i/H, j/W, h/H, w/W] of integer pixels
    px = rng.integers(0, size + 1, size=(b, 4))
    return (px / size).astype(np.float32).astype(dtype)


def make_sre2l(folder, seed=0, logits_dtype=torch.float16, coords=None, epochs=EPOCHS, batches=BATCHES,
               last_batch=B):
    """SRe2L relabel files; returns the list of originals in (epoch, batch) order."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(epochs):
        for b in range(batches):
            n = last_batch if b == batches - 1 else B
            c = coords(rng, n) if coords else _coords_grid(rng, n)
            flip = torch.from_numpy(rng.random(n) < 0.5)
            mix_index = torch.from_numpy(rng.permutation(n).astype(np.int64))
            lam = float(rng.beta(1.0, 1.0))
            if (e + b) % 2:
                bbox = [np.int64(x) for x in np.sort(rng.integers(0, 224, 4))]  # numpy ints, as rand_bbox makes
            else:
                bbox = None
            logits = torch.from_numpy(rng.normal(size=(n, C)) * 4).to(logits_dtype)
            item = [torch.from_numpy(c), flip, mix_index, lam, bbox, logits]
            d = os.path.join(folder, f"epoch_{e}")
            os.makedirs(d, exist_ok=True)
            torch.save(item, os.path.join(d, f"batch_{b}.tar"))
            out.append(item)
    return out


def make_lpqld(folder, seed=1, k=3):
    rng = np.random.default_rng(seed)
    out = []
    for e in range(EPOCHS):
        for b in range(BATCHES):
            c = torch.from_numpy(_coords_grid(rng, B, dtype=np.float16))
            flip = torch.from_numpy(rng.random(B) < 0.5)
            mix_index = torch.from_numpy(rng.permutation(B).astype(np.uint8))
            lam = float(rng.beta(1.0, 1.0))
            bbox = torch.from_numpy(np.sort(rng.integers(0, 224, 4)).astype(np.uint8)) if b % 2 else None
            full = torch.from_numpy(rng.normal(size=(B, C)) * 4).half()
            values, ids = torch.topk(full.float(), k, dim=1)
            item = [c, flip, mix_index, lam, bbox, values.half(), ids.to(torch.int16)]
            d = os.path.join(folder, f"epoch_{e}")
            os.makedirs(d, exist_ok=True)
            torch.save(item, os.path.join(d, f"batch_{b}.tar"))
            out.append(item)
    return out


def lpqld_dense(item):
    values, ids = item[5].float(), item[6].long()
    dense = values.min(dim=1, keepdim=True).values.expand(-1, C).clone()
    return dense.scatter_(1, ids, values)


def make_fkd(folder, seed=2, images=5, views=6, k=3, as_numpy=True, coords_dtype=np.float32, views_of=None):
    """FKD per-image files (class sub-folders); returns {relative name: (coords, flip, label)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(images):
        n = views_of(i) if views_of else views
        c = _coords_grid(rng, n, dtype=coords_dtype)
        flip = rng.random(n) < 0.5
        ids = np.stack([rng.permutation(C)[:k] for _ in range(n)]).astype(np.float32)
        # FP16-representable probabilities, descending, summing to 0.9 (each above the spread rest)
        probs = np.sort(0.9 * rng.dirichlet(np.full(k, 5.0), size=n), axis=1)[:, ::-1]
        probs = probs.astype(np.float16).astype(np.float32)
        label = np.stack([ids, probs], axis=1)
        if not as_numpy:
            c, flip, label = torch.from_numpy(c), torch.from_numpy(flip), torch.from_numpy(label)
        rel = f"n{i % 2:02d}/img_{i}.tar"
        os.makedirs(os.path.join(folder, os.path.dirname(rel)), exist_ok=True)
        torch.save([c, flip, label], os.path.join(folder, rel))
        out[rel] = (c, flip, label)
    return dict(sorted(out.items()))


def fkd_dense(label):
    label = torch.as_tensor(np.asarray(label))
    ids, probs = label[:, 0].long(), label[:, 1].float()
    rest = (1 - probs.sum(1, keepdim=True)).clamp_min(0) / (C - ids.shape[1])
    return rest.expand(-1, C).clone().scatter_(1, ids, probs)


def np_(x):
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_same(a, b):
    """Equal values, dtype and container type (tensor vs numpy)."""
    assert type(a) is type(b) or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)), (type(a), type(b))
    if a is None:
        return
    if isinstance(a, (torch.Tensor, np.ndarray)):
        assert np_(a).dtype == np_(b).dtype
        np.testing.assert_array_equal(np_(a), np_(b))
    elif isinstance(a, list):
        assert [int(x) for x in a] == [int(x) for x in b]
    else:
        assert a == b


@pytest.fixture(scope="module")
def sre2l_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sre2l")
    return str(d), make_sre2l(str(d))


# --------------------------------------------------------------------------- SRe2L
@pytest.mark.parametrize("codec,dtype", [("fp16", torch.float16), ("fp32", torch.float32), ("fp32", torch.float16)])
def test_sre2l_import_is_exact(tmp_path, codec, dtype):
    folder = str(tmp_path / "labels")
    items = make_sre2l(folder, seed=3, logits_dtype=dtype, last_batch=3)
    out = str(tmp_path / "x.vqsl")
    assert import_folder(folder, out, "sre2l", codec=codec) == out
    n = sum(it[5].shape[0] for it in items)
    with slcodec.open(out) as r:
        assert r.shape == (n, C) and r.source_kind == "logits"
        got = r.decode(None, as_="logits")
        expected = torch.cat([it[5].float() for it in items])
        assert torch.equal(got, expected)  # (epoch, batch, position) order, bit for bit
        record, f = read_augment(r)
    assert record["mode"] == "explicit" and record["layout"] == "sre2l"
    assert record["coords"] == {"coding": "grid", "dtype": "float32"}
    np.testing.assert_array_equal(f["batch"][:, :3], [[e, b, 3 if b == 2 else B] for e in range(2) for b in range(3)])
    np.testing.assert_array_equal(f["coords"], np.concatenate([np_(it[0]) for it in items]))
    assert f["coords"].dtype == np.float32
    np.testing.assert_array_equal(f["flip"], np.concatenate([np_(it[1]) for it in items]))
    np.testing.assert_array_equal(f["mix_index"], np.concatenate([np_(it[2]) for it in items]))
    assert f["mix_lam"].tolist() == [it[3] for it in items]
    for j, it in enumerate(items):
        has_bbox = bool(f["batch"][j, 3] & record["flags"]["mix_bbox"])
        assert has_bbox == (it[4] is not None)
        if has_bbox:
            assert f["mix_bbox"][j].tolist() == [int(v) for v in it[4]]


def test_sre2l_topk_keeps_the_top_classes(tmp_path, sre2l_dir):
    folder, items = sre2l_dir
    out = str(tmp_path / "t.vqsl")
    import_folder(folder, out, "sre2l", codec="topk", k=3)
    with slcodec.open(out) as r:
        probs = r.decode(None)
    ref = torch.softmax(torch.cat([it[5].float() for it in items]), dim=1)
    top_ref = torch.sort(ref, dim=1, descending=True, stable=True)
    top_got = torch.sort(probs, dim=1, descending=True, stable=True)
    assert torch.equal(top_got.indices[:, :3], top_ref.indices[:, :3])
    torch.testing.assert_close(top_got.values[:, :3], top_ref.values[:, :3].half().float(), rtol=0, atol=0)


def test_sre2l_export_writes_the_original_files(tmp_path, sre2l_dir):
    folder, items = sre2l_dir
    out = str(tmp_path / "x.vqsl")
    import_folder(folder, out, "sre2l", codec="fp16")
    back = str(tmp_path / "back")
    assert export_folder(out, back) == back
    assert sorted(os.listdir(back)) == ["epoch_0", "epoch_1"]
    j = 0
    for e in range(EPOCHS):
        assert sorted(os.listdir(os.path.join(back, f"epoch_{e}"))) == [f"batch_{b}.tar" for b in range(BATCHES)]
        for b in range(BATCHES):
            got = torch.load(os.path.join(back, f"epoch_{e}", f"batch_{b}.tar"), weights_only=True)
            orig = items[j]
            j += 1
            assert len(got) == 6
            for k in (0, 1, 2, 5):
                assert_same(got[k], orig[k])
            assert got[3] == orig[3] and type(got[3]) is float
            assert (got[4] is None) == (orig[4] is None)
            if orig[4] is not None:
                assert got[4] == [int(v) for v in orig[4]]
    # and the exported folder imports to the same file contents
    again = str(tmp_path / "again.vqsl")
    import_folder(back, again, "sre2l", codec="fp16")
    with Container.open(out) as a, Container.open(again) as b:
        for name in a.sections:
            if name.startswith(("augment", "streams/")):
                assert bytes(a._payload(a.sections[name])) == bytes(b._payload(b.sections[name])), name


def test_coords_not_on_a_grid_are_stored_raw_and_exact(tmp_path):
    folder = str(tmp_path / "labels")
    items = make_sre2l(folder, coords=lambda rng, n: rng.random((n, 4)).astype(np.float32))
    out = str(tmp_path / "x.vqsl")
    import_folder(folder, out, "sre2l", codec="fp16")
    record, f = read_augment(out)
    assert record["coords"] == {"coding": "raw", "dtype": "float32"}
    np.testing.assert_array_equal(f["coords"], np.concatenate([np_(it[0]) for it in items]))


def test_a_later_batch_off_the_grid_reimports_raw(tmp_path):
    folder = str(tmp_path / "labels")
    calls = []

    def coords(rng, n):
        calls.append(n)
        c = _coords_grid(rng, n)
        if len(calls) == 5:
            c[1, 2] = np.nextafter(np.float32(0.5), np.float32(1))  # 0.5 + 2**-24: on no small grid
        return c
    items = make_sre2l(folder, coords=coords)
    out = str(tmp_path / "x.vqsl")
    logs = []
    import_folder(folder, out, "sre2l", codec="fp16", log=logs.append)
    assert any("raw" in line for line in logs)
    record, f = read_augment(out)
    assert record["coords"]["coding"] == "raw"
    np.testing.assert_array_equal(f["coords"], np.concatenate([np_(it[0]) for it in items]))
    assert sorted(os.listdir(tmp_path)) == ["labels", "x.vqsl"]


def test_grid_scale():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float16):
        assert grid_scale(_coords_grid(rng, 256, dtype=dtype)) == 224
    assert grid_scale(rng.random((8, 4)).astype(np.float32)) is None
    assert grid_scale(np.array([[0.5, 0.25, 1.0, 0.0]], np.float32)) == 4
    assert grid_scale(np.array([[-0.5, 0.25, 1.0, 0.0]], np.float32)) is None
    assert grid_scale(np.array([[np.nan, 0.25, 1.0, 0.0]], np.float32)) is None


def test_stats_count_the_augmentation_records_exactly(tmp_path, sre2l_dir):
    folder, items = sre2l_dir
    out = str(tmp_path / "x.vqsl")
    import_folder(folder, out, "sre2l", codec="fp16")
    with Container.open(out) as c:
        s = file_stats(c)
        aug_bytes = 0
        names = []
        for sec in c.header["sections"]:
            if sec["name"] == "augment" or sec["name"].startswith("augment/"):
                names.append(sec["name"])
                aug_bytes += -(-(sec["offset"] + sec["length"]) // 64) * 64 - sec["offset"]
    assert sorted(names) == ["augment", "augment/batch", "augment/coords", "augment/flip", "augment/mix_bbox",
                             "augment/mix_index", "augment/mix_lam"]
    assert s["groups"]["augmentation"]["bytes"] == aug_bytes
    assert s["groups"]["augmentation"]["bits_per_label"] == aug_bytes * 8 / s["labels"]
    assert {e["name"]: e["group"] for e in s["sections"]}["augment/coords"] == "augmentation"
    assert sum(e["bytes"] for e in s["sections"]) == s["file_bytes"]
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli.main(["stats", out, "--json"]) == 0
    assert json.loads(buf.getvalue())["groups"]["augmentation"]["bytes"] == aug_bytes
    assert cli.main(["verify", out]) == 0


# --------------------------------------------------------------------------- LPQLD
def test_lpqld_import_refills_and_is_exact(tmp_path):
    folder = str(tmp_path / "labels")
    items = make_lpqld(folder)
    out = str(tmp_path / "x.vqsl")
    with pytest.raises(ConfigError, match="classes"):
        import_folder(folder, out, "lpqld", codec="fp16")
    import_folder(folder, out, "lpqld", codec="fp16", classes=C)
    with slcodec.open(out) as r:
        got = r.decode(None, as_="logits")
        record, f = read_augment(r)
    assert torch.equal(got, torch.cat([lpqld_dense(it) for it in items]))
    assert record["layout"] == "lpqld" and record["coords"] == {"coding": "grid", "dtype": "float16"}
    assert record["source"]["k"] == 3 and record["source"]["topk_indices"] == "torch:int16"
    np.testing.assert_array_equal(f["coords"], np.concatenate([np_(it[0]) for it in items]))
    assert f["coords"].dtype == np.float16
    np.testing.assert_array_equal(f["mix_index"], np.concatenate([np_(it[2]) for it in items]))
    for j, it in enumerate(items):
        if it[4] is not None:
            assert f["mix_bbox"][j].tolist() == it[4].tolist()
    # the stored top-k values come back at their indices
    for j, it in enumerate(items):
        rows = got[j * B:(j + 1) * B]
        assert torch.equal(rows.gather(1, it[6].long()), it[5].float())
    # exported as SRe2L files: dense FP16 logits, the original parameter types
    back = str(tmp_path / "back")
    export_folder(out, back)
    first = torch.load(os.path.join(back, "epoch_0", "batch_1.tar"), weights_only=True)
    assert_same(first[0], items[1][0])
    assert_same(first[2], items[1][2])
    assert_same(first[4], items[1][4])
    assert torch.equal(first[5], lpqld_dense(items[1]).half())


def test_lpqld_bad_index_is_refused(tmp_path):
    folder = str(tmp_path / "labels")
    make_lpqld(folder)
    with pytest.raises(InputError, match="top-k class index"):
        import_folder(folder, str(tmp_path / "x.vqsl"), "lpqld", codec="fp16", classes=5)
    assert os.listdir(tmp_path) == ["labels"]


# --------------------------------------------------------------------------- FKD
@pytest.mark.parametrize("as_numpy,coords_dtype", [(True, np.float32), (False, np.float16)])
def test_fkd_import_topk_is_exact_and_exports_back(tmp_path, as_numpy, coords_dtype):
    folder = str(tmp_path / "fkd")
    files = make_fkd(folder, as_numpy=as_numpy, coords_dtype=coords_dtype)
    out = str(tmp_path / "x.vqsl")
    import_folder(folder, out, "fkd", codec="topk", k=3, classes=C)
    with slcodec.open(out) as r:
        assert r.shape == (5, 6, C) and r.source_kind == "probs"
        probs = r.decode(None)
        record, f = read_augment(r)
    assert f["files"] == list(files)
    for i, (c, flip, label) in enumerate(files.values()):
        torch.testing.assert_close(probs[i], fkd_dense(label), atol=1e-7, rtol=0)  # the rest: sum of FP16 values
        top = torch.sort(probs[i], dim=1, descending=True, stable=True)
        lab = np_(label)
        assert torch.equal(top.indices[:, :3], torch.from_numpy(lab[:, 0].astype(np.int64)))
        assert torch.equal(top.values[:, :3], torch.from_numpy(lab[:, 1]))
        np.testing.assert_array_equal(f["coords"][i * 6:(i + 1) * 6], np_(c))
        np.testing.assert_array_equal(f["flip"][i * 6:(i + 1) * 6], np_(flip))
    back = str(tmp_path / "back")
    export_folder(out, back)
    for rel, orig in files.items():
        got = load_file(os.path.join(back, rel))
        assert isinstance(got, list) and len(got) == 3
        for a, b in zip(got, orig):
            assert_same(a, b)
    again = str(tmp_path / "again.vqsl")
    import_folder(back, again, "fkd", codec="topk", k=3, classes=C)
    with Container.open(out) as a, Container.open(again) as b:
        for name in a.sections:
            if name.startswith(("augment", "streams/")):
                assert bytes(a._payload(a.sections[name])) == bytes(b._payload(b.sections[name])), name


def test_fkd_fp32_keeps_dense_labels_and_uneven_views(tmp_path):
    folder = str(tmp_path / "fkd")
    files = make_fkd(folder, views_of=lambda i: 3 + i)
    out = str(tmp_path / "x.vqsl")
    import_folder(folder, out, "fkd", codec="fp32", classes=C)
    with slcodec.open(out) as r:
        assert r.shape == (sum(3 + i for i in range(5)), C)
        got = r.decode(None)
        _, f = read_augment(r)
    assert torch.equal(got, torch.cat([fkd_dense(v[2]) for v in files.values()]))
    assert f["image"][:, 0].tolist() == [len(v[1]) for v in files.values()] == [3, 5, 7, 4, 6]  # sorted names


def test_fkd_dict_form(tmp_path):
    folder = str(tmp_path / "fkd")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    label = np.stack([np.tile(np.arange(2, dtype=np.float32), (4, 1)), np.full((4, 2), 0.25, np.float32)], axis=1)
    item = {"coords": _coords_grid(rng, 4), "flip": np.zeros(4, bool), "label": label}
    torch.save(item, os.path.join(folder, "a.pth"))
    out = str(tmp_path / "x.vqsl")
    import_folder(folder, out, "fkd", codec="fp32", classes=C)
    back = str(tmp_path / "back")
    export_folder(out, back, "fkd")
    got = load_file(os.path.join(back, "a.pth"))
    assert isinstance(got, dict) and sorted(got) == ["coords", "flip", "label"]
    for key in item:
        assert_same(got[key], item[key])


# --------------------------------------------------------------------------- safety and errors
class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("layout", ["sre2l", "fkd"])
def test_malicious_file_is_refused_and_never_unpickled(tmp_path, layout):
    folder = str(tmp_path / "labels")
    marker = str(tmp_path / "PWNED")
    if layout == "sre2l":
        make_sre2l(folder)
        path = os.path.join(folder, "epoch_1", "batch_1.tar")
        item = torch.load(path, weights_only=True, map_location="cpu")
        item[3] = Evil(marker)
    else:
        make_fkd(folder)
        path = os.path.join(folder, "n01", "img_1.tar")
        item = [Evil(marker), np.zeros(6, bool), np.zeros((6, 2, 3), np.float32)]
    torch.save(item, path)
    assert not os.path.exists(marker)
    out = tmp_path / "out.vqsl"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match="refused"):
        import_folder(folder, str(out), layout, codec="fp16", classes=C)
    assert not os.path.exists(marker)
    assert out.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["labels", "out.vqsl"]
    # the CLI: one line, exit 2
    assert cli.main(["import", folder, "-o", str(out), "--layout", layout, "--codec", "fp16", "--classes", str(C),
                     "-q"]) == 2
    assert not os.path.exists(marker)
    # also in the legacy (non-zip) torch.save format, where no pre-scan is possible
    torch.save(item, path, _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match="refused"):
        load_file(path)
    assert not os.path.exists(marker)


def test_load_file_allows_numpy_only_as_needed(tmp_path):
    p = str(tmp_path / "a.pt")
    torch.save([np.arange(3, dtype=np.int16), np.float64(0.5), np.int64(7), torch.ones(2)], p)
    got = load_file(p)
    assert got[0].dtype == np.int16 and got[1] == 0.5 and got[2] == 7
    torch.save([np.array(["a", "b"], dtype=object)], p)
    with pytest.raises(InputError):
        load_file(p)
    open(p, "wb").write(b"not a torch file")
    with pytest.raises(InputError, match="not a readable torch file"):
        load_file(p)


def test_numpy_1x_pickles_load(tmp_path):
    """Files written under numpy 1.x name numpy.core.multiarray (numpy 2 moved it to numpy._core)."""
    import zipfile
    src, dst = str(tmp_path / "n2.pt"), str(tmp_path / "n1.pt")
    torch.save([np.arange(3, dtype=np.float32), np.int64(4)], src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):  # protocol 2: GLOBAL names are plain text lines
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(info, data)
    assert "numpy.core.multiarray._reconstruct" in torch.serialization.get_unsafe_globals_in_checkpoint(dst)
    got = load_file(dst)
    np.testing.assert_array_equal(got[0], np.arange(3, dtype=np.float32))
    assert got[1] == 4


def test_bad_folders(tmp_path):
    with pytest.raises(InputError, match="no epoch_"):
        import_folder(str(tmp_path), str(tmp_path / "x.vqsl"), "sre2l", codec="fp16")
    with pytest.raises(InputError, match="no label files"):
        import_folder(str(tmp_path), str(tmp_path / "x.vqsl"), "fkd", codec="fp16", classes=C)
    with pytest.raises(ConfigError, match="layout"):
        import_folder(str(tmp_path), str(tmp_path / "x.vqsl"), "rded")
    d = tmp_path / "epoch_0"
    d.mkdir()
    torch.save([torch.zeros(2, 4), torch.zeros(3, dtype=torch.bool), None, None, None, torch.zeros(2, C)],
               str(d / "batch_0.tar"))
    with pytest.raises(InputError, match="flip"):
        import_folder(str(tmp_path), str(tmp_path / "x.vqsl"), "sre2l", codec="fp16")
    assert sorted(os.listdir(tmp_path)) == ["epoch_0"]


def test_export_needs_an_explicit_record_and_an_empty_folder(tmp_path, sre2l_dir):
    plain = str(tmp_path / "plain.vqsl")
    slcodec.encode(np.zeros((4, C), np.float32), plain, codec="fp32")
    with pytest.raises(InputError, match="no explicit augmentation record"):
        export_folder(plain, str(tmp_path / "out"))
    folder, _ = sre2l_dir
    out = str(tmp_path / "x.vqsl")
    import_folder(folder, out, "sre2l", codec="fp16")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        export_folder(out, str(tmp_path / "full"))
    with pytest.raises(ConfigError, match="cannot be written as fkd"):
        export_folder(out, str(tmp_path / "o2"), "fkd")
    assert sorted(os.listdir(tmp_path)) == ["full", "plain.vqsl", "x.vqsl"]


def test_cli_import_export(tmp_path, sre2l_dir):
    folder, items = sre2l_dir
    out = str(tmp_path / "x.vqsl")
    assert cli.main(["import", folder, "-o", out, "--layout", "sre2l", "--codec", "topk", "--k", "4", "-q"]) == 0
    with slcodec.open(out) as r:
        assert r.codec_id == "topk" and r.count == EPOCHS * BATCHES * B
    back = str(tmp_path / "back")
    assert cli.main(["export", out, "-o", back, "--layout", "sre2l", "-q"]) == 0
    got = torch.load(os.path.join(back, "epoch_1", "batch_2.tar"), weights_only=True)
    assert got[5].dtype == torch.float16 and got[5].shape == (B, C)
    assert_same(got[0], items[-1][0])
    assert cli.main(["import", folder, "-o", out, "--layout", "fkd", "--codec", "fp16", "-q"]) == 2  # no --classes
    assert cli.main(["export", out, "-o", back, "-q"]) == 2  # not empty


def _rewrite(src, dst, change):
    """Copy an imported file through a Writer, letting change(record, streams) alter the record."""
    with Container.open(src) as c:
        record = c.read_msgpack("augment")
        streams = {name[len("augment/"):]: c.stream(name).read_rows(0, c.stream(name).rows)
                   for name in c.sections if name.startswith("augment/")}
    with slcodec.open(src) as r:
        labels = r.decode(None, as_="probs")
    change(record, streams)
    with slcodec.Writer(dst, "fp32", classes=C, source_kind="probs", augment=record) as w:
        for name, arr in streams.items():
            w.add_stream("augment/" + name, arr.dtype, arr.shape[1]).append(arr)
        w.append(labels.reshape(-1, C))


def test_damaged_records_are_rejected_and_export_never_leaves_the_folder(tmp_path):
    from slcodec.errors import FormatError
    folder = str(tmp_path / "fkd")
    make_fkd(folder)
    good = str(tmp_path / "good.vqsl")
    import_folder(folder, good, "fkd", codec="fp32", classes=C)

    def escape(record, streams):
        names = bytes(streams["files"][:, 0]).decode().split("\n")
        names[0] = "../../escaped.tar"
        streams["files"] = np.frombuffer("\n".join(names).encode(), np.uint8)[:, None]
    evil = str(tmp_path / "evil.vqsl")
    _rewrite(good, evil, escape)
    with pytest.raises(FormatError, match="not a plain relative path"):
        export_folder(evil, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path.parent / "escaped.tar") and not os.path.exists(tmp_path / "escaped.tar")
    assert sorted(os.listdir(tmp_path)) == ["evil.vqsl", "fkd", "good.vqsl"]

    def short_flip(record, streams):
        streams["flip"] = streams["flip"][:-1]
    def zero_scale(record, streams):
        streams["image"][1, 1] = 0
    def bad_fields(record, streams):
        record["fields"] = ["image", "coords"]
    for i, change in enumerate((short_flip, zero_scale, bad_fields)):
        p = str(tmp_path / f"bad{i}.vqsl")
        _rewrite(good, p, change)
        with pytest.raises(FormatError, match="explicit augmentation record"):
            read_augment(p)
