"""What the command line prints beyond the Python API's results: progress bars, notes, summaries."""
from __future__ import annotations

import json
import os
import sys


def progress_printer(quiet: bool):
    """A progress(done, total, what) callback drawing one tqdm bar per stage on stderr, or None
    with --quiet or when stdout or stderr is not a terminal (logs and pipes stay clean).
    ``what`` is a stage name, optionally followed by ": " and a status (e.g. "vq fit: loss 0.0412")
    shown beside the bar."""
    if quiet or not (sys.stdout.isatty() and sys.stderr.isatty()):
        return None
    from tqdm import tqdm
    state = {"bar": None, "stage": None}

    def progress(done, total, what):
        stage, _, status = what.partition(": ")
        bar = state["bar"]
        if bar is None or stage != state["stage"] or total != bar.total:
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=total, desc=stage, file=sys.stderr, dynamic_ncols=True,
                                      unit="step" if "fit" in stage else "label", unit_scale="fit" not in stage)
            state["stage"] = stage
        if status:
            bar.set_postfix_str(status, refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            state["bar"] = None
    return progress


def default_text(value) -> str:
    if value is None:
        return "chosen by the codec; slcodec info shows the value used"
    if isinstance(value, (list, tuple)):
        return " ".join(default_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):   # not every platform has one
        return None


def busy_machine_note(fit_threads, threads: int, load: float | None, cores: int) -> str | None:
    """A one-line note when a fit left to torch's thread count (``fit_threads`` 0) will run
    ``threads`` > 1 threads while the ``cores`` are already busy: there a second thread made a
    fit 17x slower (BENCHMARKS.md section 10).  None for codecs without ``fit_threads``."""
    if fit_threads != 0 or threads < 2 or load is None or load < cores:
        return None
    return (f"note: this machine is busy (load average {load:.1f} on {cores} cores): a fit on {threads} threads "
            f"can then take many times longer than on one; --fit-threads 1 (BENCHMARKS.md section 10)")


def small_set_hint(codec_id: str, config: dict, s: dict) -> str | None:
    """A one-line note when a learned decoder is most of the file (a set too small for its size)."""
    fixed, total = s.get("fixed_bytes", 0), s.get("file_bytes", 0)
    if codec_id != "vq" or not total or fixed < 0.5 * total or "hidden" in config:
        return None
    return (f"note: the codec's fixed part ({fixed:,} bytes, the decoder) is {100 * fixed / total:.0f}% of this "
            f"file; for a set this small a smaller decoder stores fewer bits in all, e.g. --hidden 32 "
            f"--decoder-layers 0 --bits 8 (BENCHMARKS.md section 3)")


def stats_of(path) -> dict:
    """file_stats of a file, or of a whole sharded set when ``path`` is a manifest."""
    from ..format.container import Container
    from ..format.stats import file_stats
    with Container.open(path) as c:
        if not c.is_manifest:
            return file_stats(c)
        from ..format.shards import open_shard, read_shard_table
        entries = read_shard_table(c)
        opened = []
        try:
            for k in range(len(entries)):
                opened.append(open_shard(c, entries, k))
            return file_stats(c, shards=opened)
        finally:
            for s in opened:
                s.close()


#: fit-info entries too long to read on a line; `info --json` has them
INFO_JSON_ONLY = ("loss_history",)


def print_encode_summary(args, codec_id, config, choosing, choice, fid, required, budget, elapsed) -> None:
    """What ``slcodec encode`` prints once the file is written: the JSON summary (``--json``) and,
    unless ``--quiet``, the size line, the resolved configuration, a hint for small sets and the
    fidelity measured on the labels written."""
    from ..pipeline import choose as ch
    if args.json:
        print(json.dumps(ch.encode_summary(args.output, stats_of(args.output), fid, choice, required, budget,
                                           args.allow_top1_loss, elapsed), indent=2, sort_keys=True))
    if not args.quiet:
        from ..format.stats import format_config, format_ratio
        s = stats_of(args.output)
        r = s["baselines"]["fp16"]["ratio"]
        than_fp16 = f"{format_ratio(r)} smaller than FP16" if r >= 1 else f"{format_ratio(1 / r)} larger than FP16"
        print(f"wrote {args.output}: {s['file_bytes']:,} bytes, {s['bits_per_label']:.2f} bits/label "
              f"({s['marginal_bits_per_label']:.2f} in label streams), {than_fp16}, codec {codec_id}, "
              f"{elapsed:.1f} s", file=sys.stderr)
        print(f"codec {codec_id} as written: {format_config(s['codec_resolved_config'])}", file=sys.stderr)
        hint = None if choosing else small_set_hint(codec_id, config, s)
        if hint:
            print(hint, file=sys.stderr)
        print(ch.fidelity_line(fid, ch.choice_text(choice, codec_id, s, required, budget, args.allow_top1_loss, fid)),
              file=sys.stderr)
