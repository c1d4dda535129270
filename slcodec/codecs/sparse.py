"""``sparse``: the k most probable classes of each label with quantized log-probabilities, and a
tail shaped by a fitted prior - for large label spaces where a decoder cannot pay for itself.

A learned decoder needs a ``hidden x C`` output layer: at C = 10,000 that is ~1.3 MB, more than
the labels of a set of ten thousand language-model positions are worth. Top-k storage has no
such fixed part, but FKD spreads the left-over probability evenly over the C - k other
classes, and that is where almost all of its error is (word 3-gram labels: KL 1.86 nats at
k = 5). Here the left-over mass goes to the other classes in proportion to a prior fitted on
the set (their mean share of the tail), stored once as C bytes; the stored log-probabilities
take one byte each instead of FKD's two.

Streams (one row per label)
    ``ids`` ``[n, k]`` (uint16; uint32 when C > 65536): the k most probable classes in
    decreasing order (ties: the lower class id first), so ``ids[:, 0]`` is the argmax.
    ``gaps`` ``[n, k]`` uint8: ``gaps[:, 0] = round(-log p_top / step)``; for j >= 1
    ``gaps[:, j] = round((l_0 - log p_j) / step)`` with ``l_0 = -gaps[:, 0] * step``, clipped to
    1..255 (at least 1, so the top class stays strictly first).

Parameters
    ``prior`` ``[ceil(C / 2)]`` uint8 (``tail="prior"`` only): 4-bit levels
    ``u_c = round((max log w - log w_c) / prior_step)`` clipped to 0..15, class ``2i`` in the low
    nibble of byte i and class ``2i + 1`` in the high one (a zero high nibble when C is odd),
    where ``w_c`` is the probability mass class c receives on the fit sample outside each
    label's own top k; ``log w_c`` decodes as ``-u_c * prior_step`` (4-bit levels: half the bytes of 8 bits
    for nearly the exact prior's fidelity on the word 3-gram set, BENCHMARKS.md section 3).

    With ``prior_classes`` P (format 1.3; for small files, where C / 2 bytes are many bits per
    label): ``prior_ids`` ``[P]`` (the ``ids`` dtype, strictly increasing) lists the P classes
    with the most tail mass, and ``prior`` ``[ceil((P + 1) / 2)]`` holds P + 1 levels packed as
    above: those classes' in id order, then one level shared by every class not listed (the
    level of their mean mass).

Decoding (logits: log-values, normalised by the reader's softmax)
    ``l_0 = -gaps[0] * step``, ``l_j = l_0 - gaps[j] * step``; the tail mass
    ``R = max(1 - sum_j exp(l_j), 1e-6)``; every other class c gets
    ``log R + log w_c - log(sum of w over the classes not stored)`` (``tail="uniform"``:
    ``log R - log(C - k)``), capped at ``l_{k-1} - step / 2`` so no tail class outranks a stored one.
"""
from __future__ import annotations

import math

import numpy as np

from ..lazy_torch import lazy_import

from ..format import limits, rules
from ..errors import ConfigError, FormatError
from .base import Codec, Context, Option, block_rows, check_classes, check_decode_size, register
from .rules import Choice, Float, Int

torch = lazy_import("torch", globals())  # imported on first use: file checks need no torch

TAIL_FLOOR = 1e-6     # the left-over mass never decodes below this (quantized values may sum past 1)


def _ids_dtype(classes: int) -> np.dtype:
    return np.dtype(np.uint16) if classes <= 2**16 else np.dtype(np.uint32)


def _top_ids(logp: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest entries per row, ties to the lower class id on every device (a unique
    integer key: the bits of a non-negative float32 order like the float)."""
    p = logp.exp().clamp_min(0.0).contiguous()
    bits = p.view(torch.int32).to(torch.int64)
    key = (bits << 32) | (0xFFFFFFFF - torch.arange(p.shape[1], device=p.device))
    return torch.topk(key, k, dim=1, largest=True, sorted=True).indices


def _log_probs(labels: torch.Tensor, source_kind: str) -> torch.Tensor:
    x = labels.detach().to(torch.float32)
    if source_kind == "probs":
        x = torch.log(x.clamp_min(1e-30))
    return torch.log_softmax(x, dim=1)


@register
class SparseCodec(Codec):
    """Top-k classes with one-byte log-probabilities and a fitted tail prior (module docstring)."""

    codec_id = "sparse"
    decode_owns_output = True
    options = (
        Option("k", int, 8, "classes stored per label (the most probable, in decreasing order)",
               rule=Int(1, limits.MAX_CLASSES)),
        Option("step", float, 1 / 16, "quantization step of the stored log-probabilities (nats)",
               rule=Float(0.0, 4.0, lo_open=True)),
        Option("tail", str, "prior", "where the probability left over by the k classes goes: 'prior' "
               "(in proportion to a prior fitted on the set, C bytes) or 'uniform' (evenly, as FKD)",
               choices=("prior", "uniform"), rule=Choice(("prior", "uniform"))),
        Option("prior_step", float, 1.0, "quantization step of the stored 4-bit prior (nats; 16 levels)",
               rule=Float(0.0, 4.0, lo_open=True)),
        Option("prior_classes", int, None, "list only the P classes with the most tail mass in the prior "
               "(P ids + P/2 bytes; the rest share one level) instead of all C (C/2 bytes): for small files",
               rule=Int(1, limits.MAX_CLASSES, optional=True)),
        Option("fit_sample", int, 100_000, "labels the prior is fitted on (evenly spaced)",
               rule=Int(1, 1 << 40)),
    )

    def validate_config(self):
        # each value was checked by its option's rule (FORMAT.md, section sparse); the combinations here
        if self.config["prior_classes"] is not None and self.config["tail"] != "prior":
            raise ConfigError("sparse: prior_classes needs tail='prior'")
        self._prior = None        # uint8 levels as stored (packed)
        self._prior_ids = None    # the listed classes (prior_classes set), as stored
        self._prior_levels = None  # uint8 [C]: the prior's level of each class (None: no prior)
        self._log_w_t = None       # float32 torch [C] built from them on first use
        self._classes = None

    def _k(self, classes: int) -> int:
        check_classes(self.codec_id, classes)
        k = self.config["k"]
        if k >= classes:
            raise ConfigError(f"sparse: k={k} must be smaller than the number of classes ({classes})")
        p = self.config["prior_classes"]
        if p is not None and p >= classes:
            raise ConfigError(f"sparse: prior_classes={p} must be smaller than the number of classes ({classes})")
        if 255 * self.config["step"] < math.log(classes):
            # the top class's -log p (up to log C) must fit in 255 steps
            raise ConfigError(f"sparse: step {self.config['step']:g} is too fine for {classes} classes "
                              f"(255 * step must be >= log C = {math.log(classes):.2f})")
        return k

    def stream_specs(self, classes):
        k = self._k(classes)
        return {"ids": (_ids_dtype(classes).name, k), "gaps": ("uint8", k)}

    def decoded_kind(self, source_kind):
        return "logits"

    def format_minor(self):
        # the codec was added in format 1.2; a prior over listed classes in 1.3
        return 2 if self.config["prior_classes"] is None else 3

    def get_config(self):
        cfg = dict(self.config)
        if cfg["prior_classes"] is None:    # files without the feature keep their format-1.2 config
            del cfg["prior_classes"]
        return cfg

    @classmethod
    def from_config(cls, config):
        if "prior_classes" in config and config["prior_classes"] is None:
            raise ConfigError("sparse: a stored prior_classes must be an integer")
        return cls(**config)

    # ------------------------------------------------------------------ fit / params
    def fit(self, labels, ctx: Context):
        labels = torch.as_tensor(labels)
        C = labels.shape[1]
        k = self._k(C)
        self._classes = C
        if self.config["tail"] != "prior":
            return
        if labels.shape[0] < 1:
            raise ConfigError("sparse: cannot fit a prior on zero labels")
        w = torch.zeros(C, dtype=torch.float64)
        for s in range(0, labels.shape[0], 8192):
            lp = _log_probs(labels[s:s + 8192], ctx.source_kind)
            p = lp.exp().double()
            p.scatter_(1, _top_ids(lp, k), 0.0)          # only the mass each label leaves to its tail
            w += p.sum(0).cpu()
        P = self.config["prior_classes"]
        listed = None
        if P is not None:   # the P classes with the most tail mass (ties: lower id), in id order
            order = np.argsort(-w.numpy(), kind="stable")
            listed = np.sort(order[:P])
            rest = np.ones(C, dtype=bool)
            rest[listed] = False
            w = torch.cat([w[torch.from_numpy(listed)], w[torch.from_numpy(rest)].mean().view(1)])
        logw = torch.log(w.clamp_min(1e-300))
        u = torch.round((logw.max() - logw) / self.config["prior_step"]).clamp(0, 15).to(torch.uint8).numpy()
        if u.size % 2:
            u = np.append(u, np.uint8(0))
        ids = None if listed is None else listed.astype(_ids_dtype(C))
        self._set_prior((u[0::2] | (u[1::2] << 4)).astype(np.uint8), C, ids)
        self.fit_info = {"prior_bytes": int(self._prior.size + (0 if ids is None else ids.nbytes)),
                         "fit_rows": int(labels.shape[0])}

    def _set_prior(self, packed, classes, ids=None):
        self._prior, self._prior_ids = packed, ids
        self._prior_levels = self._log_w_t = None
        if packed is None:
            return
        u = np.empty(2 * packed.size, dtype=np.uint8)
        u[0::2], u[1::2] = packed & 15, packed >> 4
        if ids is not None:     # listed classes' levels, then the level of every other class
            full = np.full(classes, u[ids.size], dtype=np.uint8)
            full[ids.astype(np.int64)] = u[:ids.size]
            u = full
        self._prior_levels = u[:classes]

    @property
    def _log_w(self):
        """float32 torch [C]: log of the (unnormalised) prior, or None; built on first use so
        that checking a file (set_params) needs no torch."""
        if self._prior_levels is not None and self._log_w_t is None:
            self._log_w_t = -torch.from_numpy(self._prior_levels.astype(np.float32)) * self.config["prior_step"]
        return self._log_w_t

    def get_params(self):
        if self._prior is None:
            return {}
        out = {"prior": self._prior.copy()}
        if self._prior_ids is not None:
            out["prior_ids"] = self._prior_ids.copy()
        return out

    def set_params(self, params, ctx: Context):
        P = self.config["prior_classes"]
        want = set() if self.config["tail"] != "prior" else {"prior"} if P is None else {"prior", "prior_ids"}
        if set(params) != want:
            raise FormatError(f"sparse: parameters {sorted(params)} do not match the config "
                              f"(expected {sorted(want)})", rule=rules.CODEC_PARAMS)
        C = ctx.classes
        try:
            self._k(C)
        except ConfigError as exc:
            raise FormatError(str(exc), rule=rules.CODEC) from None
        if want:
            ids = None
            if P is not None:
                ids = params["prior_ids"]
                idt = _ids_dtype(C)
                if not isinstance(ids, np.ndarray) or ids.dtype != idt or ids.shape != (P,):
                    got = (getattr(ids, "dtype", type(ids).__name__), getattr(ids, "shape", None))
                    raise FormatError(f"sparse: parameter 'prior_ids' is {got}, expected {idt} ({P},)",
                                      rule=rules.CODEC_PARAMS)
                if int(ids.max()) >= C or (P > 1 and not bool((np.diff(ids.astype(np.int64)) > 0).all())):
                    raise FormatError("sparse: 'prior_ids' must be increasing class ids below C",
                                      rule=rules.CODEC_PARAMS)
                ids = np.ascontiguousarray(ids)
            levels = C if P is None else P + 1
            a = params["prior"]
            size = (levels + 1) // 2
            if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.shape != (size,):
                got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
                raise FormatError(f"sparse: parameter 'prior' is {got}, expected uint8 ({size},)",
                                  rule=rules.CODEC_PARAMS)
            if levels % 2 and a[-1] >> 4:
                raise FormatError("sparse: the unused high nibble of 'prior' is not zero", rule=rules.CODEC_PARAMS)
            self._set_prior(np.ascontiguousarray(a), C, ids)
        self._classes = C

    # ------------------------------------------------------------------ streams
    def encode(self, labels, ctx: Context):
        labels = torch.as_tensor(labels)
        C = labels.shape[1]
        k = self._k(C)
        if self.config["tail"] == "prior" and self._prior is None:
            raise ConfigError("sparse: tail='prior' needs a fit first")
        step = self.config["step"]
        lp = _log_probs(labels, ctx.source_kind)
        ids = _top_ids(lp, k)
        top = lp.gather(1, ids)
        gaps = torch.empty_like(top)
        gaps[:, 0] = torch.round(-top[:, 0] / step).clamp(0, 255)
        l0 = -gaps[:, :1] * step
        gaps[:, 1:] = torch.round((l0 - top[:, 1:]) / step).clamp(1, 255)
        return {"ids": ids.cpu().numpy().astype(_ids_dtype(C)),
                "gaps": gaps.cpu().numpy().astype(np.uint8)}

    def validate_streams(self, streams, classes):
        ids = np.asarray(streams["ids"])
        if ids.size and int(ids.max()) >= classes:
            raise FormatError(f"sparse: class id {int(ids.max())} out of range (classes={classes})",
                              rule=rules.CODEC_STREAMS)
        if ids.ndim == 2 and ids.shape[1] > 1 and bool((np.diff(np.sort(ids, axis=1), axis=1) == 0).any()):
            raise FormatError("sparse: a label lists the same class twice", rule=rules.CODEC_STREAMS)

    def decode(self, streams, ctx: Context):
        dev = torch.device(ctx.device)
        ids = streams["ids"].to(dev).long()
        gaps = streams["gaps"].to(dev, torch.float32)
        n, k = ids.shape
        C = ctx.classes or self._classes
        if n and not ctx.streams_checked and (
                int(ids.min()) < 0 or int(ids.max()) >= C
                or (k > 1 and bool((torch.sort(ids, dim=1).values.diff(dim=1) == 0).any()))):
            raise FormatError("sparse: class id out of range or repeated", rule=rules.CODEC_STREAMS)
        check_decode_size(self.codec_id, n, C)
        out = torch.empty((n, C), dtype=torch.float32, device=dev)
        lw = None if self._log_w is None else self._log_w.to(dev)
        br = block_rows(C)      # the [rows, C] temporaries of the prior tail, a block at a time
        for s in range(0, n, br):
            self._decode_block(ids[s:s + br], gaps[s:s + br], C, lw, out[s:s + br])
        return out

    def _decode_block(self, ids, gaps, C, lw, out):
        n, k = ids.shape
        step = self.config["step"]
        l0 = -gaps[:, :1] * step
        top = torch.cat([l0, l0 - gaps[:, 1:] * step], dim=1)              # [n, k] log-probabilities
        log_rest = torch.log((1.0 - top.exp().sum(1, keepdim=True)).clamp_min(TAIL_FLOOR))
        if lw is None:
            out.copy_((log_rest - math.log(C - k)).expand(n, C))
        else:
            a = (lw - lw.max()).expand(n, C)
            # the prior mass of the classes not stored, summed over them (a difference of sums
            # would lose it when k is close to C)
            left = a.exp().scatter(1, ids, 0.0).sum(1, keepdim=True).clamp_min(1e-30)
            torch.add(a, log_rest - torch.log(left), out=out)
        torch.minimum(out, top[:, -1:] - 0.5 * step, out=out)
        out.scatter_(1, ids, top)
