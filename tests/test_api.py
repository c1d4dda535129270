"""slcodec.encode / slcodec.open / Reader: writing, random access, decoded kinds, errors."""
import os

import numpy as np
import pytest
import torch

import slcodec
import slcodec.pipeline.writer as writer_mod
from slcodec.errors import ConfigError, FormatError, InputError

MAGIC = b"\x89VQS\r\n\x1a\n"


def make_logits(shape, seed=0, dtype=np.float32):
    return (np.random.default_rng(seed).normal(size=shape) * 3).astype(dtype)


def make_probs(shape, seed=0):
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=shape) * 3)
    return torch.softmax(x, dim=-1).float().numpy()


@pytest.fixture(scope="module")
def x3():
    return make_logits((3, 5, 20), seed=3)


@pytest.fixture(scope="module")
def fp32_3d(tmp_path_factory, x3):
    path = str(tmp_path_factory.mktemp("api") / "x3.fp32.vqsl")
    assert slcodec.encode(x3, path, codec="fp32") == path
    return path


@pytest.fixture
def reader3(fp32_3d):
    with slcodec.open(fp32_3d) as r:
        yield r


def dotfiles(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


# --------------------------------------------------------------------------- encode
def test_encode_to_bytes_and_to_path_agree(tmp_path, x3):
    data = slcodec.encode(x3, codec="fp32")
    assert isinstance(data, bytes)
    assert data[:8] == MAGIC
    from_bytes = tmp_path / "from_bytes.vqsl"
    from_bytes.write_bytes(data)
    to_path = str(tmp_path / "to_path.vqsl")
    assert slcodec.encode(x3, to_path, codec="fp32") == to_path
    assert open(to_path, "rb").read(8) == MAGIC
    for path in (str(from_bytes), to_path):
        with slcodec.open(path) as r:
            np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x3)
    assert dotfiles(tmp_path) == []


def test_encode_accepts_torch_tensor_and_label_source(tmp_path, x3):
    from slcodec.pipeline.inputs import as_source
    for i, labels in enumerate([torch.from_numpy(x3), as_source(x3, path="teacher.npy")]):
        path = str(tmp_path / f"{i}.vqsl")
        slcodec.encode(labels, path, codec="fp32")
        with slcodec.open(path) as r:
            assert r.shape == (3, 5, 20)
            np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x3)


def test_encode_provenance_recorded(tmp_path, x3):
    from slcodec.format.container import Container
    path = str(tmp_path / "p.vqsl")
    slcodec.encode(x3, path, codec="fp16", provenance={"teacher": "resnet18"})
    with Container.open(path) as c:
        prov = c.read_msgpack("provenance")
        assert prov["teacher"] == "resnet18"
        assert prov["source_shape"] == [3, 5, 20]
        assert c.header["labels"]["source_dtype"] == "float32"
        assert c.header["codec"]["id"] == "fp16"


def test_encode_replaces_existing_file(tmp_path, x3):
    path = tmp_path / "out.vqsl"
    path.write_bytes(b"old contents")
    slcodec.encode(x3, str(path), codec="fp32")
    assert path.read_bytes()[:8] == MAGIC
    assert dotfiles(tmp_path) == []


def test_failed_encode_leaves_existing_file_and_no_temp_files(tmp_path):
    path = tmp_path / "out.vqsl"
    path.write_bytes(b"precious")
    big = make_logits((12, 16)) * 1e6  # beyond the fp16 range: fails inside the writer
    with pytest.raises(ConfigError, match="float16 range"):
        slcodec.encode(big, str(path), codec="fp16")
    assert path.read_bytes() == b"precious"
    assert dotfiles(tmp_path) == []


# --------------------------------------------------------------------------- reader facts
def test_reader_facts(reader3, x3):
    assert len(reader3) == 15
    assert reader3.shape == (3, 5, 20)
    assert reader3.classes == 20
    assert reader3.source_kind == "logits"
    assert reader3.codec_id == "fp32"
    assert reader3.header["labels"]["count"] == 15
    assert "fp32" in repr(reader3)


def test_reader_facts_2d_probs(tmp_path):
    p = make_probs((12, 16))
    path = str(tmp_path / "p.vqsl")
    slcodec.encode(p, path, codec="fp16")
    with slcodec.open(path) as r:
        assert len(r) == 12
        assert r.shape == (12, 16)
        assert r.classes == 16
        assert r.source_kind == "probs"


def test_decode_none_returns_input_shape(reader3, x3):
    logits = reader3.decode(None, as_="logits")
    assert logits.dtype == torch.float32
    assert tuple(logits.shape) == (3, 5, 20)
    np.testing.assert_array_equal(logits.numpy(), x3)
    probs = reader3.decode()
    assert tuple(probs.shape) == (3, 5, 20)
    torch.testing.assert_close(probs, torch.softmax(torch.from_numpy(x3), dim=-1), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- indexing
FLAT_INDICES = [
    0, 7, 14, -1, -15, np.int64(4),
    slice(2, 9), slice(None, None, 3), slice(None, None, -2), slice(5, 5), slice(-4, None),
    [3, 1, 1, 0, 14], [-1, -2, 0], np.array([13, 2, 8]), np.array([[1, 2], [3, 4]]),
    torch.tensor([5, 0, 11]), np.array([6], dtype=np.uint8),
]


def _np_index(idx):
    if isinstance(idx, torch.Tensor):
        return idx.numpy()
    if isinstance(idx, tuple):
        return tuple(_np_index(i) for i in idx)
    return idx


@pytest.mark.parametrize("idx", FLAT_INDICES, ids=repr)
def test_flat_index(reader3, x3, idx):
    flat = x3.reshape(-1, 20)
    expected = flat[_np_index(idx)]
    got = reader3.decode(idx, as_="logits")
    assert tuple(got.shape) == expected.shape
    np.testing.assert_array_equal(got.numpy(), expected)


def test_int_index_gives_one_label(reader3, x3):
    got = reader3.decode(7, as_="logits")
    assert tuple(got.shape) == (20,)
    np.testing.assert_array_equal(got.numpy(), x3[1, 2])


def test_empty_index_list_gives_no_labels(reader3):
    # numpy and torch both accept x[[]] and return an empty [0, C] block
    got = reader3.decode([], as_="logits")
    assert tuple(got.shape) == (0, 20)


TUPLE_INDICES = [
    (1, 2), (-1, -2), (0, -5),
    (1, slice(1, 4)), (slice(0, 2), 3), (slice(None), slice(None, None, 2)),
    (slice(None, None, -1), slice(1, 2)),
    ([0, 2], [1, 4]), (np.array([2, 0, 1]), 4), (1, np.array([4, 0, 4])),
    (np.array([0, 2]), slice(1, 3)), (slice(0, 2), np.array([3, 1])),
    (slice(0, 2), np.array([[1, 2], [3, 4]])), (np.array([[0, 1], [2, 0]]), slice(0, 2)),
    (np.array([[0, 1], [2, 0]]), np.array([[4, 3], [2, 1]])),
    (torch.tensor([2, 1]), 0), (torch.tensor([2, 1]), torch.tensor([0, 4])),
]


@pytest.mark.parametrize("idx", TUPLE_INDICES, ids=repr)
def test_tuple_index(reader3, x3, idx):
    expected = x3[_np_index(idx)]
    got = reader3.decode(idx, as_="logits")
    assert tuple(got.shape) == expected.shape
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("idx", [15, -16, [0, 15], np.array([-16]), 100,
                                 (3, 0), (0, 5), (-4, 0), (0, [1, 5]), ([3], slice(None))], ids=repr)
def test_out_of_range_index(reader3, idx):
    with pytest.raises(IndexError):
        reader3.decode(idx)


@pytest.mark.parametrize("idx", [1.0, [0.0, 1.0], np.array([True, False]), "3", (1,), (1, 2, 3)], ids=repr)
def test_bad_index_type(reader3, idx):
    with pytest.raises(IndexError):
        reader3.decode(idx)


def test_tuple_index_on_2d_set(tmp_path):
    path = str(tmp_path / "x.vqsl")
    slcodec.encode(make_logits((12, 16)), path, codec="fp32")
    with slcodec.open(path) as r:
        with pytest.raises(IndexError, match="tuple"):
            r.decode((1, 2))


def test_flat_indices_shape(reader3):
    flat, lead = reader3.flat_indices((slice(1, 3), [0, 4]))
    assert lead == (2, 2)
    np.testing.assert_array_equal(flat, [5, 9, 10, 14])


# --------------------------------------------------------------------------- decoded kinds
def test_fp16_logits_bit_exact(tmp_path):
    x16 = make_logits((3, 5, 20), dtype=np.float16)
    path = str(tmp_path / "x16.vqsl")
    slcodec.encode(x16, path, codec="fp16")
    with slcodec.open(path) as r:
        got = r.decode(None, as_="logits")
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), x16.astype(np.float32))
        assert r.header["labels"]["source_dtype"] == "float16"


def test_fp16_of_fp32_source_rounds_to_fp16(tmp_path):
    x = make_logits((12, 16))
    path = str(tmp_path / "x.vqsl")
    slcodec.encode(x, path, codec="fp16")
    with slcodec.open(path) as r:
        np.testing.assert_array_equal(r.decode(None, as_="logits").numpy(), x.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("t", [0.5, 1.0, 4.0])
def test_probs_at_temperature(reader3, x3, t):
    flat = torch.from_numpy(x3.reshape(-1, 20))
    got = reader3.decode(slice(None), as_="probs", temperature=t)
    torch.testing.assert_close(got, torch.softmax(flat / t, dim=1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(15), rtol=0, atol=1e-5)


@pytest.mark.parametrize("t", [None, 2.5])
def test_log_probs(reader3, x3, t):
    flat = torch.from_numpy(x3.reshape(-1, 20))
    got = reader3.decode(slice(None), as_="log_probs", temperature=t)
    torch.testing.assert_close(got, torch.log_softmax(flat / (t or 1.0), dim=1), rtol=1e-6, atol=1e-6)


def test_temperature_with_logits_is_a_config_error(reader3):
    with pytest.raises(ConfigError, match="temperature"):
        reader3.decode(0, as_="logits", temperature=2.0)
    # T=1 changes nothing and is accepted
    torch.testing.assert_close(reader3.decode(0, as_="logits", temperature=1.0), reader3.decode(0, as_="logits"))


@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(temperature=-1.0), dict(temperature=float("nan")),
                                    dict(temperature=float("inf")), dict(as_="prob"), dict(device="tpu")],
                         ids=repr)
def test_bad_decode_arguments(reader3, kwargs):
    with pytest.raises(ConfigError):
        reader3.decode(0, **kwargs)


def test_probs_source_decodes_stored_probs_exactly(tmp_path):
    p = make_probs((3, 5, 20))
    path = str(tmp_path / "p.vqsl")
    slcodec.encode(p, path, codec="fp32")
    with slcodec.open(path) as r:
        assert r.source_kind == "probs"
        got = r.decode(None, as_="probs")
        np.testing.assert_array_equal(got.numpy(), p)
        np.testing.assert_array_equal(r.decode((1, 2)).numpy(), p[1, 2])
        logp = torch.log(torch.from_numpy(p))
        torch.testing.assert_close(r.decode(None, as_="logits"), logp)
        torch.testing.assert_close(r.decode(None, as_="probs", temperature=2.0),
                                   torch.softmax(logp / 2.0, dim=-1), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(r.decode(None, as_="log_probs"), torch.log_softmax(logp, dim=-1),
                                   rtol=1e-6, atol=1e-6)


def test_topk_decode(tmp_path):
    x = make_logits((12, 16))
    path = str(tmp_path / "t.vqsl")
    slcodec.encode(x, path, codec="topk", k=3)
    probs = torch.softmax(torch.from_numpy(x), dim=1)
    top_v, top_i = probs.topk(3, dim=1)
    with slcodec.open(path) as r:
        assert r.header["codec"]["config"] == {"k": 3}
        got = r.decode(None)
    assert tuple(got.shape) == (12, 16)
    # the kept classes hold their fp16-rounded probabilities ...
    kept = got.gather(1, top_i)
    torch.testing.assert_close(kept, top_v.half().float(), rtol=0, atol=0)
    # ... and the rest share the left-over mass evenly
    rest = (1 - top_v.half().float().sum(1, keepdim=True)).clamp_min(0) / 13
    mask = torch.ones_like(got, dtype=torch.bool).scatter_(1, top_i, False)
    torch.testing.assert_close(got[mask].reshape(12, 13), rest.expand(12, 13), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got.sum(1), torch.ones(12), rtol=0, atol=2e-3)
    assert torch.equal(got.argmax(1), probs.argmax(1))


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(codec="no-such-codec"), "unknown codec"),
    (dict(codec="topk", k=0), "k must be"),
    (dict(codec="topk", k=-2), "k must be"),
    (dict(codec="topk", k="3"), "k must be"),
    (dict(codec="topk", k=17), "exceeds"),
    (dict(codec="fp16", k=5), "no option 'k'"),
    (dict(codec="topk", bits=40), "no option 'bits'"),
    (dict(codec="fp32", batch_size=0), "batch_size"),
    (dict(codec="fp32", device="tpu"), "device"),
], ids=repr)
def test_encode_config_errors(tmp_path, kwargs, match):
    path = tmp_path / "out.vqsl"
    with pytest.raises(ConfigError, match=match):
        slcodec.encode(make_logits((12, 16)), str(path), **kwargs)
    assert os.listdir(tmp_path) == []


def test_encode_bad_input_is_input_error():
    x = make_logits((12, 16))
    x[2, 2] = np.nan
    with pytest.raises(InputError):
        slcodec.encode(x, codec="fp32")
    with pytest.raises(InputError):
        slcodec.encode(make_logits((12, 16)), codec="fp32", input_kind="probs")


def test_open_missing_and_corrupt(tmp_path, fp32_3d):
    with pytest.raises(FileNotFoundError):
        slcodec.open(str(tmp_path / "none.vqsl"))
    bad = tmp_path / "bad.vqsl"
    bad.write_bytes(open(fp32_3d, "rb").read()[:-7])
    with pytest.raises(FormatError):
        slcodec.open(str(bad))


# --------------------------------------------------------------------------- batching and chunks
def test_decode_batch_size_does_not_change_results(reader3):
    whole = reader3.decode(None)
    torch.testing.assert_close(reader3.decode(None, batch_size=3), whole, rtol=0, atol=0)
    idx = [14, 0, 7, 3, 3, 9, 1]
    torch.testing.assert_close(reader3.decode(idx, batch_size=2, as_="logits"),
                               reader3.decode(idx, as_="logits"), rtol=0, atol=0)
    torch.testing.assert_close(reader3.decode(slice(1, 14), batch_size=4, as_="log_probs", temperature=3.0),
                               reader3.decode(slice(1, 14), as_="log_probs", temperature=3.0), rtol=0, atol=0)


def test_decoding_never_changes_what_later_decodes_read(reader3, x3):
    """Conversions run in place only on a codec's own result: fp32 decodes alias their streams
    (resident rows), so probs / scaled log_probs must not overwrite them."""
    flat = x3.reshape(-1, x3.shape[-1])
    for kw in (dict(as_="probs"), dict(as_="log_probs", temperature=2.0), dict(as_="probs", temperature=4.0)):
        reader3.decode(None, **kw)
        reader3.decode([3, 1, 4], **kw)
        np.testing.assert_array_equal(reader3.decode(None, as_="logits").numpy().reshape(flat.shape), flat)


@pytest.mark.parametrize("codec,opts", [("topk", {"k": 4}), ("sparse", {"k": 3}), ("fp16", {}),
                                        ("vq", {"codes": 1, "codebook_size": 8, "hidden": 16, "steps": 5})])
def test_owned_decodes_convert_in_place_like_a_fresh_softmax(tmp_path, x3, codec, opts):
    import slcodec.codecs as codecs
    assert codecs.get_codec_class(codec).decode_owns_output
    path = str(tmp_path / "x.vqsl")
    slcodec.encode(x3, path, codec=codec, **opts)
    with slcodec.open(path) as r:
        logits = r.decode(None, as_="logits")   # log-probabilities for topk (a probs codec)
        for as_, t, ref in (("log_probs", 2.0, torch.log_softmax(logits / 2.0, -1)),
                            ("probs", 0.5, torch.softmax(logits / 0.5, -1))):
            for bs in (65536, 4):
                got = r.decode(None, as_=as_, temperature=t, batch_size=bs)
                torch.testing.assert_close(got, ref, rtol=0, atol=0)
        probs = r.decode(None)
        torch.testing.assert_close(r.decode(None, batch_size=4), probs, rtol=0, atol=0)
        torch.testing.assert_close(probs, torch.softmax(logits, -1), rtol=0, atol=1e-6)
        torch.testing.assert_close(r.decode(None, as_="logits"), logits, rtol=0, atol=0)


@pytest.mark.parametrize("codec,opts", [("fp32", {}), ("topk", {"k": 4})])
def test_encode_batch_size_does_not_change_results(tmp_path, codec, opts):
    x = make_logits((3, 5, 20), seed=11)
    one, many = str(tmp_path / "one.vqsl"), str(tmp_path / "many.vqsl")
    slcodec.encode(x, one, codec=codec, **opts)
    slcodec.encode(x, many, codec=codec, batch_size=4, **opts)
    with slcodec.open(one) as a, slcodec.open(many) as b:
        torch.testing.assert_close(a.decode(None), b.decode(None), rtol=0, atol=0)
        for name in a.streams:
            np.testing.assert_array_equal(a.streams[name].read_rows(0, 15), b.streams[name].read_rows(0, 15))


def test_stream_chunk_rows():
    assert writer_mod.stream_chunk_rows("float32", 20) == 4096
    assert writer_mod.stream_chunk_rows("uint16", 5) == 4096
    assert writer_mod.stream_chunk_rows("float32", 64) == 4096     # exactly 1 MiB a chunk
    assert writer_mod.stream_chunk_rows("float32", 65) == 2048
    assert writer_mod.stream_chunk_rows("float16", 1000) == 512
    assert writer_mod.stream_chunk_rows("float32", 65536) == 16    # never fewer than 16 rows


@pytest.mark.parametrize("codec,opts", [("fp32", {}), ("fp16", {}), ("topk", {"k": 3})])
def test_random_access_across_chunks(tmp_path, monkeypatch, codec, opts):
    x = make_logits((10, 5, 20), seed=5)
    monkeypatch.setattr(writer_mod, "stream_chunk_rows", lambda dtype, width: 4)
    path = str(tmp_path / "chunked.vqsl")
    slcodec.encode(x, path, codec=codec, **opts)
    monkeypatch.undo()
    whole_path = str(tmp_path / "whole.vqsl")
    slcodec.encode(x, whole_path, codec=codec, **opts)
    flat = x.reshape(-1, 20)
    with slcodec.open(path) as r, slcodec.open(whole_path) as w:
        for s in r.streams.values():
            assert s.chunk_rows == 4 and s.nchunks == 13
        for s in w.streams.values():
            assert s.nchunks == 1
        cases = [None, slice(3, 45), slice(None, None, -1), [3, 4, 47, 0, 8, 49, 12, 13, 3], np.arange(50)[::7],
                 (slice(None), 3), (np.array([9, 0, 4]), slice(1, 5)), 3, 4, 49, -1]
        for idx in cases:
            got = r.decode(idx, as_="logits" if codec != "topk" else "probs")
            ref = w.decode(idx, as_="logits" if codec != "topk" else "probs")
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
            if codec == "fp32":
                if idx is None:
                    expected = x
                elif isinstance(idx, tuple):
                    expected = x[_np_index(idx)]
                else:
                    expected = flat[idx]
                np.testing.assert_array_equal(got.numpy(), expected)
        # batches that end inside a chunk
        torch.testing.assert_close(r.decode(None, batch_size=3), w.decode(None), rtol=0, atol=0)


def test_wide_labels_use_small_chunks(tmp_path):
    # 16384 fp32 classes: 64 KiB a row, so value chunks hold 16 rows
    x = make_logits((40, 16384), seed=2)
    path = str(tmp_path / "wide.vqsl")
    slcodec.encode(x, path, codec="fp32")
    with slcodec.open(path) as r:
        s = r.streams["values"]
        assert (s.chunk_rows, s.nchunks) == (16, 3)
        idx = [0, 15, 16, 31, 32, 39, 17]
        np.testing.assert_array_equal(r.decode(idx, as_="logits").numpy(), x[idx])
        np.testing.assert_array_equal(r.decode(slice(10, 35), as_="logits").numpy(), x[10:35])
