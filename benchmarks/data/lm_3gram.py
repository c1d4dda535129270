#!/usr/bin/env python3
"""Language-model soft labels for slcodec benchmarks: next-word distributions of a word 3-gram model.

Produces ``[N, V]`` float32 log-probabilities (natural log, renormalised over the vocabulary
with a log-softmax): the next-word distribution of the CMU Sphinx US-English 3-gram model for
N two-word contexts taken from English text, over the V most frequent words of the model.

Model
    ``apt-get install -y pocketsphinx-en-us sphinxbase-utils python3-sphinxbase`` gives
    ``/usr/share/pocketsphinx/model/en-us/en-us.lm.bin`` (72,547 unigrams) and the Python
    binding. The binding is a Debian package for the system python3 (3.11 here); it is loaded
    by appending ``/usr/lib/python3/dist-packages`` to ``sys.path``, which works from any
    CPython 3.11 that has numpy (the extension is built for the cpython-311 ABI). Run this
    script with such an interpreter (``--check`` tells whether the binding imports).
    ``lm.prob([w, prev1, prev2])`` takes the history in REVERSE order (most recent word
    first) and returns log base 1.0001; we multiply by ln(1.0001) for nats. History words
    that the model does not know back off to the shorter history (the model's own rule).

Vocabulary
    The ``--vocab`` (10,000) words with the highest unigram log-probability in the 1-gram
    section of ``sphinx_lm_convert -i en-us.lm.bin -ofmt arpa`` (ties broken by the order
    of the ARPA file, i.e. alphabetically); ``<s>`` (log10 p = -99, never predicted) is
    excluded, ``</s>`` (end of sentence) is kept as a token. sphinx_lm_convert stops on an
    assertion while writing the 2-grams, and its last, unflushed stdio buffer (< 4 KiB) is
    lost, which cuts the 1-gram list a few dozen to a hundred-odd words short at the end of the
    alphabet. The missing words are recovered from the pronunciation dictionary shipped with
    the model (``cmudict-en-us.dict``; every LM word has a pronunciation): each dictionary word
    that sorts after the last complete ARPA line and that the model knows (``lm.prob([w])``
    not the log-zero value) is added with its unigram log-probability from the model. The
    count is checked against the ``ngram 1=`` line of the ARPA header; a mismatch is an error.

Contexts
    All files in ``--text`` (default ``/usr/share/common-licenses``, sorted by name) are read
    as UTF-8, lower-cased, split into sentences at ``.!?;:`` followed by white space and at
    blank lines, and into words with the regex ``[a-z]+(?:'[a-z]+)?``. Every position t >= 1
    of ``[<s>] + words`` gives the context (words[t-2], words[t-1]) (only (<s>,) at the start
    of a sentence: a bigram history). Distinct contexts are kept in order of first
    appearance; ``--labels`` of them are drawn without replacement with
    ``np.random.default_rng(seed)`` and kept in text order.

Output
    ``--out PATH.npy`` float32 [N, V] log-probabilities (nats, each row log-sums-exp to 0),
    and ``PATH.json`` with the vocabulary, the contexts, the model file's sha256, timing,
    statistics and versions.

Example:
    python benchmarks/data/lm_3gram.py --labels 10000 --vocab 10000 --seed 0 \\
        --out benchmarks/.cache/lm3_10k.npy
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import sha256_file  # noqa: E402

MODEL_DIR = Path("/usr/share/pocketsphinx/model/en-us")
LM_PATH = MODEL_DIR / "en-us.lm.bin"
DICT_PATH = MODEL_DIR / "cmudict-en-us.dict"
BINDING_PATH = "/usr/lib/python3/dist-packages"
LN_BASE = math.log(1.0001)  # the model's log base 1.0001 -> nats
LOG_ZERO = -(1 << 29)       # what lm.prob returns for a word the model does not know
WORD_RE = re.compile(r"[a-z]+(?:'[a-z]+)?")
SENT_RE = re.compile(r"(?<=[.!?;:])\s+|\n\s*\n")


def load_binding():
    if BINDING_PATH not in sys.path:
        sys.path.append(BINDING_PATH)
    try:
        from sphinxbase import sphinxbase as sb
    except ImportError as exc:
        raise SystemExit(f"cannot import the sphinxbase binding from {BINDING_PATH} with "
                         f"{sys.executable} (Python {platform.python_version()}): {exc}. "
                         "Install python3-sphinxbase and run this script with a CPython of the "
                         "same minor version as /usr/bin/python3, with numpy installed.")
    return sb


# --------------------------------------------------------------------------- vocabulary
def arpa_unigrams(lm_path: Path) -> tuple[list[tuple[str, float]], int, str]:
    """(word, log10 p) of the 1-gram section as far as sphinx_lm_convert wrote it, the
    declared 1-gram count, and the tool's exit note."""
    with tempfile.TemporaryDirectory() as tmp:
        arpa = Path(tmp) / "lm.arpa"
        proc = subprocess.run(["sphinx_lm_convert", "-i", str(lm_path), "-o", str(arpa), "-ofmt", "arpa"],
                              capture_output=True, text=True)
        if not arpa.exists():
            raise SystemExit(f"sphinx_lm_convert wrote nothing (exit {proc.returncode}): {proc.stderr[-500:]}")
        text = arpa.read_text(encoding="utf-8", errors="replace")
    note = f"exit {proc.returncode}"
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        note += ": " + (last[-1] if last else "")
    m = re.search(r"^ngram 1=(\d+)$", text, re.M)
    if not m:
        raise SystemExit("no 'ngram 1=' line in the ARPA output")
    declared = int(m.group(1))
    section = text.split("\\1-grams:\n", 1)[1]
    complete = section.endswith("\n") or "\\2-grams:" in section
    section = section.split("\n\\2-grams:", 1)[0]
    lines = section.split("\n")
    if not complete:
        lines = lines[:-1]  # the last line was cut mid-write
    out = []
    for ln in lines:
        parts = ln.split()
        if len(parts) >= 2:
            out.append((parts[1], float(parts[0])))
    return out, declared, note


def full_unigrams(lm, lm_path: Path) -> tuple[list[tuple[str, float]], dict]:
    """All unigrams (word, log10 p): the ARPA list, completed from the dictionary if it was cut."""
    uni, declared, note = arpa_unigrams(lm_path)
    info = {"arpa_declared_unigrams": declared, "arpa_written_unigrams": len(uni), "sphinx_lm_convert": note}
    if len(uni) < declared:
        last = uni[-1][0]
        known = {w for w, _ in uni}
        extra = []
        seen = set()
        with open(DICT_PATH, encoding="utf-8", errors="replace") as f:
            for line in f:
                word = re.sub(r"\(\d+\)$", "", line.split(" ", 1)[0])
                if word <= last or word in known or word in seen:
                    continue
                seen.add(word)
                lp = lm.prob([word])
                if lp > LOG_ZERO // 2:
                    extra.append((word, lp * LN_BASE / math.log(10)))  # back to log10 like the ARPA list
        extra.sort()
        uni = uni + extra
        info["recovered_from_dictionary"] = [w for w, _ in extra]
    if len(uni) != declared:
        raise SystemExit(f"found {len(uni)} unigrams, the model declares {declared}")
    info["unigrams"] = len(uni)
    return uni, info


def top_vocab(unigrams: list[tuple[str, float]], size: int) -> list[str]:
    cand = [(lp, pos, w) for pos, (w, lp) in enumerate(unigrams) if w != "<s>"]
    cand.sort(key=lambda t: (-t[0], t[1]))
    return [w for _, _, w in cand[:size]]


# --------------------------------------------------------------------------- contexts
def text_contexts(text_dir: Path) -> tuple[list[tuple[str, ...]], list[str], int]:
    """Distinct (prev2, prev1) contexts (or (<s>,)) in order of first appearance, the files, positions."""
    files = sorted(p for p in glob.glob(str(text_dir / "*")) if os.path.isfile(p))
    seen, order, positions = set(), [], 0
    for path in files:
        text = Path(path).read_text(encoding="utf-8", errors="replace").lower()
        for sent in SENT_RE.split(text):
            words = WORD_RE.findall(sent)
            if not words:
                continue
            toks = ["<s>"] + words
            for t in range(1, len(toks)):
                positions += 1
                ctx = (toks[t - 2], toks[t - 1]) if t >= 2 else (toks[0],)
                if ctx not in seen:
                    seen.add(ctx)
                    order.append(ctx)
    return order, [os.path.basename(p) for p in files], positions


# --------------------------------------------------------------------------- labels
def next_word_logprobs(lm, vocab: list[str], contexts: list[tuple[str, ...]], progress_every: int = 1000):
    prob = lm.prob
    out = np.empty((len(contexts), len(vocab)), np.float32)
    raw = np.empty(len(vocab), np.float64)
    t0 = time.perf_counter()
    for r, ctx in enumerate(contexts):
        hist = list(reversed(ctx))  # most recent word first
        raw[:] = [prob([w] + hist) for w in vocab]
        z = raw * LN_BASE
        z -= z.max()
        out[r] = z - np.log(np.exp(z).sum())
        if (r + 1) % progress_every == 0 or r + 1 == len(contexts):
            el = time.perf_counter() - t0
            print(f"  {r + 1}/{len(contexts)} labels, {el:.1f}s ({1000 * el / (r + 1):.1f}s/1000)", flush=True)
    return out, time.perf_counter() - t0


def label_stats(logp: np.ndarray, raw_mass: np.ndarray) -> dict:
    p = np.exp(logp.astype(np.float64))
    top1 = p.max(1)
    ent = -(p * logp).sum(1)
    cum = np.cumsum(np.sort(p, axis=1)[:, ::-1], axis=1)
    k90 = (cum < 0.9).sum(1) + 1
    return {"n_labels": int(p.shape[0]), "vocab": int(p.shape[1]),
            "top1_prob_median": float(np.median(top1)), "entropy_nats_median": float(np.median(ent)),
            "words_for_90pct_mass_median": float(np.median(k90)),
            "distinct_argmax_words": int(len(np.unique(p.argmax(1)))),
            "model_mass_on_vocab_median": float(np.median(raw_mass)),
            "model_mass_on_vocab_min": float(raw_mass.min())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", type=int, default=10000, help="number of contexts (rows)")
    ap.add_argument("--vocab", type=int, default=10000, help="vocabulary size (most frequent words)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text", type=Path, default=Path("/usr/share/common-licenses"))
    ap.add_argument("--lm", type=Path, default=LM_PATH)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / ".cache" / "lm3_10k.npy")
    ap.add_argument("--check", action="store_true", help="only check that the binding imports and the model loads")
    args = ap.parse_args(argv)
    if args.out.suffix != ".npy":
        ap.error("--out must end in .npy")
    t_start = time.perf_counter()

    sb = load_binding()
    lm = sb.NGramModel(str(args.lm))
    print(f"loaded {args.lm} with {sys.executable} (Python {platform.python_version()})")
    if args.check:
        print("binding OK:", lm.prob(["york", "new"]) * LN_BASE, "nats for p(york | new)")
        return 0

    unigrams, uni_info = full_unigrams(lm, args.lm)
    vocab = top_vocab(unigrams, args.vocab)
    print(f"{uni_info['unigrams']} unigrams ({uni_info['arpa_written_unigrams']} from the ARPA output, "
          f"{len(uni_info.get('recovered_from_dictionary', []))} recovered from the dictionary); "
          f"vocabulary: top {len(vocab)}")

    contexts_all, files, positions = text_contexts(args.text)
    if len(contexts_all) < args.labels:
        raise SystemExit(f"only {len(contexts_all)} distinct contexts in {args.text}, {args.labels} asked")
    pick = np.sort(np.random.default_rng(args.seed).choice(len(contexts_all), args.labels, replace=False))
    contexts = [contexts_all[i] for i in pick]
    print(f"{positions} word positions, {len(contexts_all)} distinct contexts in {len(files)} files; "
          f"using {len(contexts)}")
    t_setup = time.perf_counter() - t_start

    logp, t_loop = next_word_logprobs(lm, vocab, contexts)
    # mass of the model's (unrenormalised) distribution that falls on the vocabulary
    raw_mass = np.array([math.fsum(math.exp(lm.prob([w] + list(reversed(ctx))) * LN_BASE) for w in vocab)
                         for ctx in contexts[:200]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npy")
    np.save(tmp, logp)
    os.replace(tmp, args.out)
    stats = label_stats(logp, raw_mass)
    stats["model_mass_on_vocab_note"] = "median/min over the first 200 contexts, before renormalisation"
    import importlib.metadata as md
    prov = {
        "description": "next-word log-probabilities (nats, log-softmax over the vocabulary) of the CMU Sphinx "
                       "US-English word 3-gram model for two-word contexts from English text; layout [context, word]",
        "file": args.out.name, "shape": list(logp.shape), "dtype": "float32", "values": "log_probs",
        "sha256": sha256_file(args.out),
        "model": {"file": str(args.lm), "sha256": sha256_file(args.lm), "package": "pocketsphinx-en-us",
                  "query": "lm.prob([w, prev1, prev2]) (reverse history), log base 1.0001 -> * ln(1.0001) nats"},
        "vocabulary_rule": "top --vocab unigrams by log10 p (ties: ARPA order), <s> excluded, </s> kept",
        "unigrams": uni_info,
        "vocabulary": vocab,
        "text": {"dir": str(args.text), "files": files, "word_positions": positions,
                 "distinct_contexts": len(contexts_all),
                 "tokenisation": "lower-case; sentences split at [.!?;:]+whitespace and blank lines; words "
                                 f"{WORD_RE.pattern}; context (w[t-2], w[t-1]) of [<s>]+words, (<s>,) at t=1"},
        "seed": args.seed, "selection": "np.random.default_rng(seed).choice(distinct, labels, replace=False), "
                                         "sorted (text order)",
        "contexts": [" ".join(c) for c in contexts],
        "statistics": stats,
        "versions": {"python": platform.python_version(), "executable": sys.executable, "numpy": np.__version__,
                     "python3-sphinxbase": _deb_version("python3-sphinxbase"),
                     "pocketsphinx-en-us": _deb_version("pocketsphinx-en-us")},
        "timing": {"total_s": round(time.perf_counter() - t_start, 2), "setup_s": round(t_setup, 2),
                   "labels_s": round(t_loop, 2), "s_per_1000_labels": round(1000 * t_loop / len(contexts), 2)},
        "command": "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:])),
    }
    del md
    args.out.with_suffix(".json").write_text(json.dumps(prov, indent=1) + "\n")
    print(f"wrote {args.out} {logp.shape} float32 and {args.out.with_suffix('.json').name} "
          f"in {prov['timing']['total_s']}s ({prov['timing']['s_per_1000_labels']}s/1000 labels)")
    print(f"stats: top-1 prob median {stats['top1_prob_median']:.3f}, entropy median "
          f"{stats['entropy_nats_median']:.2f} nats, words for 90% mass median "
          f"{stats['words_for_90pct_mass_median']:.0f}, distinct argmax {stats['distinct_argmax_words']}, "
          f"model mass on vocab median {stats['model_mass_on_vocab_median']:.3f}")
    return 0


def _deb_version(pkg: str):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
