"""The structural fuzzer of benchmarks/fuzz.py (see its docstring), and its atheris mode.

The target of every case is what a user does with a file: ``slcodec.open`` + decode every
label (probabilities, and logits when the codec decodes to logits), ``slcodec verify``, and
``slcodec info --json`` on what verify accepts.  It runs in worker processes (at most
``--workers``) whose address space is limited to 4 GiB (RLIMIT_AS); the parent reads each
worker's CPU time from /proc and kills a case after 10 s of CPU (the machine is shared, so
wall time would count other processes' work: a case also fails after 300 s of wall time).

Classes:
  accepted           open, decode and verify accept it, and the checker finds no broken rule
  rejected           a slcodec error (FormatError, ResourceError, ConfigError, SetReplacedError)
  bug                any other exception (or a worker killed by a signal)
  hang               over 10 s of CPU (or 300 s of wall time) in one case
  memory             MemoryError, an allocator failure, or "out of memory" reported by slcodec:
                     the case needed more than the 4 GiB address space
  false-verdict      verify says OK but open/decode reject it (FormatError), or verify
                     accepts it and `info --json` fails
  breaks-rule        accepted, but benchmarks/fuzz_check.py finds a MUST-reject rule it breaks
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "spec", "golden")
AS_LIMIT = 4 << 30
CPU_LIMIT_S = 10.0
WALL_LIMIT_S = 300.0
FAILURE_CLASSES = ("bug", "hang", "memory", "false-verdict", "breaks-rule")
CLASSES = ("accepted", "rejected") + FAILURE_CLASSES


# ------------------------------------------------------------------------------------- seeds
def golden_seeds() -> dict:
    """name -> (files {name: bytes}, main name): every golden file, the sharded set whole."""
    seeds = {}
    names = sorted(os.listdir(GOLDEN))
    for n in names:
        if not n.endswith(".vqsl") or "-0000" in n:
            continue
        files = {n: open(os.path.join(GOLDEN, n), "rb").read()}
        stem = n[:-len(".vqsl")]
        for m in names:
            if m.startswith(stem + "-") and m.endswith(".vqsl"):
                files[m] = open(os.path.join(GOLDEN, m), "rb").read()
        seeds[n] = (files, n)
    return seeds


def generated_seeds() -> dict:
    """Seeds no golden file covers, encoded now (deterministic): sparse with a uniform tail,
    topk with C > 65536 (uint32 ids), [N, C] labels, sharded sets of codecs with params, and the
    golden rans file split into shards (format 1.6 shards: required bits 1 and 2)."""
    import numpy as np

    import slcodec
    rng = np.random.default_rng(0)
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        def one(name, logits, shards=None, **kw):
            path = os.path.join(tmp, name, "s.vqsl")
            os.makedirs(os.path.dirname(path))
            slcodec.encode(logits, path, shards=shards, **kw)
            files = {f: open(os.path.join(os.path.dirname(path), f), "rb").read()
                     for f in os.listdir(os.path.dirname(path)) if f.endswith(".vqsl")}
            seeds[name] = (files, "s.vqsl")
        x = (rng.standard_normal((4, 3, 50)) * 3).astype(np.float32)
        one("gen-sparse-uniform", x, codec="sparse", k=3, tail="uniform")
        one("gen-topk-70000", (rng.standard_normal((3, 70000)) * 3).astype(np.float32), codec="topk", k=4)
        one("gen-fp32-2d", x.reshape(12, 50), codec="fp32")
        one("gen-imgprior-sharded", x, shards=3, codec="imgprior", residual_k=2)
        one("gen-sparse-prior-sharded", x.reshape(12, 50), shards=2, codec="sparse", k=2, prior_classes=8)
        one("gen-sq-sharded", x, shards=2, codec="sq", bits_per_class=2)
        # format 1.6 shards (required bits 1 and 2): the golden rans file split, image groups cut mid-image
        from slcodec.format.shards import split
        os.makedirs(os.path.join(tmp, "rans-sharded"))
        split(os.path.join(GOLDEN, "v1.6-vq-rans-logits.vqsl"), os.path.join(tmp, "rans-sharded", "s.vqsl"), shards=3)
        seeds["gen-vq-rans-sharded"] = ({f: open(os.path.join(tmp, "rans-sharded", f), "rb").read()
                                         for f in os.listdir(os.path.join(tmp, "rans-sharded"))}, "s.vqsl")
    return seeds


# ------------------------------------------------------------------------------------- the target
_PARSER = []


def _cli(argv) -> int:
    """``slcodec ARGV``'s exit code, as slcodec.cli.main gives it, with the parser built once
    (argparse takes ~25 ms to build it) and internal errors raised rather than printed."""
    from slcodec.cli import build_parser
    from slcodec.errors import SlcodecError
    if not _PARSER:
        _PARSER.append(build_parser(codec_options=False))
    args = _PARSER[0].parse_args(argv)
    try:
        return args.func(args)
    except SlcodecError as exc:
        print(f"slcodec: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("slcodec: error: out of memory", file=sys.stderr)
        return 2
    except OSError as exc:  # cli.main's answer to an OSError: one line, exit 2
        print(f"slcodec: error: {exc}", file=sys.stderr)
        return 2


def run_target(path: str) -> dict:
    """Open + decode all + verify + info; returns the verdicts (exceptions other than slcodec's
    propagate to the caller)."""
    import slcodec
    from slcodec.errors import FormatError, SlcodecError
    out = {"decode_error": None, "rule": None, "decoded": {}}
    try:
        with slcodec.open(path) as r:
            kind = "logits" if r.decoded_kind == "logits" else "probs"  # the codec's own output, unconverted
            out["decoded"][kind] = r.decode(None, as_=kind).numpy()
            shape = tuple(r.shape)
        for v in out["decoded"].values():
            if v.shape != shape:
                out["decode_error"] = f"decoded shape {v.shape} != labels shape {shape}"
    except SlcodecError as exc:
        out["decode_error"] = f"{type(exc).__name__}: {exc}"
        out["rule"] = exc.rule if isinstance(exc, FormatError) else type(exc).__name__
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        out["verify_rc"] = _cli(["verify", path])
    out["verify_err"] = err.getvalue().strip()[:300]
    if out["verify_rc"] == 0:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            out["info_rc"] = _cli(["info", "--json", path])
        out["info_err"] = err.getvalue().strip()[:300]
    return out


def classify(files: dict, main: str, path: str) -> tuple[str, str, str | None]:
    """(class, detail, rule) of one case whose files are already written beside ``path``."""
    from fuzz_check import decoded_problems, violations
    try:
        out = run_target(path)
    except MemoryError:
        return "memory", "MemoryError", None
    except BaseException as exc:  # noqa: BLE001 - that is what we are counting
        text = f"{type(exc).__name__}: {exc}"
        if "can't allocate memory" in text or "out of memory" in text.lower():
            return "memory", text[:300], None
        tb = traceback.format_exc(limit=-6)
        return "bug", (text[:300] + "\n" + tb)[:3000], None
    oom = "out of memory" in (out["decode_error"] or "") or "out of memory" in out["verify_err"]
    if oom:
        return "memory", (out["decode_error"] or out["verify_err"])[:300], None
    if out["decode_error"] is not None:
        if out["verify_rc"] == 0 and out["rule"] not in (None, "ResourceError", "external-params"):
            return "false-verdict", f"verify OK, decode: {out['decode_error']}"[:400], out["rule"]
        return "rejected", out["decode_error"][:200], out["rule"] or "decode"
    if out["verify_rc"] != 0:
        return "rejected", out["verify_err"][:200] or "verify INVALID", f"verify-exit-{out['verify_rc']}"
    if out.get("info_rc", 0) != 0:
        return "false-verdict", f"verify OK, info --json exit {out['info_rc']}: {out.get('info_err')}", None
    problems = violations(files, main)
    for kind, v in out["decoded"].items():
        problems += decoded_problems(v, kind)
    notes = [p for p in problems if p.startswith("note:")]
    problems = [p for p in problems if not p.startswith("note:")]
    if problems:
        return "breaks-rule", "; ".join(problems)[:600], None
    return "accepted", "; ".join(notes), None


def worker_main(conn, workdir: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    os.environ["SLCODEC_DEBUG"] = "1"  # the CLI raises its internal errors instead of printing them
    sys.path.insert(0, HERE)
    import slcodec  # noqa: F401 - imports happen before the first case
    import torch  # noqa: F401
    conn.send(("ready", os.getpid()))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        case_id, files, main = msg
        d = os.path.join(workdir, "case")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        t0 = time.process_time()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cls, detail, rule = classify(files, main, os.path.join(d, main))
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # the peak resident size, reported by the case that raised it (0: this case did not)
        conn.send((case_id, cls, detail, rule, time.process_time() - t0, rss1 * 1024 if rss1 > rss0 else 0))


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


class Worker:
    def __init__(self, ctx, workdir):
        self.workdir = workdir
        self.ctx = ctx
        self.start()

    def start(self):
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=worker_main, args=(child, self.workdir), daemon=True)
        self.proc.start()
        self.conn = parent
        msg = self.conn.recv()
        assert msg[0] == "ready"
        self.case = None

    def submit(self, case_id, files, main):
        self.conn.send((case_id, files, main))
        self.case = (case_id, time.monotonic(), _cpu_seconds(self.proc.pid))

    def kill_and_restart(self):
        self.proc.kill()
        self.proc.join()
        self.start()

    def stop(self):
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


class Pool:
    """Workers with per-case CPU/wall limits; :meth:`run` yields (case_id, class, detail, rule, cpu, rss)."""

    def __init__(self, n: int, root: str):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        self.workers = [Worker(ctx, os.path.join(root, f"w{i}")) for i in range(n)]
        for i in range(n):
            os.makedirs(os.path.join(root, f"w{i}"), exist_ok=True)

    def run(self, cases):
        """``cases``: an iterator of (case_id, files, main)."""
        from multiprocessing.connection import wait
        it = iter(cases)
        pending = True
        while True:
            for w in self.workers:
                if w.case is None and pending:
                    try:
                        cid, files, main = next(it)
                    except StopIteration:
                        pending = False
                        break
                    w.submit(cid, files, main)
            busy = [w for w in self.workers if w.case is not None]
            if not busy:
                return
            ready = wait([w.conn for w in busy], timeout=1.0)
            for w in busy:
                cid, t0, c0 = w.case
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        code = w.proc.exitcode
                        w.proc.join()
                        w.start()
                        yield cid, "bug", f"worker died (exit code {code})", None, 0.0, 0
                        continue
                    w.case = None
                    yield msg
                    continue
                cpu = _cpu_seconds(w.proc.pid) - c0
                wall = time.monotonic() - t0
                if not w.proc.is_alive():
                    code = w.proc.exitcode
                    w.start()
                    yield cid, "bug", f"worker died (exit code {code})", None, cpu, 0
                elif cpu > CPU_LIMIT_S or wall > WALL_LIMIT_S:
                    w.kill_and_restart()
                    yield cid, "hang", f"killed after {cpu:.1f} s CPU, {wall:.0f} s wall", None, cpu, 0

    def close(self):
        for w in self.workers:
            w.stop()


# ------------------------------------------------------------------------------------- the run
def _load(seed_files):
    from fuzz_mutate import load_seed
    return {name: load_seed(files, main) for name, (files, main) in seed_files.items()}


def case_plan(run_seed: int, i: int, seed_names: list[str]) -> tuple[str, list[int]]:
    """Case ``i``: which seed and the seeds of its mutation steps (1 step in half the cases)."""
    rng = random.Random(hashlib.sha256(f"{run_seed}/{i}".encode()).digest())
    name = seed_names[i % len(seed_names)]
    steps = [rng.randrange(2**32) for _ in range(rng.choices([1, 2, 3], [50, 30, 20])[0])]
    return name, steps


def structural_main(args) -> int:
    sys.path.insert(0, HERE)
    from fuzz_mutate import build, make_case
    print("seeds: golden files + generated ...", flush=True)
    seed_files = dict(golden_seeds())
    seed_files.update(generated_seeds())
    seeds = _load(seed_files)
    donors = [c.files[c.main] for c in seeds.values()]
    names = sorted(seeds)
    print(f"{len(names)} seeds: {', '.join(names)}", flush=True)
    counts = {c: 0 for c in CLASSES}
    rules, per_seed, per_mut = {}, {n: {c: 0 for c in CLASSES} for n in names}, {}
    failures = []
    worst = {"cpu_s": 0.0, "case": None}
    peak_rss = 0
    peak_case = None
    notes = {}
    plans = {}
    t0 = time.time()
    root = tempfile.mkdtemp(prefix="slcodec-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    pool = Pool(args.workers, root)
    print(f"workers ready ({time.time() - t0:.0f} s); running {args.cases:,} cases", flush=True)
    t_run = time.time()

    import signal

    class GenTimeout(Exception):
        pass

    def _gen_alarm(signum, frame):
        raise GenTimeout

    def gen():
        signal.signal(signal.SIGALRM, _gen_alarm)
        for i in range(args.cases):
            name, steps = case_plan(args.seed, i, names)
            signal.alarm(20)  # a mutation step of ours that runs away (the fuzzer's bug, not slcodec's)
            case, descs = seeds[name], []
            try:
                case, descs = make_case(seeds[name], steps, donors)
                files = build(case)
            except GenTimeout:
                case, descs = seeds[name], ["(generation over 20 s: the seed file unmutated)"]
                files = build(case.clone())
            except Exception as exc:  # noqa: BLE001 - the mutator's own limit (e.g. msgpack int range)
                files = {case.main: b""}
                descs = descs + [f"(build failed: {type(exc).__name__}; empty file)"]
            finally:
                signal.alarm(0)
            plans[i] = (name, steps, descs)
            yield i, files, case.main

    def summary(done):
        el = time.time() - t_run
        return {"cases": done, "seconds": round(el, 1), "cases_per_second": round(done / max(el, 1e-9), 1),
                "run_seed": args.seed, "workers": args.workers, "classes": counts,
                "rejections_by_rule": dict(sorted(rules.items(), key=lambda x: -x[1])),
                "accepted_notes": notes, "by_seed": per_seed, "by_mutation": per_mut, "worst_case_cpu_s": worst,
                "peak_worker_rss_bytes": peak_rss, "peak_rss_case": peak_case, "as_limit_bytes": AS_LIMIT, "cpu_limit_s": CPU_LIMIT_S,
                "failures": [{k: v for k, v in f.items() if k != "files"} for f in failures[:200]],
                "command": " ".join(["nice -n 19 python benchmarks/fuzz.py"] + sys.argv[1:])}

    done = 0

    def _term(signum, frame):
        raise KeyboardInterrupt  # a killed run still closes its workers and writes its figures
    signal.signal(signal.SIGTERM, _term)
    try:
        for cid, cls, detail, rule, cpu, rss in pool.run(gen()):
            name, steps, descs = plans.pop(cid)
            done += 1
            counts[cls] += 1
            per_seed[name][cls] += 1
            for d in descs:
                label = d.split("]", 1)[0].lstrip("[")
                per_mut.setdefault(label, {c: 0 for c in CLASSES})[cls] += 1
            if rule:
                rules[rule] = rules.get(rule, 0) + 1
            if cls == "accepted" and detail.startswith("note:"):
                notes[detail[:80]] = notes.get(detail[:80], 0) + 1
            if rss > peak_rss:
                peak_rss = rss
                peak_case = {"rss_bytes": rss, "case": cid, "seed": name, "mutations": descs}
            if cpu > worst["cpu_s"]:
                worst = {"cpu_s": round(cpu, 2), "case": cid, "seed": name, "mutations": descs}
            if cls in FAILURE_CLASSES:
                failures.append({"case": cid, "class": cls, "seed": name, "steps": steps, "mutations": descs,
                                 "detail": detail})
                print(f"  FAIL case {cid} {cls}: {name} {descs}: {detail[:300]}", flush=True)
            if done % 1000 == 0:
                el = time.time() - t_run
                print(f"  {done:,} cases, {el:.0f} s, {done / el:.1f}/s: " +
                      ", ".join(f"{k} {v:,}" for k, v in counts.items() if v), flush=True)
            if args.json and done % 2000 == 0:
                _write_json(args.json, summary(done))
    except KeyboardInterrupt:
        print(f"interrupted after {done:,} cases", flush=True)
    finally:
        pool.close()
    s = summary(done)
    print(f"structural fuzz: {done:,} cases in {s['seconds']:.0f} s ({s['cases_per_second']}/s, "
          f"{args.workers} workers, seed {args.seed})")
    for k, v in counts.items():
        print(f"  {k:<15} {v:,}")
    print(f"  slowest case: {worst['cpu_s']} s CPU; peak worker RSS {peak_rss / 2**20:.0f} MiB "
          f"(address space limit {AS_LIMIT >> 30} GiB)")
    print("  rejections by rule: " + ", ".join(f"{r} {n:,}" for r, n in s["rejections_by_rule"].items()))
    if failures:
        s["reproducers"] = save_reproducers(failures, seeds, donors, args.failures, pool_size=1, root=root)
    if args.json:
        _write_json(args.json, s)
    shutil.rmtree(root, ignore_errors=True)
    return 1 if any(counts[c] for c in FAILURE_CLASSES) else 0


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def save_reproducers(failures, seeds, donors, out_dir, pool_size, root, per_class=10) -> list[str]:
    """Each failure shrunk to the fewest mutation steps that give the same class, saved as its
    files plus main.txt and info.json (``python benchmarks/fuzz.py --replay DIR`` runs it)."""
    from fuzz_mutate import build, make_case
    pool = Pool(pool_size, os.path.join(root, "shrink"))
    saved, seen = [], {}
    try:
        for f in failures:
            if seen.get(f["class"], 0) >= per_class:
                continue
            seen[f["class"]] = seen.get(f["class"], 0) + 1
            best = f["steps"]
            subsets = [[s] for s in f["steps"]] + [[a, b] for i, a in enumerate(f["steps"])
                                                    for b in f["steps"][i + 1:]] if len(f["steps"]) > 1 else []
            for sub in subsets:
                case, _ = make_case(seeds[f["seed"]], sub, donors)
                res = list(pool.run([(0, build(case), case.main)]))[0]
                if res[1] == f["class"]:
                    best = sub
                    break
            case, descs = make_case(seeds[f["seed"]], best, donors)
            files = build(case)
            d = os.path.join(out_dir, f"{f['class']}-{f['seed'].replace('.vqsl', '')}-case{f['case']}")
            os.makedirs(d, exist_ok=True)
            for n, data in files.items():
                with open(os.path.join(d, n), "wb") as fh:
                    fh.write(data)
            with open(os.path.join(d, "main.txt"), "w") as fh:
                fh.write(case.main + "\n")
            _write_json(os.path.join(d, "info.json"), {"class": f["class"], "seed": f["seed"], "steps": best,
                                                       "mutations": descs, "detail": f["detail"]})
            saved.append(d)
            print(f"  reproducer: {d} ({len(best)} of {len(f['steps'])} steps)", flush=True)
    finally:
        pool.close()
    return saved


def replay(folder: str) -> int:
    sys.path.insert(0, HERE)
    main = open(os.path.join(folder, "main.txt")).read().strip()
    files = {n: open(os.path.join(folder, n), "rb").read() for n in os.listdir(folder) if n.endswith(".vqsl")}
    os.environ["SLCODEC_DEBUG"] = "1"
    cls, detail, rule = classify(files, main, os.path.join(folder, main))
    print(f"{folder}: {cls} {rule or ''} {detail}")
    return 0 if cls in ("accepted", "rejected") else 1


# ------------------------------------------------------------------------------------- atheris
def atheris_main(args) -> int:
    """Coverage-guided fuzzing of the same target (in-process: libFuzzer's -timeout and
    -rss_limit_mb stand in for the worker limits)."""
    import atheris
    sys.path.insert(0, HERE)
    with atheris.instrument_imports():
        import slcodec  # noqa: F401
        import slcodec.pipeline.reader  # noqa: F401
        import slcodec.cli  # noqa: F401
        import slcodec.codecs  # noqa: F401
        import slcodec.format.container  # noqa: F401
        import slcodec.format.schema  # noqa: F401
        import slcodec.format.shards  # noqa: F401
        from slcodec.codecs import imgprior, raw, sparse, sq, topk, vq  # noqa: F401
    import torch  # noqa: F401
    from fuzz_model import parse, serialize
    from fuzz_mutate import Case, make_case
    os.environ["SLCODEC_DEBUG"] = "1"
    seeds = golden_seeds()
    donors = [parse(files[main]) for files, main in seeds.values()]
    tmp = tempfile.mkdtemp(prefix="slcodec-atheris-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    corpus = os.path.join(tmp, "corpus")
    os.makedirs(corpus)
    for name, (files, main) in seeds.items():
        if len(files) == 1:
            with open(os.path.join(corpus, name), "wb") as f:
                f.write(files[main])
    path = os.path.join(tmp, "case.vqsl")
    stats = {c: 0 for c in CLASSES}

    def test_one(data: bytes):
        with open(path, "wb") as f:
            f.write(data)
        cls, detail, _ = classify({"case.vqsl": data}, "case.vqsl", path)
        stats[cls] += 1
        if sum(stats.values()) % 500 == 0:
            report()  # libFuzzer ends the process with _exit: no atexit handler runs
        if cls in FAILURE_CLASSES:
            raise RuntimeError(f"{cls}: {detail}")

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.6:
            try:
                case = Case({"f": parse(data)}, "f")
                case, _ = make_case(case, [rng.randrange(2**32)], donors)
                out = serialize(case.files["f"])
                if len(out) <= max_size:
                    return out
            except Exception:  # noqa: BLE001 - not a parseable file: libFuzzer's own mutation
                pass
        return atheris.Mutate(data, max_size)

    argv = [sys.argv[0], corpus, f"-max_total_time={args.seconds}", "-timeout=10", "-rss_limit_mb=4096",
            "-max_len=200000", f"-seed={args.seed or 1}", "-print_final_stats=1",
            "-artifact_prefix=" + os.path.join(args.failures, "atheris-")]
    os.makedirs(args.failures, exist_ok=True)
    t0 = time.time()
    def report():
        el = time.time() - t0
        n = sum(stats.values())
        print(f"atheris: {n:,} cases in {el:.0f} s ({n / max(el, 1):.1f}/s): " +
              ", ".join(f"{k} {v:,}" for k, v in stats.items() if v), flush=True)
        if args.json:
            _write_json(args.json, {"cases": n, "seconds": round(el, 1), "classes": stats,
                                    "command": " ".join(["nice -n 19 python benchmarks/fuzz.py"] + sys.argv[1:])})
    atheris.Setup(argv, test_one, custom_mutator=mutator)
    atheris.Fuzz()
    return 0
