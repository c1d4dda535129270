"""Fitting vq: warm-up autoencoder, k-means initialisation, VQ training with EMA codebooks and
dead-code restarts, then a finetune of the decoder on frozen indices."""
from __future__ import annotations

import math
import time

import numpy as np

from ...lazy_torch import lazy_import, no_grad

torch = lazy_import("torch", globals())
F = lazy_import("torch.nn.functional", globals(), "F")

from ...errors import ConfigError
from ...format import limits
from ..base import Context
from .config import DEFAULT_HIDDEN, DENSE_MAX_CLASSES, FIT_MAX_ELEMENTS, SMALL_C, SMALL_C_HIDDEN, TOP1_HINGE
from .networks import _Decoder, _Encoder, _lookup, _nearest, _to_logits, logit_bound
from .quant import INT8_CHECK_ROWS, INT8_CHECK_TEMPERATURES, INT8_MAX_KL_RATIO, dequantise
from .prior import sparse_prior_abs_bound
from .quant import quantise
from .top1 import train_top1


class FittingMixin:
    """The fitting part of :class:`~slcodec.codecs.vq.codec.VQCodec`."""

    def _log(self, ctx, msg):
        if ctx.log:
            ctx.log(msg)

    def fit(self, labels, ctx: Context):
        threads = self.config["fit_threads"]
        prev = torch.get_num_threads()
        if threads and ctx.device == "cpu" and threads != prev:
            torch.set_num_threads(threads)     # restored below; fewer threads help only when other
            try:                               # jobs compete for the cores (BENCHMARKS.md: fit threads)
                return self._fit(labels, ctx)
            finally:
                torch.set_num_threads(prev)
        return self._fit(labels, ctx)

    def _fit(self, labels, ctx: Context):
        t0 = time.perf_counter()
        tr = _Trainer(self, labels, ctx)
        idx_all = tr.train()
        params_np = self._stored_params(tr.dec, tr, idx_all)
        self._set_decoder(params_np)
        self.fit_info = tr.fit_info(idx_all, params_np, time.perf_counter() - t0)
        self._log(ctx, f"vq: fitted M={self.M} K={self.K} on {tr.n} labels in {self.fit_info['fit_seconds']:.1f}s, "
                       f"usage {self.fit_info['code_usage_mean']:.3f}, "
                       f"entropy {self.fit_info['index_entropy_total']:.2f} bits")

    def _stored_params(self, dec, tr=None, idx_all=None) -> dict:
        """The decoder rounded to the stored dtype (so the fitting process - its encoder's top1
        stream - decodes exactly as a reader will), refused when non-finite or when a reader would
        reject its logit bound.  ``param_dtype="auto"`` picks int8 or float16 here (quant.py)."""
        cfg = self.config
        f32 = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in dec.t.items()}
        self._param_choice = None
        if cfg["param_dtype"] == "auto":
            self._param_choice = choose_param_dtype(self, f32, tr, idx_all)
            cfg["param_dtype"] = self._param_choice["chosen"]
        if cfg["param_dtype"] == "int8":
            params_np = quantise(f32)
        else:
            params_np = {k: v.astype(cfg["param_dtype"]) for k, v in f32.items()}
        if not all(np.isfinite(a).all() for a in params_np.values()):
            raise ConfigError("vq: fitting diverged (non-finite decoder weights); try a smaller lr")
        pb = dict(params_np, **({} if self._bias_np is None else {"image_bias": self._bias_np}))
        if self._sparse_np is not None:   # the dequantised rows' largest |entry|, as a reader bounds it
            pb["image_bias"] = np.array([sparse_prior_abs_bound(self._sparse_np)])
        bound = logit_bound(pb, cfg["decoder_layers"], cfg["margin"])
        if not bound <= limits.VQ_MAX_LOGIT_BOUND:   # a reader would reject the file (FORMAT.md, vq)
            raise ConfigError(f"vq: the fitted decoder's weights allow logits up to {bound:.3g}, beyond the "
                              f"{limits.VQ_MAX_LOGIT_BOUND:g} a reader accepts; use fewer decoder_layers")
        return params_np

    @no_grad
    def _kmeans(self, enc, x, K, g, gc, dev, iters=15, max_rows=16384):
        n = x.shape[0]
        rows = torch.randperm(n, generator=gc)[:max_rows].to(dev)
        z = torch.cat([enc(x[rows[i:i + 4096]]) for i in range(0, len(rows), 4096)])   # [N, M, d]
        N, M, d = z.shape
        if N >= K:
            init = torch.stack([torch.randperm(N, generator=gc)[:K] for _ in range(M)], 1).to(dev)
            cb = z[init, torch.arange(M, device=dev)].transpose(0, 1).contiguous()          # [M, K, d]
        else:
            pick = torch.randint(0, N, (K, M), generator=gc).to(dev)
            cb = z[pick, torch.arange(M, device=dev)].transpose(0, 1).contiguous()
            cb = cb + 0.01 * z.std() * torch.randn(cb.shape, generator=g, device=dev)
        for _ in range(iters):
            idx = _nearest(z, cb)                                      # [N, M]
            oh = F.one_hot(idx, K).float()
            cnt = oh.sum(0)                                            # [M, K]
            sm = torch.einsum("nmk,nmd->mkd", oh, z)
            upd = sm / cnt.clamp(min=1).unsqueeze(-1)
            cb = torch.where((cnt > 0).unsqueeze(-1), upd, cb)
        return cb

    @no_grad
    def _assign(self, x, dev):
        out = []
        br = self._batch_rows()
        for i in range(0, x.shape[0], br):
            z = self._enc.infer(x[i:i + br])
            out.append(_nearest(z, self._assign_cb))
        return torch.cat(out) if out else torch.zeros((0, self.M), dtype=torch.long, device=dev)


@no_grad
def choose_param_dtype(codec, f32: dict, tr, idx_all) -> dict:
    """``param_dtype="auto"``: int8 when the int8 decoder's mean KL at T = 1 and at T = 4 on (at
    most INT8_CHECK_ROWS evenly spaced rows of) the fit sample is within INT8_MAX_KL_RATIO of the
    float16 decoder's, both decoding as a reader does (image prior added, top-1 rule applied) on
    the sample's frozen codes; float16 otherwise.  Returns the decision and the KL it rests on."""
    out = {"temperatures": list(INT8_CHECK_TEMPERATURES), "max_kl_ratio": INT8_MAX_KL_RATIO}
    if tr is None or idx_all is None or tr.n == 0:
        return dict(out, chosen="float16", rows=0, reason="no fit sample")
    sel = torch.arange(0, tr.n, max(1, -(-tr.n // INT8_CHECK_ROWS)), device=tr.dev)
    cfg = codec.config
    cand = {"float16": {k: v.astype(np.float16) for k, v in f32.items()}, "int8": quantise(f32)}
    for name, stored in cand.items():
        dec = _Decoder({k: torch.from_numpy(v).to(tr.dev) for k, v in dequantise(stored).items()})
        kl = np.zeros(len(INT8_CHECK_TEMPERATURES))
        for i in range(0, sel.numel(), 4096):
            bi = sel[i:i + 4096]
            z = dec.forward(_lookup(dec.t["codebooks"], idx_all[bi]).reshape(bi.numel(), -1))
            if tr.b_all is not None:
                z = z + tr.b_all[bi]
            z = train_top1(z, tr.cls_all[bi], cfg["margin"], cfg["top1_rule"])
            for j, T in enumerate(INT8_CHECK_TEMPERATURES):
                lp = torch.log_softmax(tr.x[bi] / T, dim=1)
                kl[j] += float((lp.exp() * (lp - torch.log_softmax(z / T, dim=1))).sum())
        out["kl_" + name] = [float(v / sel.numel()) for v in kl]
    ok = all(k8 <= INT8_MAX_KL_RATIO * k16 for k8, k16 in zip(out["kl_int8"], out["kl_float16"]))
    return dict(out, chosen="int8" if ok else "float16", rows=int(sel.numel()))


def _lr_at(s, total, base):
    """Learning rate at step s of a phase of ``total`` steps: 100-step linear warm-up, cosine decay to 5%."""
    w = min(1.0, (s + 1) / 100.0)
    return base * w * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / max(1, total))))


class _Trainer:
    """One fit of a :class:`VQCodec`, phase by phase: the sample and its targets (``__init__``),
    warm-up + VQ training with EMA codebooks (:meth:`_vq_phase`), the finetune of the decoder on
    frozen indices (:meth:`_finetune_phase`).  Every random draw comes from two generators seeded
    by ``ctx.seed`` and is made in a fixed order, which is what makes a fit deterministic: keep
    the order of the draws when editing."""

    BETA, DECAY = 0.25, 0.99   # commitment weight; EMA decay of the codebook statistics

    def __init__(self, codec, labels, ctx: Context):
        self.codec, self.ctx = codec, ctx
        cfg = self.cfg = codec.config
        dev = self.dev = torch.device(ctx.device)
        self.g = torch.Generator(device=dev)
        self.g.manual_seed(int(ctx.seed))
        self.gc = torch.Generator()          # CPU generator for index sampling (device independent)
        self.gc.manual_seed(int(ctx.seed) + 1)
        labels = torch.as_tensor(labels)
        self.n_all, C = labels.shape
        if self.n_all < 1:
            raise ConfigError("vq: cannot fit on zero labels")
        if ctx.classes and ctx.classes != C:
            raise ConfigError(f"vq: labels have {C} classes, context says {ctx.classes}")
        fit_rows = min(cfg["fit_sample"], max(1024, FIT_MAX_ELEMENTS // C))
        if self.n_all > fit_rows:
            sel = torch.sort(torch.randperm(self.n_all, generator=self.gc)[:fit_rows]).values
            labels = labels[sel]
        bias_on = codec._resolve_image_bias(ctx, C, self.n_all)
        rows = np.asarray(ctx.rows, dtype=np.int64) if bias_on else None
        if self.n_all > fit_rows and rows is not None:
            rows = rows[sel.numpy()]
        self.x = _to_logits(labels.to(dev), ctx.source_kind)
        self.n = self.x.shape[0]
        # with image_bias the encoder sees, and the decoder adds back, each image's mean log-probs
        self.b_all = None
        self.x_in = self.x
        if bias_on:
            self.b_all = codec._image_rows(torch.as_tensor(rows // codec._augs, device=dev), dev)
            self.x_in = torch.log_softmax(self.x, dim=1) - self.b_all
        if cfg["hidden"] is None:  # resolved here, so the stored config names the width decoding needs
            cfg["hidden"] = SMALL_C_HIDDEN if C < SMALL_C else DEFAULT_HIDDEN
            codec._check_code_table(cfg["hidden"])
        self.M, self.K, self.d, H = codec.M, codec.K, cfg["code_dim"], cfg["hidden"]
        mode = self.mode = cfg["encoder_input"] if cfg["encoder_input"] != "auto" else (
            "dense" if C <= DENSE_MAX_CLASSES else "topk")
        codec._classes = C
        self.enc = _Encoder(C, self.M, self.d, cfg["encoder_hidden"] or H, mode, cfg["topk_input"], self.g, dev)
        self.enc.set_norm(self.x_in[: min(self.n, 20000)])
        self.dec = _Decoder.init(C, self.M, self.K, self.d, H, cfg["decoder_layers"], self.g, dev)
        self.cls_all = self.x.argmax(dim=1)
        steps = self.steps = cfg["steps"]
        self.n_warm = int(round(steps * cfg["warmup"]))
        self.n_ft = int(round(steps * cfg["finetune"]))
        self.n_vq = steps - self.n_warm - self.n_ft
        self.B = min(cfg["train_batch"], self.n)
        self.history = []
        self.restarts = 0
        self._batches = self._batch_indices()

    # ------------------------------------------------------------------ losses
    def _kl_loss(self, z, xb):
        """``sum_T T^2 KL(p_T || q_T)`` and the KL at each T."""
        tot, parts = 0.0, []
        for T in self.cfg["temperature"]:
            lp = torch.log_softmax(xb / T, dim=1)
            lq = torch.log_softmax(z / T, dim=1)
            kl = (lp.exp() * (lp - lq)).sum(1).mean()
            parts.append(kl)
            tot = tot + T * T * kl
        return tot, parts

    def _rank_loss(self, z, c):
        """Hinge pushing the true class above every other logit by TOP1_HINGE before the top-1
        fix: rows the decoder already ranks right cost no top1 bits and no decode work."""
        w = self.cfg["rank_weight"]
        if not w:
            return 0.0
        zc = z.gather(1, c.view(-1, 1))
        other = z.scatter(1, c.view(-1, 1), float("-inf")).max(dim=1, keepdim=True).values
        return w * F.relu(other - zc + TOP1_HINGE).mean()

    def _batch_loss(self, q_flat, bi):
        """Decode a batch as a reader will (image prior added, top-1 rule applied) and score it."""
        xb, cls = self.x[bi], self.cls_all[bi]
        out = self.dec.forward(q_flat)
        if self.b_all is not None:
            out = out + self.b_all[bi]
        rank = self._rank_loss(out, cls)
        loss, parts = self._kl_loss(train_top1(out, cls, self.cfg["margin"], self.cfg["top1_rule"]), xb)
        return loss + rank, parts

    def _batch_indices(self):
        while True:
            perm = torch.randperm(self.n, generator=self.gc).to(self.dev)
            for i in range(0, self.n - self.B + 1, self.B):
                yield perm[i:i + self.B]

    def _record(self, step, loss, parts):
        if step % 100 == 0 or step == self._phase_end - 1:
            self.history.append([self._phase_start + step, loss.item()] + [p.item() for p in parts])
        if self.ctx.progress:   # the loss as last recorded: reading it every step would sync a GPU
            self.ctx.progress(self._phase_start + step + 1, self.steps, f"vq fit: loss {self.history[-1][1]:.4f}")

    # ------------------------------------------------------------------ phases
    def train(self):
        """Run every phase; returns the frozen indices of the fit sample ``[n, M]``."""
        cb = self._vq_phase()
        codec = self.codec
        codec._assign_cb = cb.detach().clone()
        self.enc.freeze()
        codec._enc = self.enc
        idx_all = codec._assign(self.x_in, self.dev)
        self._finetune_phase(cb, idx_all)
        return idx_all

    def _vq_phase(self):
        """Warm-up as a plain autoencoder, then k-means codebooks and VQ training (straight-through)."""
        M, K, d, B, dev = self.M, self.K, self.d, self.B, self.dev
        params = self.enc.params() + [v for k, v in self.dec.t.items() if k != "codebooks"]
        opt = torch.optim.Adam(params, lr=self.cfg["lr"], foreach=True)
        total = self.n_warm + self.n_vq
        self._phase_start, self._phase_end = 0, total
        cb = self._ema = None
        for s in range(total):
            for pg in opt.param_groups:
                pg["lr"] = _lr_at(s, total, self.cfg["lr"])
            bi = next(self._batches)
            z = self.enc(self.x_in[bi])
            if s == self.n_warm:
                cb = self.codec._kmeans(self.enc, self.x_in, K, self.g, self.gc, dev)
                count = torch.full((M, K), B / K, device=dev)
                self._ema = (count, cb * count.unsqueeze(-1))
            if cb is None:
                q, commit = z, torch.zeros((), device=dev)
            else:
                with torch.no_grad():
                    idx = _nearest(z.detach(), cb)
                    qv = _lookup(cb, idx)
                q = z + (qv - z).detach()
                commit = self.BETA * ((z - qv) ** 2).sum(-1).mean()
            loss, parts = self._batch_loss(q.reshape(-1, M * d), bi)
            opt.zero_grad(set_to_none=True)
            (loss + commit).backward()
            opt.step()
            if cb is not None:
                cb = self._ema_update(s, idx, z.detach())
            self._record(s, loss, parts)
        if cb is None:   # no VQ steps at all (tiny configs): initialise from k-means
            cb = self.codec._kmeans(self.enc, self.x_in, K, self.g, self.gc, dev)
        return cb

    @no_grad
    def _ema_update(self, s, idx, z):
        """EMA codebook update from the batch's assignments; every 50 steps (but the last 100),
        codes whose usage fell below 1/20 of uniform are re-seeded from this batch's latents."""
        K, B, decay = self.K, self.B, self.DECAY
        ema_count, ema_sum = self._ema
        oh = F.one_hot(idx, K).float()                        # [B, M, K]
        ema_count.mul_(decay).add_(oh.sum(0), alpha=1 - decay)
        ema_sum.mul_(decay).add_(torch.einsum("bmk,bmd->mkd", oh, z), alpha=1 - decay)
        tot = ema_count.sum(1, keepdim=True)
        smooth = (ema_count + 1e-5) / (tot + K * 1e-5) * tot
        cb = ema_sum / smooth.unsqueeze(-1)
        if (s - self.n_warm) % 50 == 49 and s < self.n_warm + self.n_vq - 100:
            dead = ema_count < (B / K) / 20.0
            nd = int(dead.sum())
            if nd:
                self.restarts += nd
                pick = torch.randint(0, z.shape[0], (nd,), generator=self.gc).to(self.dev)
                newv = z[pick, dead.nonzero()[:, 0]]
                cb[dead] = newv
                ema_count[dead] = B / K
                ema_sum[dead] = newv * (B / K)
        return cb

    def _finetune_phase(self, cb, idx_all):
        """Indices frozen: refit the decoder and the stored codebook vectors (the encoder keeps the
        pre-finetune codebooks for its nearest-entry search)."""
        dec, base_lr = self.dec, self.cfg["lr"] * 0.5
        with torch.no_grad():
            dec.t["codebooks"] = cb.detach().clone()
        dec.t["codebooks"].requires_grad_()
        opt = torch.optim.Adam(list(dec.t.values()), lr=base_lr, foreach=True)
        self._phase_start, self._phase_end = self.n_warm + self.n_vq, self.n_ft
        for s in range(self.n_ft):
            for pg in opt.param_groups:
                pg["lr"] = _lr_at(s, self.n_ft, base_lr)
            bi = next(self._batches)
            qv = _lookup(dec.t["codebooks"], idx_all[bi])
            loss, parts = self._batch_loss(qv.reshape(-1, self.M * self.d), bi)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self._record(s, loss, parts)

    def fit_info(self, idx_all, params_np, seconds) -> dict:
        """What the fit did, for ``info --json`` (code usage and entropy, the loss history)."""
        M, K, codec, cfg = self.M, self.K, self.codec, self.cfg
        usage, ent = [], []
        cnt = torch.stack([torch.bincount(idx_all[:, m], minlength=K) for m in range(M)]).double()
        for m in range(M):
            pr = cnt[m] / cnt[m].sum()
            usage.append(float((cnt[m] > 0).double().mean()))
            nz = pr[pr > 0]
            ent.append(float(-(nz * nz.log2()).sum()))
        return {
            "M": M, "K": K, "code_dim": self.d, "encoder_input": self.mode,
            "nominal_bits": codec.nominal_bits, "raw_index_bits": M * math.log2(K),
            "fit_rows": int(self.n), "input_rows": int(self.n_all), "steps": self.steps,
            "code_usage": usage, "code_usage_mean": float(np.mean(usage)),
            "index_entropy_bits": ent, "index_entropy_total": float(sum(ent)),
            "dead_code_restarts": int(self.restarts),
            "loss_history": self.history,  # [step, loss, KL@T for T in temperature]
            "fit_seconds": seconds,
            "param_bytes": int(sum(a.nbytes for a in params_np.values())),
            "image_bias": cfg["image_bias"],
            "rank_weight": cfg["rank_weight"],
            "param_dtype": cfg["param_dtype"],
            "param_dtype_choice": getattr(codec, "_param_choice", None),   # auto: the KL it was decided on
            "image_bias_bytes": (int(codec._bias_np.nbytes) if codec._bias_np is not None else
                                 int(sum(a.nbytes for a in codec._sparse_np.values())) if codec._sparse_np is not None
                                 else 0),
        }
