"""Long fuzz runs of the reader (the CI tests run a bounded count through hypothesis).

    nice -n 19 python benchmarks/fuzz.py --cases 100000 [--seed 0] [--workers 2] [--json OUT]
    nice -n 19 python benchmarks/fuzz.py --mode atheris --seconds 600 [--json OUT]
    python benchmarks/fuzz.py --mode bytes --cases 100000

--mode structural (the default; benchmarks/fuzz_structural.py): checksum-fixing structural
mutations (benchmarks/fuzz_mutate.py on the model of benchmarks/fuzz_model.py) of files of every
codec and of sharded sets; each case is opened, decoded whole and verified (and `info --json`
run on what verify accepts) in a worker process under a 4 GiB address-space limit, with a
10 s CPU-time limit per case; classes: accepted, rejected (slcodec's own errors), bug (any
other exception), hang, memory, false verdict, and accepted-but-breaks-a-rule (the
independent checker benchmarks/fuzz_check.py).  Failures are shrunk to the fewest mutation
steps and saved under benchmarks/results/fuzz_failures/.

--mode atheris: coverage-guided fuzzing (atheris / libFuzzer) of the same target, its inputs
mutated by libFuzzer's byte mutator and by the structural mutator (checksums fixed).

--mode bytes (the first fuzzer, in-process): each case mutates a golden file (byte flips, overwrites, truncations, insertions, deletions,
splices; 1-4 at a time), then opens it, decodes every label and verifies every byte.
Counted: rejected with FormatError (expected), accepted (must be the untouched file),
any other exception (a crash: a bug), cases over 5 s (a hang), the peak Python-tracked
allocation (tracemalloc, numpy included) relative to the file size (floored at 4 KiB), and
the rejections by FORMAT.md rule.
"""
import argparse
import os
import random
import signal
import sys
import tempfile
import time
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, os.path.join(HERE, ".."))



class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def random_mutations(rng, size):
    muts = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["flip", "set", "truncate", "insert", "delete", "splice"])
        pos = rng.randrange(size)
        arg = {"flip": lambda: rng.randint(1, 255),
               "set": lambda: bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))),
               "truncate": lambda: None,
               "insert": lambda: bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))),
               "delete": lambda: rng.randint(1, 64),
               "splice": lambda: rng.randrange(size)}[kind]()
        muts.append((kind, pos, arg))
    return muts


def bytes_main(args):
    # imported here: the atheris mode must import slcodec itself, under its instrumentation
    from slcodec.errors import FormatError
    from test_attacks import full_read
    from test_fuzz import SEEDS, apply
    rng = random.Random(args.seed)
    counts = {"rejected": 0, "accepted_unchanged": 0, "accepted_changed": 0, "crash": 0, "hang": 0}
    worst_ratio, crashes, rules, worst_case = 0.0, [], {}, None
    signal.signal(signal.SIGALRM, _alarm)
    names = sorted(SEEDS)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.vqsl")
        for original in SEEDS.values():  # warm up: imports (torch) happen outside the timed, traced cases
            with open(path, "wb") as f:
                f.write(original)
            full_read(path)
        for i in range(args.cases):
            original = SEEDS[names[i % len(names)]]
            data = apply(original, random_mutations(rng, len(original)))
            with open(path, "wb") as f:
                f.write(data)
            tracemalloc.start()
            signal.alarm(5)
            try:
                full_read(path)
                counts["accepted_unchanged" if data == original else "accepted_changed"] += 1
            except FormatError as exc:
                counts["rejected"] += 1
                rules[exc.rule] = rules.get(exc.rule, 0) + 1
            except Hang:
                counts["hang"] += 1
            except Exception as exc:  # noqa: BLE001 - that is what we are counting
                counts["crash"] += 1
                crashes.append(f"case {i}: {type(exc).__name__}: {exc}")
            finally:
                signal.alarm(0)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            # ratio to the file size, with a floor of one 4 KiB page for (truncated) tiny files
            if peak / max(len(data), 4096) > worst_ratio:
                worst_ratio, worst_case = peak / max(len(data), 4096), (i, peak, len(data))
            if (i + 1) % 10000 == 0:
                print(f"  {i + 1:,} cases, {time.perf_counter() - t0:.0f} s: {counts}", flush=True)
    elapsed = time.perf_counter() - t0
    print(f"fuzz: {args.cases:,} cases in {elapsed:.0f} s (seed {args.seed}) on {', '.join(names)}")
    for k, v in counts.items():
        print(f"  {k:<20} {v:,}")
    print(f"  peak traced allocation / max(file size, 4 KiB), worst case: {worst_ratio:.1f}x (case, bytes, file size: {worst_case})")
    print("  rejections by rule: " + ", ".join(f"{r} {n:,}" for r, n in sorted(rules.items(), key=lambda x: -x[1])))
    for c in crashes[:20]:
        print("  CRASH", c)
    return 1 if counts["crash"] or counts["hang"] or counts["accepted_changed"] else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["structural", "bytes", "atheris"], default="structural")
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="structural: worker processes (default 2)")
    ap.add_argument("--json", help="structural/atheris: write the figures here (also every 2,000 cases)")
    ap.add_argument("--failures", default=os.path.join(HERE, "results", "fuzz_failures"),
                    help="structural: where minimal reproducers of failures go")
    ap.add_argument("--seconds", type=int, default=600, help="atheris: run time")
    ap.add_argument("--replay", help="run one saved reproducer folder (its files, main.txt) and print the verdict")
    args = ap.parse_args()
    if args.replay:
        from fuzz_structural import replay
        return replay(args.replay)
    if args.mode == "bytes":
        return bytes_main(args)
    if args.mode == "atheris":
        from fuzz_structural import atheris_main
        return atheris_main(args)
    from fuzz_structural import structural_main
    return structural_main(args)


if __name__ == "__main__":
    sys.exit(main())
