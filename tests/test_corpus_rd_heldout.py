"""benchmarks/corpus_rd.py's held-out-images part with vq's per-image prior: the codec is fitted as
slcodec.encode fits it (image means of the fitted images, so ``image_bias=auto`` turns the sparse
prior on), and the held-out file's prior is built from the held-out images' own labels."""
import sys
from pathlib import Path

import numpy as np
import torch

import slcodec
from slcodec.codecs.vq.prior import quantise_sparse_prior
from slcodec.pipeline.rows import RowReader
from slcodec.pipeline.statistics import image_mean_log_probs

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = {"codes": 1, "codebook_size": 8, "code_dim": 4, "hidden": 16, "decoder_layers": 0, "steps": 80,
        "train_batch": 128, "image_bias_k": 8}
# 10 images of 300 views, C = 64: auto picks the sparse prior with k = 8 (as for the 1,000-class corpus)
I, A, C = 10, 300, 64


def _views(seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(I, 1, C, generator=g) * 4.0
    return (mean + 0.7 * torch.randn(I, A, C, generator=g)).numpy().astype(np.float16)


def _corpus_rd():
    sys.path.insert(0, str(BENCH))
    try:
        import corpus_rd
    finally:
        sys.path.remove(str(BENCH))
    return corpus_rd


def test_heldout_vq_default_uses_the_heldout_images_own_sparse_prior(tmp_path, monkeypatch):
    corpus_rd = _corpus_rd()
    x = _views()
    monkeypatch.setattr(corpus_rd, "CODECS", [("vq", "default", dict(TINY)),
                                              ("vq", "residual_k=2", dict(TINY, residual_k=2))])
    got = []
    rows = corpus_rd.run_heldout_part(x, None, got.append, None)
    assert [r["config"] for r in rows] == ["default", "residual_k=2"] and got == rows
    for r in rows:
        assert r["image_prior"] == "sparse k=8, held-out images' own means"
        assert r["labels"] == 2 * A and r["fit_images"] == 8 and r["top1"] == 1.0
    # one fit for both (residual_k is encode-only); the residual corrects what the decoder gets wrong
    assert rows[0]["fit_s"] == rows[1]["fit_s"]
    assert rows[1]["kl_T1"] < rows[0]["kl_T1"]


def test_heldout_file_prior_is_built_from_the_heldout_images(tmp_path):
    corpus_rd = _corpus_rd()
    x = _views(seed=1)
    codec = corpus_rd.fit_on_images(x[:8], "vq", TINY)
    assert codec.config["image_bias"] == "sparse"          # the fit had the fitted images' means
    assert codec.get_params()["image_prior_ids"].shape == (8, 8)
    held = x[8:].astype(np.float32).reshape(-1, C)
    means = corpus_rd.prior_for_images(codec, held, [2, A])
    with RowReader(held) as rr:
        want = quantise_sparse_prior(image_mean_log_probs(rr, [2, A], "logits"), 8)
    path = str(tmp_path / "h.vqsl")
    corpus_rd.write_fitted(path, codec, held, [2, A], C)
    with slcodec.open(path) as r:
        stored = r.codec.get_params()
        dec = r.decode(None, as_="logits").reshape(-1, C).numpy()
    for k, v in want.items():
        assert np.array_equal(stored[k], v), k
    assert corpus_rd.check_heldout_prior(path, means, codec).startswith("sparse k=8")
    assert (dec.argmax(1) == held.argmax(1)).all()
