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
        cfg = self.config
        dev = torch.device(ctx.device)
        g = torch.Generator(device=dev)
        g.manual_seed(int(ctx.seed))
        gc = torch.Generator()               # CPU generator for index sampling (device independent)
        gc.manual_seed(int(ctx.seed) + 1)
        labels = torch.as_tensor(labels)
        n_all, C = labels.shape
        if n_all < 1:
            raise ConfigError("vq: cannot fit on zero labels")
        if ctx.classes and ctx.classes != C:
            raise ConfigError(f"vq: labels have {C} classes, context says {ctx.classes}")
        fit_rows = min(cfg["fit_sample"], max(1024, FIT_MAX_ELEMENTS // C))
        if n_all > fit_rows:
            sel = torch.sort(torch.randperm(n_all, generator=gc)[:fit_rows]).values
            labels = labels[sel]
        bias_on = self._resolve_image_bias(ctx, C, n_all)
        rows = np.asarray(ctx.rows, dtype=np.int64) if bias_on else None
        if n_all > fit_rows and rows is not None:
            rows = rows[sel.numpy()]
        x = _to_logits(labels.to(dev), ctx.source_kind)
        n = x.shape[0]
        # with image_bias the encoder sees, and the decoder adds back, each image's mean log-probs
        b_all = None
        if bias_on:
            b_all = self._bias.to(dev)[torch.as_tensor(rows // self._augs, device=dev)]
            x_in = torch.log_softmax(x, dim=1) - b_all
        else:
            x_in = x
        if cfg["hidden"] is None:  # resolved here, so the stored config names the width decoding needs
            cfg["hidden"] = SMALL_C_HIDDEN if C < SMALL_C else DEFAULT_HIDDEN
            self._check_code_table(cfg["hidden"])
        M, K, d, H = self.M, self.K, cfg["code_dim"], cfg["hidden"]
        temps = cfg["temperature"]
        mode = cfg["encoder_input"]
        if mode == "auto":
            mode = "dense" if C <= DENSE_MAX_CLASSES else "topk"
        self._classes = C

        enc = _Encoder(C, M, d, cfg["encoder_hidden"] or H, mode, cfg["topk_input"], g, dev)
        enc.set_norm(x_in[: min(n, 20000)])
        dec = _Decoder.init(C, M, K, d, H, cfg["decoder_layers"], g, dev)
        cls_all = x.argmax(dim=1)
        # targets per temperature, computed per batch
        steps = cfg["steps"]
        n_warm = int(round(steps * cfg["warmup"]))
        n_ft = int(round(steps * cfg["finetune"]))
        n_vq = steps - n_warm - n_ft
        B = min(cfg["train_batch"], n)
        margin = cfg["margin"]
        beta, decay = 0.25, 0.99

        def kl_loss(z, xb):
            tot = 0.0
            parts = []
            for T in temps:
                lp = torch.log_softmax(xb / T, dim=1)
                lq = torch.log_softmax(z / T, dim=1)
                kl = (lp.exp() * (lp - lq)).sum(1).mean()
                parts.append(kl)
                tot = tot + T * T * kl
            return tot, parts

        rank_w = cfg["rank_weight"]

        def rank_loss(z, c):
            """Hinge pushing the true class above every other logit by TOP1_HINGE before the
            top-1 fix: rows the decoder already ranks right cost no top1 bits and no decode work."""
            if not rank_w:
                return 0.0
            zc = z.gather(1, c.view(-1, 1))
            other = z.scatter(1, c.view(-1, 1), float("-inf")).max(dim=1, keepdim=True).values
            return rank_w * F.relu(other - zc + TOP1_HINGE).mean()

        def batch_loss(q_flat, bi, xb, cls):
            """Decode a batch as a reader will (image prior added, top-1 rule applied) and score it."""
            out = dec.forward(q_flat)
            if b_all is not None:
                out = out + b_all[bi]
            rank = rank_loss(out, cls)
            loss, parts = kl_loss(train_top1(out, cls, margin, cfg["top1_rule"]), xb)
            return loss + rank, parts

        params = enc.params() + [v for k, v in dec.t.items() if k != "codebooks"]
        opt = torch.optim.Adam(params, lr=cfg["lr"], foreach=True)

        def lr_at(s, total, base):
            w = min(1.0, (s + 1) / 100.0)
            return base * w * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / max(1, total))))

        def batches():
            while True:
                perm = torch.randperm(n, generator=gc).to(dev)
                for i in range(0, n - B + 1, B):
                    yield perm[i:i + B]

        it = batches()
        cb = None
        ema_count = ema_sum = None
        history = []
        restarts = 0
        for s in range(n_warm + n_vq):
            for pg in opt.param_groups:
                pg["lr"] = lr_at(s, n_warm + n_vq, cfg["lr"])
            bi = next(it)
            xb, cb_cls = x[bi], cls_all[bi]
            z = enc(x_in[bi])
            if s == n_warm:
                cb = self._kmeans(enc, x_in, K, g, gc, dev)
                ema_count = torch.full((M, K), B / K, device=dev)
                ema_sum = cb * ema_count.unsqueeze(-1)
            if cb is None:
                q = z
                commit = torch.zeros((), device=dev)
            else:
                with torch.no_grad():
                    idx = _nearest(z.detach(), cb)
                    qv = _lookup(cb, idx)
                q = z + (qv - z).detach()
                commit = beta * ((z - qv) ** 2).sum(-1).mean()
            loss, parts = batch_loss(q.reshape(-1, M * d), bi, xb, cb_cls)
            opt.zero_grad(set_to_none=True)
            (loss + commit).backward()
            opt.step()
            if cb is not None:
                with torch.no_grad():
                    oh = F.one_hot(idx, K).float()                        # [B, M, K]
                    cnt = oh.sum(0)                                      # [M, K]
                    sm = torch.einsum("bmk,bmd->mkd", oh, z.detach())
                    ema_count.mul_(decay).add_(cnt, alpha=1 - decay)
                    ema_sum.mul_(decay).add_(sm, alpha=1 - decay)
                    tot = ema_count.sum(1, keepdim=True)
                    smooth = (ema_count + 1e-5) / (tot + K * 1e-5) * tot
                    cb = ema_sum / smooth.unsqueeze(-1)
                    if (s - n_warm) % 50 == 49 and s < n_warm + n_vq - 100:
                        dead = ema_count < (B / K) / 20.0
                        nd = int(dead.sum())
                        if nd:
                            restarts += nd
                            zd = z.detach()
                            pick = torch.randint(0, zd.shape[0], (nd,), generator=gc).to(dev)
                            mm = dead.nonzero()[:, 0]
                            newv = zd[pick, mm]
                            cb[dead] = newv
                            ema_count[dead] = B / K
                            ema_sum[dead] = newv * (B / K)
            if s % 100 == 0 or s == n_warm + n_vq - 1:
                history.append([s, loss.item()] + [p.item() for p in parts])
            if ctx.progress:   # the loss as last recorded: reading it every step would sync a GPU
                ctx.progress(s + 1, steps, f"vq fit: loss {history[-1][1]:.4f}")
        if cb is None:   # no VQ steps at all (tiny configs): initialise from k-means
            cb = self._kmeans(enc, x_in, K, g, gc, dev)

        # ---- finetune: freeze indices, refit decoder + stored codebook vectors
        self._assign_cb = cb.detach().clone()
        enc.freeze()
        self._enc = enc
        idx_all = self._assign(x_in, dev)
        with torch.no_grad():
            dec.t["codebooks"] = cb.detach().clone()
        dec.t["codebooks"].requires_grad_()
        dparams = list(dec.t.values())
        opt2 = torch.optim.Adam(dparams, lr=cfg["lr"] * 0.5, foreach=True)
        for s in range(n_ft):
            for pg in opt2.param_groups:
                pg["lr"] = lr_at(s, n_ft, cfg["lr"] * 0.5)
            bi = next(it)
            xb, cb_cls = x[bi], cls_all[bi]
            qv = _lookup(dec.t["codebooks"], idx_all[bi])
            loss, parts = batch_loss(qv.reshape(-1, M * d), bi, xb, cb_cls)
            opt2.zero_grad(set_to_none=True)
            loss.backward()
            opt2.step()
            if s % 100 == 0 or s == n_ft - 1:
                history.append([n_warm + n_vq + s, loss.item()] + [p.item() for p in parts])
            if ctx.progress:
                ctx.progress(n_warm + n_vq + s + 1, steps, f"vq fit: loss {history[-1][1]:.4f}")

        # round to the stored dtype so that the fitting process decodes exactly as a reader will
        pdt = getattr(np, cfg["param_dtype"])
        params_np = {k: v.detach().cpu().numpy().astype(pdt) for k, v in dec.t.items()}
        if not all(np.isfinite(a).all() for a in params_np.values()):
            raise ConfigError("vq: fitting diverged (non-finite decoder weights); try a smaller lr")
        pb = dict(params_np, **({} if self._bias_np is None else {"image_bias": self._bias_np}))
        bound = logit_bound(pb, cfg["decoder_layers"], cfg["margin"])
        if not bound <= limits.VQ_MAX_LOGIT_BOUND:   # a reader would reject the file (FORMAT.md, vq)
            raise ConfigError(f"vq: the fitted decoder's weights allow logits up to {bound:.3g}, beyond the "
                              f"{limits.VQ_MAX_LOGIT_BOUND:g} a reader accepts; use fewer decoder_layers")
        self._set_decoder(params_np)
        # fit statistics
        usage, ent = [], []
        cnt = torch.stack([torch.bincount(idx_all[:, m], minlength=K) for m in range(M)]).double()
        for m in range(M):
            pr = cnt[m] / cnt[m].sum()
            usage.append(float((cnt[m] > 0).double().mean()))
            nz = pr[pr > 0]
            ent.append(float(-(nz * nz.log2()).sum()))
        self.fit_info = {
            "M": M, "K": K, "code_dim": d, "encoder_input": mode,
            "nominal_bits": self.nominal_bits, "raw_index_bits": M * math.log2(K),
            "fit_rows": int(n), "input_rows": int(n_all), "steps": steps,
            "code_usage": usage, "code_usage_mean": float(np.mean(usage)),
            "index_entropy_bits": ent, "index_entropy_total": float(sum(ent)),
            "dead_code_restarts": int(restarts),
            "loss_history": history,  # [step, loss, KL@T for T in temperature]
            "fit_seconds": time.perf_counter() - t0,
            "param_bytes": int(sum(a.nbytes for a in params_np.values())),
            "image_bias": cfg["image_bias"],
            "rank_weight": cfg["rank_weight"],
            "image_bias_bytes": 0 if self._bias_np is None else int(self._bias_np.nbytes),
        }
        self._log(ctx, f"vq: fitted M={M} K={K} on {n} labels in {self.fit_info['fit_seconds']:.1f}s, "
                       f"usage {self.fit_info['code_usage_mean']:.3f}, "
                       f"entropy {self.fit_info['index_entropy_total']:.2f} bits")

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
