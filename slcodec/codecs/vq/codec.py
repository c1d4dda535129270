"""The ``vq`` codec: options, streams, parameters and decoding (see the package docstring)."""
from __future__ import annotations

import dataclasses

import numpy as np

from ...lazy_torch import lazy_import

torch = lazy_import("torch", globals())
F = lazy_import("torch.nn.functional", globals(), "F")

from ...errors import ConfigError, FormatError
from ...format import limits, rules
from ..base import Codec, Context, Option, check_classes, check_decode_size, register
from ..rules import Choice, Float, FloatList, Int
from .config import (ARGMAX_BITS, MAX_CODEBOOK, MAX_CODES, MAX_DECODER_LAYERS, MAX_HIDDEN, MAX_MARGIN, TOP1_RANKS,
                     _opt_int, nominal_bits, rate_for_bits)
from .fit import FittingMixin
from .quant import PARAM_DTYPES, SCALE_SUFFIX, dequantise, stored_dtype, table_dtype, with_scales
from .networks import _Decoder, _nearest, _to_logits, logit_bound
from .prior import ImagePriorMixin, check_sparse_prior, sparse_prior_abs_bound
from .table import _FastDecoder
from .top1 import _apply_top1_lift_cpu, apply_top1, top1_symbols
from ..residual import MAX_LEVEL, decode_logits, encode_residual

#: log-probabilities the residual is computed from are clamped here (masked logits, zero probabilities)
RESIDUAL_LOG_FLOOR = -1e4
#: largest residual_step (nats): 127 steps of it span far beyond any label's range
MAX_RESIDUAL_STEP = 4.0


def _rows_ctx(ctx: Context, start: int, n: int) -> Context:
    """``ctx`` with ``rows`` cut to the batch ``[start, start + n)`` of the call's rows."""
    if ctx.rows is None:
        return ctx
    return dataclasses.replace(ctx, rows=np.asarray(ctx.rows)[start:start + n])


@register
class VQCodec(ImagePriorMixin, FittingMixin, Codec):
    """Learned product-VQ autoencoder with an argmax stream; see the module docstring."""

    codec_id = "vq"
    decode_owns_output = True
    encode_only_options = ("residual_k", "residual_step")
    options = (
        Option("bits", float, 48.0, "nominal marginal bits per label: M*log2(K) + 2 (argmax budget)",
               rule=Float(ARGMAX_BITS, MAX_CODES * 16 + ARGMAX_BITS, lo_open=True)),
        Option("codes", _opt_int, None, "number of codes M per label (overrides --bits)",
               rule=Int(1, MAX_CODES, optional=True)),
        Option("codebook_size", _opt_int, None, "entries K per codebook (overrides --bits)",
               rule=Int(2, MAX_CODEBOOK, optional=True)),
        Option("code_dim", int, 8, "dimension of each latent vector / codebook entry",
               rule=Int(1, 1024)),
        Option("hidden", _opt_int, None, "decoder (and encoder) hidden width (default: 256 for >= 256 "
               "classes, 64 below, where a wide decoder would cost more than the labels)",
               rule=Int(1, MAX_HIDDEN, optional=True)),
        Option("encoder_hidden", _opt_int, None, "encoder hidden width (not stored; default: hidden)",
               rule=Int(1, MAX_HIDDEN, optional=True)),
        Option("decoder_layers", int, 1, "residual hidden blocks of the decoder",
               rule=Int(0, MAX_DECODER_LAYERS)),
        Option("temperature", float, [1.0, 4.0], "training temperature(s) of the student; the loss is "
               "sum_T T^2 KL(p_T || q_T)", nargs="+",
               rule=FloatList(Float(1e-6, 1e6), 1, 16)),
        Option("margin", float, 0.01, "decoded logit[argmax] exceeds the others by at least this (nats)",
               rule=Float(0.0, MAX_MARGIN)),
        Option("top1_rule", str, "lift", "how decoding makes the stored top-1 class the argmax: lift its logit "
               "to the decoder's maximum + margin (default), or swap it with the maximum",
               choices=("swap", "lift"),
               rule=Choice(("swap", "lift"))),
        Option("fit_sample", int, 100_000, "fit on at most this many labels (deterministic subsample)",
               rule=Int(1, 1 << 40)),
        Option("steps", int, 3000, "training steps (warmup + VQ + finetune)",
               rule=Int(1, 1 << 30)),
        Option("train_batch", int, 512, "training batch size (labels per step)",
               rule=Int(1, 1 << 20)),
        Option("lr", float, 2e-3, "Adam learning rate (cosine decay)",
               rule=Float(0.0, 10.0, lo_open=True)),
        Option("warmup", float, 0.1, "fraction of steps as a plain autoencoder before k-means init",
               rule=Float(0.0, 1.0, hi_open=True)),
        Option("finetune", float, 0.25, "fraction of steps refitting the decoder on frozen indices",
               rule=Float(0.0, 1.0, hi_open=True)),
        Option("param_dtype", str, "auto", "dtype of the stored codebooks and decoder weights: int8 (one "
               "float32 scale per output channel, biases float16; format 1.5), float16 or float32; auto: int8 "
               "when its mean KL at T = 1 and at T = 4 on the fit sample is within 2 percent of float16's, else float16",
               choices=PARAM_DTYPES,
               rule=Choice(PARAM_DTYPES)),
        Option("encoder_input", str, "auto", "encoder first layer: dense over C, or embedding-bag of top-k",
               choices=("auto", "dense", "topk"),
               rule=Choice(("auto", "dense", "topk"))),
        Option("topk_input", int, 64, "classes fed to a top-k encoder",
               rule=Int(1, 65536)),
        Option("batch_rows", int, 8192, "rows per batch when encoding/decoding",
               rule=Int(1, 1 << 24)),
        Option("image_bias", str, "auto", "per-image prior: store each image's mean log-probabilities "
               "([images, C], param_dtype: on) or only its image_bias_k most likely classes at uint8 levels and "
               "one offset of a set-wide profile for the rest (sparse), and code only what each view adds to "
               "it; auto: for labels [images, augmentations, C], on when the exact table costs <= 1 bit per "
               "label (16*C/augmentations, e.g. C=10 with 300 views), else sparse when image_bias_k <= C/4 and "
               "it costs <= 8 bits per label (C=1000, k=64: from 196 views per image), else off; needs the "
               "per-image means of the whole set, which slcodec.encode computes (Writer users: "
               "Writer.set_image_means)",
               choices=("auto", "on", "sparse", "off"),
               rule=Choice(("auto", "on", "sparse", "off"))),
        Option("image_bias_k", int, 64, "classes listed per image by image_bias=sparse",
               rule=Int(1, 65536)),
        Option("residual_k", int, 0, "classes corrected per view on top of the decoder's output (format "
               "1.8): the residual_k classes whose log-probability the decoder gets most wrong, each a uint8 step "
               "from it, plus one step that carries the view's tail mass; lowers KL at T = 1 far more per bit "
               "than a larger code (BENCHMARKS.md section 17); 0: none",
               rule=Int(0, 65536)),
        Option("residual_step", float, 0.25, "step of the stored residual log-probabilities (nats; levels "
               "-127..127 stored as uint8 0..254)", rule=Float(0.0, MAX_RESIDUAL_STEP, lo_open=True)),
        Option("rank_weight", float, 0.0, "fitting only: weight of a hinge loss that ranks the teacher's top "
               "class first in the decoder's own logits (fewer top-1 fix-ups: smaller top1 stream, faster decode)",
               rule=Float(0.0, 1e6)),
        Option("fit_threads", int, 0, "torch CPU threads while fitting, restored after (0: torch's own "
               "count, normally one per core; 1 or 2 on a machine shared with other jobs)",
               rule=Int(0, 4096)),
    )

    # ------------------------------------------------------------------ config
    def validate_config(self):
        # each value was checked by its option's rule (FORMAT.md, section vq); the combinations here
        c = self.config
        if c["warmup"] + c["finetune"] >= 1:
            raise ConfigError("vq: warmup and finetune are fractions of steps with warmup + finetune < 1")
        self.M, self.K = rate_for_bits(c["bits"], c["codes"], c["codebook_size"])
        if not (1 <= self.M <= MAX_CODES and 2 <= self.K <= MAX_CODEBOOK):
            raise ConfigError(f"vq: bits {c['bits']:g} gives M={self.M} codes of K={self.K} entries "
                              f"(at most {MAX_CODES} codes of 2 .. {MAX_CODEBOOK} entries)")
        if c["hidden"] is not None:
            self._check_code_table(c["hidden"])
        self._params_np = None    # stored parameters (param_dtype numpy), decoder and codebooks
        self._dec_t = None        # _Decoder of them (float32 torch), built on first use
        self._fast = {}           # device -> _FastDecoder
        self._enc = None          # _Encoder (only after fit)
        self._assign_cb = None    # codebooks the encoder searches (float32)
        self._classes = None
        self._image_means = None  # [images, C] float32 given by set_image_means (before fit)
        self._bias_np = None      # stored image_bias (param_dtype numpy) when on
        self._sparse_np = None    # stored sparse prior (image_prior_* numpy arrays) when sparse
        self._bias_t = None       # that table as float32 torch [images, C], built on first use
        self._bias_dev = {}       # device -> that table
        self._augs = None         # augmentations per image (labels.shape[1]) when image_bias is on

    def _table_dtype(self) -> str:
        """dtype of a stored image prior's float arrays: float32 in float32 files, float16 otherwise
        (int8 covers the decoder's weights only; ``auto`` is resolved after the prior is built)."""
        return table_dtype(self.config["param_dtype"]).name

    def _check_code_table(self, hidden):
        """The first-layer table a reader builds (``[M * K, hidden]`` float32) within its cap."""
        size = self.M * self.K * hidden * 4
        if size > limits.VQ_MAX_CODE_TABLE_BYTES:
            raise ConfigError(f"vq: M * K * hidden * 4 = {size:,} bytes (M={self.M}, K={self.K}, hidden={hidden}) "
                              f"exceeds the {limits.VQ_MAX_CODE_TABLE_BYTES:,}-byte limit of the decoder's code table")

    @property
    def nominal_bits(self) -> float:
        return nominal_bits(self.M, self.K)

    def _code_dtype(self):
        return "uint8" if self.K <= 256 else "uint16"

    def _residual_k(self, classes: int) -> int:
        k = self.config["residual_k"]
        if k and k >= classes:
            raise ConfigError(f"vq: residual_k={k} must be smaller than the number of classes ({classes})")
        return k

    def stream_specs(self, classes):
        check_classes(self.codec_id, classes)
        specs = {"top1": ("uint16" if classes + TOP1_RANKS <= 65536 else "uint32", 1),
                 "codes": (self._code_dtype(), self.M)}
        k = self._residual_k(classes)
        if k:   # format 1.8; uint8 levels (offset 127) so that the writer may rans-code them
            specs.update(residual_ids=("uint16" if classes <= 65536 else "uint32", k),
                         residual_levels=("uint8", k), residual_tail=("uint8", 1))
        return specs

    def decoded_kind(self, source_kind):
        return "logits"

    def get_config(self):
        cfg = dict(self.config)
        if cfg.get("image_bias") not in ("on", "sparse"):   # files without the feature keep their format-1.0 config
            cfg.pop("image_bias", None)
        if cfg.get("image_bias") != "sparse":   # 1.7: stored only with the sparse prior
            cfg.pop("image_bias_k", None)
        # fitting-only and added after 1.0: kept out of the stored config (a 1.1 reader rejects
        # unknown keys) and recorded in the fit info instead
        cfg.pop("rank_weight", None)
        if not cfg.get("residual_k"):   # 1.8: stored only with a residual
            cfg.pop("residual_k", None)
            cfg.pop("residual_step", None)
        return cfg

    def format_minor(self):
        if self.config["residual_k"]:   # format 1.8: the residual streams
            return 8
        minor = {"on": 2, "sparse": 7}.get(self.config["image_bias"], 0)
        if self.config["param_dtype"] == "int8":   # format 1.5: int8 weights with per-channel scales
            minor = max(minor, 5)
        return minor

    # ------------------------------------------------------------------ params
    def get_params(self):
        if self._params_np is None:
            return {}
        out = {k: v.copy() for k, v in self._params_np.items()}
        if self._bias_np is not None:
            out["image_bias"] = self._bias_np.copy()
        if self._sparse_np is not None:
            out.update({k: v.copy() for k, v in self._sparse_np.items()})
        return out

    def _set_decoder(self, params_np):
        self._params_np = params_np
        self._dec_t = None
        self._fast = {}

    # The torch forms of the stored arrays are built on first use, so that checking a file
    # (set_params, validate_streams: `slcodec verify`) needs no torch.
    @property
    def _dec(self):
        """The _Decoder of the stored parameters (param_dtype -> float32), or None before fit/set_params."""
        if self._dec_t is None and self._params_np is not None:
            self._dec_t = _Decoder({k: torch.from_numpy(v) for k, v in dequantise(self._params_np).items()})
        return self._dec_t

    @property
    def _bias(self):
        """The stored image_bias as float32 torch [images, C], or None when off."""
        if self._bias_t is None and self._bias_np is not None:
            self._bias_t = torch.from_numpy(self._bias_np.astype(np.float32))
        return self._bias_t

    def set_params(self, params, ctx: Context):
        cfg = self.config
        M, K, d, H, L = self.M, self.K, cfg["code_dim"], cfg["hidden"], cfg["decoder_layers"]
        if H is None:
            raise FormatError("vq: the config does not name the decoder's hidden width", rule=rules.CODEC)
        if "b_out" not in params or not isinstance(params["b_out"], np.ndarray) or params["b_out"].ndim != 1:
            raise FormatError("vq: parameter 'b_out' is missing or not a vector", rule=rules.CODEC_PARAMS)
        C = int(params["b_out"].shape[0])
        if ctx.classes and ctx.classes != C:
            raise FormatError(f"vq: parameters are for {C} classes, the file has {ctx.classes}",
                              rule=rules.CODEC_PARAMS)
        check_classes(self.codec_id, C)
        if cfg["residual_k"] >= C:
            raise FormatError(f"vq: residual_k={cfg['residual_k']} must be smaller than C = {C}", rule=rules.CODEC)
        # every bound of the config was checked already (decoder_layers <= 64: a few shapes to list)
        want = _Decoder.shapes(C, M, K, d, H, L)
        if cfg["param_dtype"] == "auto":   # a codec built in code (a file's config names its dtype): the params tell
            cfg["param_dtype"] = "int8" if "w_out" + SCALE_SUFFIX in params else str(params["b_out"].dtype)
            if cfg["param_dtype"] not in PARAM_DTYPES:
                raise FormatError(f"vq: parameter 'b_out' is {params['b_out'].dtype}, expected float16 or float32",
                                  rule=rules.CODEC_PARAMS)
        if cfg["param_dtype"] == "int8":   # format 1.5: each weight matrix and the codebooks have a scale array
            want = with_scales(want)
        ib = cfg["image_bias"]
        if ib == "auto":   # a codec built in code (a file's config says on, sparse or nothing): the params tell
            ib = cfg["image_bias"] = ("on" if "image_bias" in params
                                      else "sparse" if "image_prior_ids" in params else "off")
        augs = None
        pdt = np.dtype(self._table_dtype())
        sparse = None
        if ib in ("on", "sparse"):
            shape = ctx.label_shape
            if shape is None or len(shape) != 2:
                raise FormatError("vq: image_bias needs labels shaped [images, augmentations, C]",
                                  rule=rules.CODEC_PARAMS)
            augs = int(shape[1])
            if ib == "on":
                want = dict(want, image_bias=(int(shape[0]), C))
            else:
                k = cfg["image_bias_k"]
                if k >= C:
                    raise FormatError(f"vq: image_bias_k={k} must be smaller than C = {C}", rule=rules.CODEC)
                names = ("image_prior_ids", "image_prior_levels", "image_prior_offset", "image_prior_profile")
                if set(params) != set(want) | set(names):
                    raise FormatError(f"vq: parameters {sorted(params)} do not match the config "
                                      f"(expected {sorted(set(want) | set(names))})", rule=rules.CODEC_PARAMS)
                check_sparse_prior(params, int(shape[0]), C, k, pdt)
                sparse = {n: np.ascontiguousarray(params[n]) for n in names}
                params = {n: v for n, v in params.items() if n not in names}
        if set(params) != set(want):
            raise FormatError(f"vq: parameters {sorted(params)} do not match the config "
                              f"(expected {sorted(want)})", rule=rules.CODEC_PARAMS)
        clean = {}
        for k, shp in want.items():
            a, dt = params[k], stored_dtype(k, cfg["param_dtype"])
            if not isinstance(a, np.ndarray) or a.dtype != dt or tuple(a.shape) != shp:
                got = (getattr(a, "dtype", type(a).__name__), getattr(a, "shape", None))
                raise FormatError(f"vq: parameter {k!r} is {got}, expected {dt} {shp}", rule=rules.CODEC_PARAMS)
            if dt.kind == "f" and not np.isfinite(a).all():
                raise FormatError(f"vq: parameter {k!r} has non-finite values", rule=rules.CODEC_PARAMS)
            if k.endswith(SCALE_SUFFIX) and not (a > 0).all():
                raise FormatError(f"vq: scale {k!r} has values <= 0 (an int8 parameter's scales are positive)",
                                  rule=rules.CODEC_PARAMS)
            clean[k] = np.ascontiguousarray(a)
        # the sparse prior's largest |row entry|: |profile| + |offset| or a level's depth (<= 64 nats)
        bound = logit_bound(clean if sparse is None else
                            dict(clean, image_bias=np.array([sparse_prior_abs_bound(sparse)])), L, cfg["margin"])
        if not bound <= limits.VQ_MAX_LOGIT_BOUND:   # also catches NaN from inf * 0
            raise FormatError(f"vq: the decoder's weights allow logits up to {bound:.3g}, beyond the "
                              f"{limits.VQ_MAX_LOGIT_BOUND:g} a reader accepts (float32 would overflow)",
                              rule=rules.CODEC_PARAMS)
        self._classes = C
        bias = clean.pop("image_bias", None)
        self._set_decoder(clean)
        if sparse is not None:
            self._set_sparse(sparse, augs)
        else:
            self._set_bias(bias, augs)

    # ------------------------------------------------------------------ streams
    def encode(self, labels, ctx: Context):
        if self._enc is None:
            raise ConfigError("vq: encode needs the encoder of a fit() in this process "
                              "(the file stores only what decoding needs)")
        dev = torch.device(ctx.device)
        labels = torch.as_tensor(labels)
        if labels.ndim != 2 or labels.shape[1] != self._classes:
            raise ConfigError(f"vq: labels must be [n, {self._classes}], got {list(labels.shape)}")
        n = labels.shape[0]
        specs = self.stream_specs(self._classes)
        top1 = np.empty((n, 1), dtype=specs["top1"][0])
        codes = np.empty((n, self.M), dtype=self._code_dtype())
        k, step = self._residual_k(self._classes), self.config["residual_step"]
        if k:
            res_ids = np.empty((n, k), dtype=specs["residual_ids"][0])
            res_levels = np.empty((n, k), dtype=np.uint8)
            res_tail = np.empty((n, 1), dtype=np.uint8)
        br = self._batch_rows()
        fast = self._fast_for(dev)
        with torch.no_grad():
            for i in range(0, n, br):
                x = _to_logits(labels[i:i + br].to(dev), ctx.source_kind)
                xmax, c = x.max(dim=1, keepdim=True)
                lp = torch.log_softmax(x, dim=1).clamp_min(RESIDUAL_LOG_FLOOR) if k else None
                b = self._bias_rows(_rows_ctx(ctx, i, x.shape[0]), x.shape[0], dev)
                if b is not None:
                    x = torch.log_softmax(x, dim=1) - b
                    xmax = x.max(dim=1, keepdim=True).values
                idx = _nearest(self._enc.infer(x, xmax), self._assign_cb)
                codes[i:i + br] = idx.cpu().numpy()
                z = fast(idx)
                if b is not None:
                    z += b
                if k:   # the classes the decoder gets most wrong, against its own log-probabilities
                    a = torch.log_softmax(z, dim=1)
                    ids, res, tail = encode_residual(lp, a, k, step)
                    z = decode_logits(a, ids, res, tail, step)
                    res_ids[i:i + br] = ids.cpu().numpy()
                    res_levels[i:i + br] = (res + MAX_LEVEL).cpu().numpy()
                    res_tail[i:i + br] = (tail + MAX_LEVEL).cpu().numpy()
                top1[i:i + br, 0] = top1_symbols(z, c).cpu().numpy()
                if ctx.progress:
                    ctx.progress(min(n, i + br), n, "vq encode")
        out = {"top1": top1, "codes": codes}
        if k:
            out.update(residual_ids=res_ids, residual_levels=res_levels, residual_tail=res_tail)
        return out

    def _batch_rows(self):
        """Rows per encode/decode batch: ``batch_rows``, capped so that a [rows, C] float32 block (and a
        [rows, hidden] one) is at most DECODE_BLOCK_BYTES."""
        widest = max(1, self._classes or 1, self.config["hidden"] or 1)
        return max(1, min(self.config["batch_rows"], limits.DECODE_BLOCK_BYTES // (4 * widest)))

    def _fast_for(self, dev):
        key = str(dev)
        if key not in self._fast:
            self._fast[key] = _FastDecoder(self._dec, dev)
        return self._fast[key]

    @classmethod
    def from_config(cls, config):
        # Files written before the top1_rule option existed were decoded with "lift"; keep that
        # even if the option's default ever changes.
        config = dict(config)
        config.setdefault("top1_rule", "lift")
        config.setdefault("image_bias", "off")   # absent before format 1.2: no image prior
        if config["image_bias"] == "auto":
            raise ConfigError("vq: a stored image_bias must be on, sparse or off, not auto")
        config.setdefault("param_dtype", "float16")   # the only dtype before the option existed
        if config["param_dtype"] == "auto":
            raise ConfigError("vq: a stored param_dtype must be int8, float16 or float32, not auto")
        if "image_bias_k" in config and config["image_bias"] != "sparse":
            raise ConfigError("vq: image_bias_k is stored only with image_bias=sparse")
        if "residual_k" in config and not config["residual_k"] or "residual_step" in config and "residual_k" not in config:
            raise ConfigError("vq: residual_k and residual_step are stored only with a residual (residual_k >= 1)")
        return cls(**config)

    def validate_streams(self, streams, classes):
        codes, v = np.asarray(streams["codes"]), np.asarray(streams["top1"]).reshape(-1)
        if codes.size and int(codes.max()) >= self.K:
            raise FormatError(f"vq: code {int(codes.max())} out of range (codebook size {self.K})",
                              rule=rules.CODEC_STREAMS)
        if v.size and (int(v.max()) >= TOP1_RANKS + classes
                       or bool(((v >= classes) & (v < TOP1_RANKS)).any())):
            raise FormatError("vq: top1 value out of range", rule=rules.CODEC_STREAMS)
        if "residual_ids" in streams:
            self._check_residual(np.asarray(streams["residual_ids"]), np.asarray(streams["residual_levels"]),
                                 np.asarray(streams["residual_tail"]), classes)

    @staticmethod
    def _check_residual(ids, levels, tail, classes):
        """The residual streams' rules (format 1.8): ids < C and no class twice in a row, levels <= 254."""
        if ids.size and int(ids.max()) >= classes:
            raise FormatError(f"vq: residual class id {int(ids.max())} out of range (classes={classes})",
                              rule=rules.CODEC_STREAMS)
        if ids.ndim == 2 and ids.shape[1] > 1 and bool((np.diff(np.sort(ids, axis=1), axis=1) == 0).any()):
            raise FormatError("vq: a label lists the same residual class twice", rule=rules.CODEC_STREAMS)
        for name, v in (("residual_levels", levels), ("residual_tail", tail)):
            if v.size and int(v.max()) > 2 * MAX_LEVEL:
                raise FormatError(f"vq: {name} value {int(v.max())} is not a level (0..254)", rule=rules.CODEC_STREAMS)

    def decode(self, streams, ctx: Context):
        if self._dec is None:
            raise ConfigError("vq: decode needs parameters (fit or set_params first)")
        dev = torch.device(ctx.device)
        v = torch.as_tensor(streams["top1"]).to(dev).reshape(-1).long()
        idx = torch.as_tensor(streams["codes"]).to(dev).long()
        n = v.shape[0]
        check_decode_size(self.codec_id, n, self._classes)
        if idx.shape != (n, self.M):
            raise FormatError(f"vq: codes stream is {list(idx.shape)}, expected [{n}, {self.M}]",
                              rule=rules.CODEC_STREAMS)
        if n and not ctx.streams_checked and (int(idx.min()) < 0 or int(idx.max()) >= self.K
                  or int(v.min()) < 0 or int(v.max()) >= TOP1_RANKS + self._classes
                  or bool(((v >= self._classes) & (v < TOP1_RANKS)).any())):
            raise FormatError("vq: stream value out of range", rule=rules.CODEC_STREAMS)
        k, step = self._residual_k(self._classes), self.config["residual_step"]
        if k:
            try:
                r_ids, r_lev, r_tail = (torch.as_tensor(streams[name]) for name in
                                        ("residual_ids", "residual_levels", "residual_tail"))
            except KeyError as exc:
                raise FormatError(f"vq: stream {exc} is missing (the config has residual_k={k})",
                                  rule=rules.CODEC_STREAMS) from None
            if r_ids.shape != (n, k) or r_lev.shape != (n, k) or r_tail.shape != (n, 1):
                raise FormatError(f"vq: residual streams are {list(r_ids.shape)}, {list(r_lev.shape)}, "
                                  f"{list(r_tail.shape)}, expected [{n}, {k}], [{n}, {k}], [{n}, 1]",
                                  rule=rules.CODEC_STREAMS)
            if n and not ctx.streams_checked:
                self._check_residual(r_ids.cpu().numpy(), r_lev.cpu().numpy(), r_tail.cpu().numpy(), self._classes)
            r_ids = r_ids.to(dev).long()
            r_lev = r_lev.to(dev, torch.float32) - MAX_LEVEL
            r_tail = r_tail.to(dev, torch.float32) - MAX_LEVEL
        fast = self._fast_for(dev)
        out = torch.empty((n, self._classes), dtype=torch.float32, device=dev)
        br = self._batch_rows()
        margin = self.config["margin"]
        for i in range(0, n, br):
            rows = None if fast.table is None else fast.table_rows(idx[i:i + br])
            z = fast(idx[i:i + br], out=out[i:i + br], rows=rows)
            b = self._bias_rows(_rows_ctx(ctx, i, z.shape[0]), z.shape[0], dev)
            if b is not None:
                z += b
            if k:   # format 1.8: the residual, on the decoder's log-probabilities
                s = slice(i, i + z.shape[0])
                z.copy_(decode_logits(torch.log_softmax(z, dim=1), r_ids[s], r_lev[s], r_tail[s], step))
            lift_cpu = dev.type == "cpu" and self.config["top1_rule"] == "lift" and z.is_contiguous()
            if lift_cpu and b is None and not k and fast.ranked_np is not None:
                fast.lift_top1(z, rows, v[i:i + br], margin)
            elif lift_cpu:
                _apply_top1_lift_cpu(z, v[i:i + br], margin)
            else:
                apply_top1(z, v[i:i + br], margin, self.config["top1_rule"], return_classes=False)
        return out
