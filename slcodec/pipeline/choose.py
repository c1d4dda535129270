"""Choosing the codec and its size for the label set at hand (issue 15).

A *target* is a list of ``(max_kl, T)`` pairs - mean KL(p||q) at temperature T over the labels
of the file - plus, unless ``allow_top1_loss``, top-1 agreement of 100%.  A *budget* is a number
of bits per label of the whole file, everything counted.  :func:`choose` picks, among
:func:`candidates`, the one with the fewest predicted bits per label that meets the target within
the budget; when none does, the one with the best fidelity within the budget (and says which
target it missed, and by how much).

The choice is made by measurement, not by a table: a random sample of the set (whole images'
views when the set is ``[images, views, C]``) is split in a fit part (half the views of each
sampled image, or half the rows) and a held-out part.  Each candidate is fitted on the fit part
and the whole sample is written through slcodec's own :class:`~slcodec.pipeline.writer.Writer`
(header, parameters, chunked zstd streams: every byte); the held-out labels are decoded back
from that file and scored.  The file's bytes predict the whole set's: the *fixed part* (header,
parameters) is paid once (a per-image table such as ``imgprior``'s prior once per image), the
label streams' bytes per label are paid N times.

Learned codecs are fitted here with fewer steps than their real fit (``TRIAL_VQ_STEPS``) on a
few thousand labels, so their measured fidelity is, if anything, pessimistic.  Candidates that
differ only in a codec's encode-only options (``vq``'s residual) share one trial fit.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile

import numpy as np

from ..errors import ConfigError, SlcodecError

#: the default target (``--max-kl 0.1@1 --max-kl 0.01@4``) and budget (2% of FP16: 0.02 * 16 * C bits,
#: at least DEFAULT_BUDGET_MIN_BITS)
DEFAULT_TARGET = ((0.1, 1.0), (0.01, 4.0))
DEFAULT_BUDGET_FP16_FRACTION = 0.02
#: the budget's floor, which matters only below C = 32: at C = 10, 2% of FP16 is 3.2 bits, where
#: nothing measured meets the default target and the Fashion-MNIST student kept only 98.1-98.5% of
#: its accuracy (BENCHMARKS.md sections 4 and 11); vq with the image prior meets it at ~8 bits
DEFAULT_BUDGET_MIN_BITS = 10.0
#: labels of the set the choice measures on (fit part + held-out part)
SAMPLE_LABELS = 4096
#: vq residual sizes tried (on the 16-bit and the default vq), for sets of at least this many classes
#: (at C = 10 the small vq's codes already carry the label)
RESIDUAL_KS = (1, 2, 4, 8, 16)
RESIDUAL_MIN_CLASSES = 64
#: vq steps of a candidate's trial fit (the real fit uses the codec's own, 3000 by default)
TRIAL_VQ_STEPS = 500
#: a candidate is predicted to meet a target when its held-out KL is at most this fraction of it,
#: and a budget when its predicted bits are at most this fraction of it: the sample is a few
#: thousand labels, the file is written from a fit on more
KL_SAFETY, BITS_SAFETY = 0.9, 0.97
#: the params sections stored once per image (their bytes scale with the number of images)
PER_IMAGE_PARAMS = ("params/prior", "params/prior_range", "params/image_bias", "params/image_prior_ids",
                    "params/image_prior_levels", "params/image_prior_offset")
#: fidelity of a written file is measured on every label up to this many float32 bytes, else on
#: a random sample of FIDELITY_SAMPLE labels
FIDELITY_ALL_BYTES = 1 << 30
FIDELITY_SAMPLE = 20_000


def parse_max_kl(text: str) -> tuple[float, float]:
    """``"VALUE@T"`` -> (VALUE, T); a bare VALUE means T = 1."""
    value, at, temp = str(text).partition("@")
    try:
        kl, t = float(value), float(temp) if at else 1.0
    except ValueError:
        raise ConfigError(f"--max-kl {text!r}: expected VALUE@T, e.g. 0.1@1") from None
    if not (math.isfinite(kl) and kl > 0) or not (math.isfinite(t) and t > 0):
        raise ConfigError(f"--max-kl {text!r}: VALUE and T must be positive numbers")
    return kl, t


def default_budget(classes: int) -> float:
    return max(DEFAULT_BUDGET_FP16_FRACTION * 16 * classes, DEFAULT_BUDGET_MIN_BITS)


def target_text(target) -> str:
    return " ".join(f"--max-kl {kl:g}@{t:g}" for kl, t in target)


def candidates(classes: int, images: bool) -> list[tuple[str, dict]]:
    """The (codec, options) tried for a set of ``classes`` classes (``images``: shaped
    [images, views, C]): sizes from the smallest that can be on a front to the codecs' defaults."""
    out = []
    if classes <= 256:  # one byte-ish per class value: only worth it at small C
        out += [("sq", {"bits_per_class": b}) for b in (2, 3, 4, 5, 6)]
    ks = [k for k in (1, 2, 4, 8, 12, 16, 24, 32) if k < classes]
    if images:
        out += [("imgprior", {"residual_k": k}) for k in [0] + ks]
    out += [("sparse", {"k": k}) for k in ks]
    out += [("topk", {"k": k}) for k in (5, 10) if k < classes]
    vq_trial = {"steps": TRIAL_VQ_STEPS, "fit_threads": 1}
    if classes <= 256:
        # the small decoder at 3-6 bits: at small C the budget is a few bits per label (10 at C = 10)
        # and these are the best fidelity within it once N amortises its ~6 KB (BENCHMARKS.md section 11)
        out += [("vq", dict(vq_trial, hidden=32, decoder_layers=0, bits=b)) for b in (3, 4, 6)]
    out += [("vq", dict(vq_trial, hidden=32, decoder_layers=0, bits=8))]
    for vq in (dict(vq_trial, hidden=64, decoder_layers=0, bits=16), dict(vq_trial)):
        out.append(("vq", vq))
        # the decoder's output plus a per-view residual (format 1.8): at large C it lowers KL at
        # T = 1 far more per bit than a larger code (BENCHMARKS.md section 17); each shares its
        # vq's trial fit, so these cost an encode of the sample each, not a fit
        if classes >= RESIDUAL_MIN_CLASSES:
            out += [("vq", dict(vq, residual_k=k)) for k in RESIDUAL_KS if k < classes // 4]
    return out


#: options used only to make a trial cheap: not carried into the real encode
TRIAL_ONLY_OPTIONS = ("steps", "fit_threads")


@dataclasses.dataclass
class Trial:
    codec: str
    config: dict                    # the options the real encode uses
    bits_per_label: float           # predicted for the whole set, all counted
    fixed_bytes: float              # predicted fixed part of the whole set's file
    marginal_bits: float            # label-stream bits per label, measured
    kl: dict                        # T key -> mean KL on the held-out labels
    kl_p99: dict
    top1: float
    top5: float
    error: str | None = None
    #: the fitted codec (kept while choosing, so that candidates differing only in encode-only
    #: options share one fit); not part of the result
    fitted: object = dataclasses.field(default=None, repr=False, compare=False)

    def misses(self, target, allow_top1_loss: bool, safety: float = 1.0) -> list[str]:
        """What of the target this trial misses ([] when it meets it)."""
        out = []
        for kl, t in target:
            got = self.kl.get(_tkey(t), math.inf)
            if not got <= kl * safety:
                out.append(f"KL@T={t:g} {got:.4g} > {kl:g} ({got / kl:.2f}x)")
        if not allow_top1_loss and self.top1 < 1.0:
            out.append(f"top-1 {100 * self.top1:.2f}% < 100%")
        return out

    def shortfall(self, target, allow_top1_loss: bool) -> tuple:
        """A sort key of fidelity against the target (smaller: better)."""
        worst = max(self.kl.get(_tkey(t), math.inf) / kl for kl, t in target)
        return (0 if allow_top1_loss or self.top1 >= 1.0 else 1, worst, self.bits_per_label)

    def describe(self) -> str:
        return f"{self.codec} {_config_text(self.config)}".strip()


@dataclasses.dataclass
class Choice:
    trial: Trial
    met: bool
    missed: list                    # what of the target the chosen one misses (predicted)
    budget: float
    target: tuple
    trials: list
    reason: str

    @property
    def codec(self):
        return self.trial.codec

    @property
    def config(self):
        return dict(self.trial.config)

    def as_dict(self) -> dict:
        return {"codec": self.codec, "config": self.config, "met": self.met, "missed": self.missed,
                "budget_bits_per_label": self.budget, "target": [[kl, t] for kl, t in self.target],
                "predicted_bits_per_label": self.trial.bits_per_label, "reason": self.reason,
                "candidates": [{"codec": t.codec, "config": t.config, "bits_per_label": t.bits_per_label,
                                "kl": t.kl, "top1": t.top1, "error": t.error} for t in self.trials]}


def _tkey(t) -> str:
    return f"{float(t):g}"


def _config_text(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def _sample(src, rng: np.random.Generator, size: int):
    """(sample float32 [n, C], leading shape of the sample, fit row indices, held-out row
    indices, images of the whole set or None)."""
    shape = tuple(src.shape[:-1])
    rows = src.rows()
    C = src.classes
    if len(shape) == 2 and shape[1] >= 2:
        I, V = shape
        g = min(I, max(2, math.ceil(size / V)))
        v = min(V, max(2, size // g))
        imgs = np.sort(rng.choice(I, g, replace=False))
        views = np.sort(rng.choice(V, v, replace=False))
        idx = (imgs[:, None] * V + views[None, :]).reshape(-1)
        sample = np.asarray(rows[idx] if isinstance(rows, np.ndarray) else rows[idx.tolist()], dtype=np.float32)
        fit_mask = np.zeros((g, v), dtype=bool)
        for i in range(g):
            fit_mask[i, rng.choice(v, v // 2, replace=False)] = True
        fit_mask = fit_mask.reshape(-1)
        return sample, [g, v], np.flatnonzero(fit_mask), np.flatnonzero(~fit_mask), I
    n = rows.shape[0]
    m = min(n, size)
    idx = np.sort(rng.choice(n, m, replace=False))
    sample = np.asarray(rows[idx], dtype=np.float32).reshape(m, C)
    fit_mask = np.zeros(m, dtype=bool)
    fit_mask[rng.choice(m, max(1, m // 2), replace=False)] = True
    if m < 2:
        fit_mask[:] = True
    held = np.flatnonzero(~fit_mask) if m >= 2 else np.arange(m)
    return sample, [m], np.flatnonzero(fit_mask), held, None


def log_space(x, kind: str):
    import torch
    x = torch.from_numpy(np.array(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x.to(torch.float32)
    return torch.log(x.clamp_min(torch.finfo(torch.float32).tiny)) if kind == "probs" else x


def fidelity(p_log, q_log, temperatures) -> dict:
    """KL(p||q) mean and 99th percentile per temperature, top-1 and top-5 agreement, of log-space
    references ``p_log`` and decodes ``q_log`` (torch [n, C])."""
    from .metrics import kl_divergence
    out = {"labels": int(p_log.shape[0]), "kl": {}, "kl_p99": {}}
    for t in temperatures:
        v = kl_divergence(p_log, q_log, float(t)).double().numpy()
        out["kl"][_tkey(t)] = float(v.mean()) if v.size else 0.0
        out["kl_p99"][_tkey(t)] = float(np.quantile(v, 0.99)) if v.size else 0.0
    out["top1"] = float((p_log.argmax(1) == q_log.argmax(1)).double().mean()) if p_log.shape[0] else 1.0
    k = min(5, p_log.shape[1])
    tp, tq = p_log.topk(k, dim=1).indices, q_log.topk(k, dim=1).indices
    out["top5"] = float((tp[:, :, None] == tq[:, None, :]).any(2).double().mean()) if p_log.shape[0] else 1.0
    return out


def trial(sample, shape, fit_idx, held_idx, kind: str, images, n_total: int, codec: str, options: dict,
          temperatures, seed: int = 0, device: str = "cpu", fitted=None) -> Trial:
    """Fit ``codec`` with ``options`` on the fit rows of ``sample`` (or take ``fitted``, a codec
    fitted with the same fit options), write the whole sample with slcodec's writer, decode the
    held-out rows from the file and score them; predict the whole set's bits per label from the
    file's fixed part and its stream bytes per label."""
    from ..format.container import Container
    from ..format.stats import file_stats
    from .reader import open as open_reader
    from .rows import RowReader
    from .statistics import compute_fit_statistics
    from .writer import Writer

    C = sample.shape[1]
    real = {k: v for k, v in options.items() if k not in TRIAL_ONLY_OPTIONS}
    with tempfile.TemporaryDirectory(prefix="slcodec-choose-") as tmp:
        path = os.path.join(tmp, "trial.vqsl")
        with Writer(path, codec, classes=C, shape=shape, source_kind=kind, device=device, seed=seed,
                    **options) as w, RowReader(sample) as reader:
            if fitted is not None:
                w.use_fitted(fitted)
            elif w.needs_fit:
                wanted = w.codec.fit_statistics(w.shape, C)
                for name, value in compute_fit_statistics(wanted, reader, w.shape, kind, 8192, 0,
                                                          sample.shape[0]).items():
                    w.set_fit_statistic(name, value)
                w.fit(sample[fit_idx], rows=fit_idx)
            w.append(sample)
            codec_used = w.codec
        with Container.open(path) as c:
            s = file_stats(c)
        with open_reader(path) as r:
            q = r.decode(held_idx.tolist(), as_="log_probs")
    fid = fidelity(log_space(sample[held_idx], kind), q, temperatures)
    n_sample = sample.shape[0]
    stream_bytes = s["groups"].get("label_streams", {}).get("bytes", 0)
    per_image = sum(e["bytes"] for e in s["sections"] if e["name"] in PER_IMAGE_PARAMS) if images else 0
    fixed = s["file_bytes"] - stream_bytes - per_image
    if images:
        fixed += per_image * images / shape[0]
    marginal = stream_bytes * 8 / n_sample
    bits = (fixed * 8 + marginal * n_total) / n_total
    return Trial(codec, real, bits, fixed, marginal, fid["kl"], fid["kl_p99"], fid["top1"], fid["top5"],
                 fitted=codec_used)


def _fit_key(codec: str, options: dict):
    """Candidates with equal keys need one fit: they differ only in the codec's encode-only options."""
    from ..codecs.base import get_codec_class
    skip = set(get_codec_class(codec).encode_only_options)
    return codec, tuple(sorted((k, repr(v)) for k, v in options.items() if k not in skip))


def choose(src, target=DEFAULT_TARGET, budget: float | None = None, *, allow_top1_loss: bool = False,
           seed: int = 0, device: str = "cpu", candidate_list=None, sample_labels: int = SAMPLE_LABELS,
           objective: str = "bits", log=None, progress=None) -> Choice:
    """The candidate with the fewest predicted bits per label that meets ``target`` within
    ``budget`` bits per label (default: 2% of FP16, at least 10), else the best fidelity within the budget (see
    the module documentation).  ``objective="fidelity"`` (``--max-bits`` alone): the best fidelity
    within the budget (closest to ``target``'s KLs), met when one is predicted within it.
    ``src``: a :class:`~slcodec.pipeline.inputs.LabelSource`."""
    if objective not in ("bits", "fidelity"):
        raise ConfigError(f"objective must be 'bits' or 'fidelity', got {objective!r}")
    target = tuple((float(kl), float(t)) for kl, t in target)
    if not target:
        raise ConfigError("a target needs at least one --max-kl VALUE@T")
    budget = default_budget(src.classes) if budget is None else float(budget)
    if not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--max-bits must be a positive number, got {budget}")
    n_total = int(np.prod(src.shape[:-1]))
    rng = np.random.default_rng(seed)
    sample, shape, fit_idx, held_idx, images = _sample(src, rng, sample_labels)
    temps = sorted({t for _, t in target} | {1.0, 4.0})
    cands = candidate_list if candidate_list is not None else candidates(src.classes, images is not None)
    trials = []
    fits = {}   # _fit_key -> a fitted codec of that key
    for i, (codec, options) in enumerate(cands):
        if progress is not None:
            progress(i, len(cands), f"choose: {codec} {_config_text(options)}")
        if images is None and codec == "imgprior":
            continue
        key = _fit_key(codec, options)
        try:
            shared = fits.get(key)
            if shared is not None:
                enc = {o.name: options.get(o.name, o.default) for o in shared.options
                       if o.name in shared.encode_only_options}
                shared = shared.with_options(**enc)
            t = trial(sample, shape, fit_idx, held_idx, src.kind, images, n_total, codec, options, temps,
                      seed=seed, device=device, fitted=shared)
        except SlcodecError as exc:  # an option that does not fit this set (k >= C, a vq bound refused ...)
            trials.append(Trial(codec, options, math.inf, math.inf, math.inf, {}, {}, 0.0, 0.0, str(exc)))
            continue
        fits.setdefault(key, t.fitted)
        t.fitted = None
        trials.append(t)
        if log is not None:
            log(f"choose: {t.describe()}: {t.bits_per_label:.1f} bits/label, "
                + ", ".join(f"KL@{k} {v:.4g}" for k, v in t.kl.items()) + f", top-1 {100 * t.top1:.2f}%")
    if progress is not None:
        progress(len(cands), len(cands), "choose")
    ok = [t for t in trials if t.error is None]
    if not ok:
        raise ConfigError("no candidate codec could be fitted on this set: "
                          + "; ".join(f"{t.describe()}: {t.error}" for t in trials))
    within = [t for t in ok if t.bits_per_label <= budget * BITS_SAFETY]
    if objective == "fidelity" and within:
        best = min(within, key=lambda t: t.shortfall(target, allow_top1_loss))
        return Choice(best, True, [], budget, target, trials, f"best fidelity within {budget:g} bits/label")
    meeting = [t for t in within if not t.misses(target, allow_top1_loss, KL_SAFETY)]
    if meeting:
        best = min(meeting, key=lambda t: t.bits_per_label)
        return Choice(best, True, [], budget, target, trials,
                      f"fewest bits meeting {target_text(target)} within {budget:g} bits/label")
    if within:
        best = min(within, key=lambda t: t.shortfall(target, allow_top1_loss))
        reason = f"no candidate meets {target_text(target)} within {budget:g} bits/label: best fidelity within it"
    else:
        best = min(ok, key=lambda t: t.bits_per_label)
        reason = f"no candidate fits in {budget:g} bits/label: the fewest bits"
    missed = best.misses(target, allow_top1_loss) if objective == "bits" else []
    if best.bits_per_label > budget * BITS_SAFETY:
        missed.append(f"{best.bits_per_label:.1f} bits/label predicted > {budget:g}")
    return Choice(best, False, missed, budget, target, trials, reason)


def written_fidelity(path, src, temperatures, seed: int = 0, batch: int = 8192) -> dict:
    """Fidelity of the file ``path`` against its source ``src``: every label when the source fits
    in FIDELITY_ALL_BYTES as float32, else a random sample of FIDELITY_SAMPLE labels
    (``sampled`` says which)."""
    import torch
    from .reader import open as open_reader
    rows = src.rows()
    n = rows.shape[0]
    sampled = n * src.classes * 4 > FIDELITY_ALL_BYTES and n > FIDELITY_SAMPLE
    idx = (np.sort(np.random.default_rng(seed).choice(n, FIDELITY_SAMPLE, replace=False)) if sampled
           else np.arange(n))
    parts_p, parts_q = [], []
    with open_reader(path) as r:
        for s in range(0, idx.size, batch):
            part = idx[s:s + batch]
            p = rows[part[0]:part[-1] + 1] if not sampled else rows[part]
            parts_p.append(log_space(np.asarray(p, dtype=np.float32).reshape(-1, src.classes), src.kind))
            parts_q.append(r.decode(part.tolist(), as_="log_probs"))
    out = fidelity(torch.cat(parts_p), torch.cat(parts_q), temperatures)
    out["sampled"] = bool(sampled)
    out["of_labels"] = int(n)
    return out


def fidelity_line(fid: dict, choice_text: str) -> str:
    """One line: KL mean/p99 per temperature, top-1, top-5 (and on how many labels), the choice."""
    kls = ", ".join(f"KL@T={k} {fid['kl'][k]:.4g} (p99 {fid['kl_p99'][k]:.4g})" for k in fid["kl"])
    on = (f"a random sample of {fid['labels']:,} of {fid['of_labels']:,} labels" if fid.get("sampled")
          else f"all {fid['labels']:,} labels")
    return (f"fidelity on {on}: {kls}, top-1 {100 * fid['top1']:.2f}%, top-5 {100 * fid['top5']:.2f}%; "
            f"{choice_text}")


def resolve_target(max_kl_texts, max_bits, classes: int):
    """(target, budget) from the ``--max-kl`` texts (none: the default target) and ``--max-bits``
    (None: 2% of FP16, at least 10 bits)."""
    target = tuple(parse_max_kl(t) for t in max_kl_texts) if max_kl_texts else DEFAULT_TARGET
    budget = default_budget(classes) if max_bits is None else float(max_bits)
    if not (math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--max-bits must be a positive number, got {max_bits}")
    return target, budget


def unmet_text(choice: Choice) -> str:
    """Why an explicit target cannot be met: the best fidelity reached and its bits."""
    t = choice.trial
    kls = ", ".join(f"KL@T={k} {v:.4g}" for k, v in t.kl.items())
    goal = target_text(choice.target) if choice.missed and not choice.missed[-1].endswith(
        f"> {choice.budget:g}") else "the budget"
    return (f"no candidate meets {goal} within {choice.budget:g} bits/label; best fidelity "
            f"reached: {kls}, top-1 {100 * t.top1:.2f}% at {t.bits_per_label:.1f} bits/label ({t.describe()}; "
            f"missed: {'; '.join(choice.missed)})")


def written_misses(fid: dict, bits_per_label: float, target, budget: float, allow_top1_loss: bool) -> list[str]:
    """What of the target and budget the written file misses, measured ([] when it meets them)."""
    out = []
    for kl, t in target:
        got = fid["kl"][_tkey(t)]
        if not got <= kl:
            out.append(f"KL@T={t:g} {got:.4g} > {kl:g} ({got / kl:.2f}x)")
    if not allow_top1_loss and fid["top1"] < 1.0:
        out.append(f"top-1 {100 * fid['top1']:.2f}% < 100%")
    if bits_per_label > budget:
        out.append(f"{bits_per_label:.1f} bits/label > {budget:g}")
    return out


def choice_text(choice: Choice | None, codec_id: str, stats: dict, target, budget: float,
                allow_top1_loss: bool, fid: dict) -> str:
    """The choice made, in a few words: codec and sizes, and the target met or missed (measured)."""
    from ..format.stats import format_config
    what = f"codec {codec_id} {format_config(stats['codec_resolved_config'])}"
    if choice is None:
        return f"{what} (given)"
    missed = written_misses(fid, stats["bits_per_label"], target, budget, allow_top1_loss)
    goal = f"{target_text(target)} " if target else ""
    verdict = (f"meets {goal}within {budget:g} bits/label" if not missed
               else f"misses {'; '.join(missed)} ({goal}budget {budget:g} bits/label)")
    return f"chosen: {what} of {len(choice.trials)} candidates, {verdict}"


def encode_summary(path, stats: dict, fid: dict | None, choice: Choice | None, target, budget: float,
                   allow_top1_loss: bool, seconds: float) -> dict:
    """The ``encode --json`` summary."""
    out = {"file": os.fspath(path), "file_bytes": stats["file_bytes"], "labels": stats["labels"],
           "bits_per_label": stats["bits_per_label"], "marginal_bits_per_label": stats["marginal_bits_per_label"],
           "fixed_bytes": stats["fixed_bytes"], "codec": stats["codec"],
           "codec_config": stats["codec_resolved_config"], "seconds": seconds,
           "target": [[kl, t] for kl, t in target], "budget_bits_per_label": budget,
           "allow_top1_loss": allow_top1_loss, "fidelity": fid, "chosen": choice is not None}
    if fid is not None:
        out["missed"] = written_misses(fid, stats["bits_per_label"], target, budget, allow_top1_loss)
    if choice is not None:
        out["choice"] = choice.as_dict()
    return out


def choose_codec(src, max_kl=None, max_bits=None, *, allow_top1_loss: bool = False, best_effort: bool = False,
                 seed: int = 0, device: str = "cpu", log=None) -> Choice:
    """:func:`choose` for :func:`slcodec.encode`: ``max_kl`` a "VALUE@T" text, a (VALUE, T) pair, a
    number (T = 1) or a list of them; ``max_bits`` the budget.  An explicit ``max_kl`` (or a
    budget nothing fits in) that no candidate is predicted to meet raises ConfigError naming the
    best fidelity reached, unless ``best_effort``."""
    if max_kl is None:
        texts = []
    elif isinstance(max_kl, (str, int, float)) or (isinstance(max_kl, tuple) and len(max_kl) == 2
                                                    and not isinstance(max_kl[0], (tuple, list, str))):
        texts = [max_kl]
    else:
        texts = list(max_kl)
    texts = [t if isinstance(t, str) else (f"{t[0]}@{t[1]}" if isinstance(t, (tuple, list)) else f"{t}@1")
             for t in texts]
    target, budget = resolve_target(texts, max_bits, src.classes)
    objective = "fidelity" if max_bits is not None and not texts else "bits"
    choice = choose(src, target, budget, allow_top1_loss=allow_top1_loss, seed=seed, device=device,
                    objective=objective, log=log)
    if (texts or max_bits is not None) and not choice.met and not best_effort:
        raise ConfigError(unmet_text(choice) + "; best_effort=True writes it")
    return choice


__all__ = ["choose", "choose_codec", "candidates", "parse_max_kl", "default_budget", "written_fidelity",
           "fidelity_line",
           "Choice", "Trial", "DEFAULT_TARGET"]
