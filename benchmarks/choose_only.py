"""The choice alone (no file written): every candidate's predicted bits per label and held-out
fidelity on a set, and what the no-flag ``slcodec encode`` would write.

    nice -n 19 python benchmarks/choose_only.py benchmarks/.cache/corpus_small.npy benchmarks/results/choose_corpus_small_choice.json
"""
import json, sys, time
from slcodec.pipeline.inputs import load_labels
from slcodec.pipeline import choose as ch
src = load_labels(sys.argv[1])
t0 = time.perf_counter()
c = ch.choose(src, seed=0, log=lambda m: print(m, flush=True))
print("SECONDS", time.perf_counter() - t0)
print("CHOICE", c.reason, c.trial.describe(), c.met, c.missed, c.trial.bits_per_label, flush=True)
json.dump(c.as_dict(), open(sys.argv[2], "w"), indent=1, default=str)
