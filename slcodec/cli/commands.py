"""The ``slcodec`` command line: a thin shell over the Python API.

Exit codes: 0 success; 1 ``verify`` found a damaged or invalid file; 2 bad input, bad
arguments or an unreadable file (one line on stderr, no traceback); 3 an internal error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from .._version import __version__
from ..errors import FormatError, SlcodecError, one_line

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
#: decode's output formats by file extension (any other name needs --format)
DECODE_FORMATS = {".pt": "pt", ".pth": "pt", ".npy": "npy", ".h5": "h5", ".hdf5": "h5"}
#: the temperatures stats --reference reports KL at unless --temperature says otherwise
DEFAULT_KL_TEMPERATURES = [1.0, 4.0]
DEMO_FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "lite0_8x64_fp16.npy")


class UsageError(SlcodecError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, as for every other bad input
        sub = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        raise UsageError(f"{sub}{message}")


def _progress_printer(quiet: bool):
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


# --------------------------------------------------------------------------- codec options
def _codec_options():
    from ..codecs.base import codec_ids, get_codec_class
    options = {}
    for cid in codec_ids():
        for opt in get_codec_class(cid).options:
            options.setdefault(opt.name, []).append((cid, opt))
    return options


def _add_codec_options(parser):
    try:
        options = _codec_options()
    except ImportError:  # no torch: encoding is unavailable, but stats/verify/info still work
        return
    group = parser.add_argument_group("codec options (each applies to the codecs named in its help)")
    for name, owned in sorted(options.items()):
        owners = [cid for cid, _ in owned]
        opt = owned[0][1]
        kwargs = {"type": opt.type, "default": None, "dest": "codec_opt_" + name, "metavar": name.upper(),
                  "help": f"[{', '.join(owners)}] {_option_help(owned)}"}
        if opt.nargs:
            kwargs["nargs"] = opt.nargs
        if opt.choices:
            kwargs["choices"] = opt.choices
        group.add_argument("--" + name.replace("_", "-"), **kwargs)


def _default_text(value) -> str:
    if value is None:
        return "chosen by the codec; slcodec info shows the value used"
    if isinstance(value, (list, tuple)):
        return " ".join(_default_text(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _option_help(owned) -> str:
    """The help of an option shared by codecs ``owned`` ([(codec id, Option)]), its default stated
    once: not appended when the help already states it, per codec when the codecs differ."""
    text = owned[0][1].help.strip()
    if "default" in text.lower():
        return text
    defaults = {cid: _default_text(o.default) for cid, o in owned}
    if len(set(defaults.values())) == 1:
        return f"{text} (default: {next(iter(defaults.values()))})"
    return f"{text} (default: {', '.join(f'{cid} {d}' for cid, d in defaults.items())})"


def _chosen_codec_options(args, codec_id):
    from ..codecs.base import get_codec_class
    own = {o.name for o in get_codec_class(codec_id).options}
    config = {}
    for key, value in vars(args).items():
        if key.startswith("codec_opt_") and value is not None:
            name = key[len("codec_opt_"):]
            if name not in own:
                raise UsageError(f"--{name.replace('_', '-')} is not an option of codec {codec_id!r}")
            config[name] = value
    return config


# --------------------------------------------------------------------------- commands
def cmd_encode(args):
    from ..pipeline.device import default_codec, resolve_device
    from ..pipeline.encode import encode
    from ..pipeline.inputs import load_labels

    _check_output(args.output)
    if args.shards is not None and args.shard_rows is not None:
        raise UsageError("encode: give --shards or --shard-rows, not both")
    # no --codec and no codec option: the codec and its size are chosen for the set (issue 15)
    choosing = args.codec is None and not any(v is not None for k, v in vars(args).items()
                                              if k.startswith("codec_opt_"))
    explicit_target = bool(args.max_kl) or args.max_bits is not None
    if not choosing and (explicit_target or args.allow_top1_loss or args.best_effort):
        raise UsageError("encode: --max-kl, --max-bits, --allow-top1-loss and --best-effort choose the codec; "
                         "they do not go with --codec or codec options")
    from ..pipeline import choose as ch
    for text in args.max_kl:
        ch.parse_max_kl(text)   # before reading a possibly large input
    codec_id = args.codec or default_codec()
    config = {} if choosing else _chosen_codec_options(args, codec_id)
    # Check the codec options and the device before reading a possibly large input.
    from ..codecs.base import get_codec_class
    codec = get_codec_class(codec_id)(**config)
    if not choosing and resolve_device(args.device) == "cpu" and not args.quiet:
        import torch
        note = busy_machine_note(codec.config.get("fit_threads"), torch.get_num_threads(), _load_average(),
                                 os.cpu_count() or 1)
        if note:
            print(note, file=sys.stderr)
    src = load_labels(args.input, args.input_kind)
    if not args.quiet:
        print(f"input: {src.path} {list(src.shape)} {src.array.dtype}, read as {src.kind.upper()} "
              f"({src.kind_reason}; --input-kind to override)", file=sys.stderr)
    t0 = time.perf_counter()
    target, budget = ch.resolve_target(args.max_kl, args.max_bits, src.classes)
    # --max-bits alone: the best fidelity within it; the written file must meet what was asked
    objective = "fidelity" if args.max_bits is not None and not args.max_kl else "bits"
    required = target if objective == "bits" else ()
    choice, output = None, args.output
    if choosing:
        choice = ch.choose(src, target, budget, allow_top1_loss=args.allow_top1_loss, seed=args.seed,
                           device=resolve_device(args.device), objective=objective,
                           progress=_progress_printer(args.quiet))
        codec_id, config = choice.codec, choice.config
        if explicit_target and not choice.met and not args.best_effort:
            raise UsageError(f"{args.input}: {ch.unmet_text(choice)}; --best-effort writes it")
        if explicit_target and not args.best_effort and not args.distributed and args.shards is None \
                and args.shard_rows is None:   # replaced only once its measured fidelity meets the target
            output = os.path.join(os.path.dirname(os.path.abspath(args.output)),
                                  f".{os.path.basename(args.output)}.{os.getpid()}.choose.vqsl")
    if args.distributed:
        from .. import distributed
        distributed.encode(src, args.output, codec=codec_id, device=args.device, seed=args.seed,
                           provenance={"teacher": args.teacher} if args.teacher else None, **config)
        if not distributed.is_rank_zero():
            return EXIT_OK
    else:
        encode(src, output, codec=codec_id, device=args.device, seed=args.seed,
               provenance={"teacher": args.teacher} if args.teacher else None,
               shard_rows=args.shard_rows, shards=args.shards, progress=_progress_printer(args.quiet), **config)
    fid = None
    if not args.quiet or args.json or output != args.output:
        try:
            fid = ch.written_fidelity(output, src, [t for _, t in target], seed=args.seed)
            missed = ch.written_misses(fid, _stats(output)["bits_per_label"], required, budget,
                                       args.allow_top1_loss)
        except BaseException:
            if output != args.output:
                os.remove(output)
            raise
        if output != args.output:
            if missed:
                os.remove(output)
                raise UsageError(f"{args.input}: the written labels miss the target ({'; '.join(missed)}); "
                                 f"no file written; --best-effort writes it")
            os.replace(output, args.output)
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps(ch.encode_summary(args.output, _stats(args.output), fid, choice, required, budget,
                                           args.allow_top1_loss, elapsed), indent=2, sort_keys=True))
    if not args.quiet:
        from ..format.stats import format_config, format_ratio
        s = _stats(args.output)
        r = s["baselines"]["fp16"]["ratio"]
        than_fp16 = f"{format_ratio(r)} smaller than FP16" if r >= 1 else f"{format_ratio(1 / r)} larger than FP16"
        print(f"wrote {args.output}: {s['file_bytes']:,} bytes, {s['bits_per_label']:.2f} bits/label "
              f"({s['marginal_bits_per_label']:.2f} in label streams), {than_fp16}, codec {codec_id}, "
              f"{elapsed:.1f} s", file=sys.stderr)
        print(f"codec {codec_id} as written: {format_config(s['codec_resolved_config'])}", file=sys.stderr)
        hint = None if choosing else _small_set_hint(codec_id, config, s)
        if hint:
            print(hint, file=sys.stderr)
        print(ch.fidelity_line(fid, ch.choice_text(choice, codec_id, s, required, budget, args.allow_top1_loss, fid)),
              file=sys.stderr)
    return EXIT_OK


def _load_average() -> float | None:
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


def _small_set_hint(codec_id: str, config: dict, s: dict) -> str | None:
    """A one-line note when a learned decoder is most of the file (a set too small for its size)."""
    fixed, total = s.get("fixed_bytes", 0), s.get("file_bytes", 0)
    if codec_id != "vq" or not total or fixed < 0.5 * total or "hidden" in config:
        return None
    return (f"note: the codec's fixed part ({fixed:,} bytes, the decoder) is {100 * fixed / total:.0f}% of this "
            f"file; for a set this small a smaller decoder stores fewer bits in all, e.g. --hidden 32 "
            f"--decoder-layers 0 --bits 8 (BENCHMARKS.md section 3)")


def cmd_import(args):
    from ..pipeline.device import default_codec
    from ..frameworks.importers import import_folder

    _check_output(args.output)
    if not os.path.isdir(args.folder):
        raise UsageError(f"{args.folder}: not a folder")
    codec_id = args.codec or default_codec()
    config = _chosen_codec_options(args, codec_id)
    t0 = time.perf_counter()
    import_folder(args.folder, args.output, args.layout, codec=codec_id, classes=args.classes, device=args.device,
                  seed=args.seed, provenance={"teacher": args.teacher} if args.teacher else None,
                  progress=_progress_printer(args.quiet), **config)
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        from ..format.container import Container
        from ..format.stats import file_stats
        with Container.open(args.output) as c:
            s = file_stats(c)
        aug = s["groups"].get("augmentation", {"bits_per_label": 0.0})
        print(f"wrote {args.output}: {s['labels']:,} labels {s['shape']}, {s['file_bytes']:,} bytes, "
              f"{s['bits_per_label']:.2f} bits/label ({s['marginal_bits_per_label']:.2f} in label streams, "
              f"{aug['bits_per_label']:.2f} in augmentation records), codec {codec_id}, {elapsed:.1f} s",
              file=sys.stderr)
    return EXIT_OK


def cmd_export(args):
    from ..frameworks.importers import export_folder
    export_folder(args.input, args.output, args.layout, device=args.device, progress=_progress_printer(args.quiet))
    if not args.quiet:
        print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


def _check_output(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{path}: output folder {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path}: output is a folder")


def cmd_decode(args):
    import numpy as np

    from ..pipeline import reader as api
    _check_output(args.output)
    ext = os.path.splitext(args.output)[1].lower()
    fmt = args.format or DECODE_FORMATS.get(ext)
    if fmt is None:
        raise UsageError(f"{args.output}: unknown output extension {ext or '(none)'!r}: name the file "
                         f"{', '.join(sorted(DECODE_FORMATS))} or give --format pt, npy or h5")
    with api.open(args.input) as reader:
        values = reader.decode(None, device=args.device, as_=args.as_, temperature=args.temperature).cpu()
    from ..format.atomic import atomic_path
    with atomic_path(args.output) as tmp:  # complete or absent; the mode a plain open() gives
        if fmt == "pt":
            import torch
            torch.save(values, tmp)
        elif fmt == "npy":
            with open(tmp, "wb") as f:
                np.save(f, values.numpy(), allow_pickle=False)
        else:
            import h5py
            with h5py.File(tmp, "w") as f:
                f.create_dataset(args.as_, data=values.numpy())
    if not args.quiet:
        print(f"wrote {args.output}: {list(values.shape)} {args.as_} ({fmt})", file=sys.stderr)
    return EXIT_OK


def _stats(path) -> dict:
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


def cmd_stats(args):
    from ..format.stats import format_stats
    bad = [t for t in args.temperature if not (0 < t < float("inf"))]
    if bad:
        raise UsageError(f"--temperature must be positive and finite, got {bad[0]:g}")
    s = _stats(args.input)
    if args.reference:
        from ..pipeline import reader as api
        from ..pipeline.inputs import load_labels
        from ..pipeline.metrics import reader_fidelity
        ref = load_labels(args.reference, args.input_kind)
        with api.open(args.input) as reader:
            s["fidelity"] = reader_fidelity(reader, ref, temperatures=args.temperature)
    elif args.temperature != DEFAULT_KL_TEMPERATURES:
        raise UsageError("--temperature goes with --reference")
    if args.image_bytes is not None and not args.compare:
        raise UsageError("--image-bytes goes with --compare")
    if args.compare:
        from ..format.stats import add_comparison
        if args.image_bytes is not None and args.image_bytes < 0:
            raise UsageError(f"--image-bytes must be >= 0, got {args.image_bytes}")
        add_comparison(s, args.image_bytes)
    if args.json:
        print(json.dumps(s, indent=2, sort_keys=True))
    else:
        print(format_stats(s))
        if args.compare:
            from ..format.stats import format_comparison
            print()
            print(format_comparison(s))
    return EXIT_OK


def cmd_verify(args):
    from ..format.container import Container
    status = EXIT_OK
    for path in args.inputs:
        if not os.path.exists(path):
            raise UsageError(f"{path}: no such file")
        note = ""
        try:
            with Container.open(path) as c:
                kind = "manifest" if c.is_manifest else "shard" if c.is_shard else "file"
                problems = c.verify()
            if not problems and kind == "manifest":
                from ..format.shards import verify_set
                problems = verify_set(path)  # every shard: presence, size, sha256, every byte
                note = " (sharded set: manifest and every shard)"
            if not problems and kind == "shard":
                note = " (a shard: structure only; the codec checks run from its manifest)"
            elif not problems and not args.structure_only:
                problems = _verify_codec(path)
        except FormatError as exc:
            problems = [str(exc)]
        if problems:
            status = EXIT_INVALID
            for p in problems:
                p = p[len(path) + 2:] if p.startswith(path + ": ") else p
                print(f"{path}: INVALID: {p}")
        else:
            print(f"{path}: OK{note}")
    return status


def cmd_merge(args):
    from ..format.shards import merge
    _check_output(args.output)
    merge(args.input, args.output)
    if not args.quiet:
        print(f"wrote {args.output}: {os.path.getsize(args.output):,} bytes (one file)", file=sys.stderr)
    return EXIT_OK


def cmd_split(args):
    from ..format.shards import split
    _check_output(args.output)
    if (args.shards is None) == (args.shard_rows is None):
        raise UsageError("split: give --shards or --shard-rows")
    split(args.input, args.output, shards=args.shards, shard_rows=args.shard_rows)
    if not args.quiet:
        print(f"wrote {args.output} and its shards", file=sys.stderr)
    return EXIT_OK


def _verify_codec(path) -> list[str]:
    # The codec-level rules (config, parameter shapes, stream values) need the codec's module,
    # which imports torch only to fit and decode.
    from ..pipeline import reader as api
    try:
        with api.open(path) as reader:
            reader.verify_streams()
            return []
    except FormatError as exc:
        return [str(exc)]


#: fit-info entries too long to read on a line; `info --json` has them
INFO_JSON_ONLY = ("loss_history",)


def cmd_info(args):
    from ..format.container import Container
    with Container.open(args.input) as c:
        info = {"format_version": f"{c.preamble.major}.{c.preamble.minor}",
                "required_flags": c.preamble.required_flags, "optional_flags": c.preamble.optional_flags,
                "header": c.header}
        for name in ("augment", "provenance"):
            if name in c.sections and c.sections[name]["kind"] == "msgpack":
                info[name] = c.read_msgpack(name)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    h = info["header"]
    print(f"{args.input}: .vqsl format {info['format_version']} "
          f"(required flags 0x{info['required_flags']:08x}, optional 0x{info['optional_flags']:08x})")
    from ..format.stats import format_config, resolved_codec_config
    print(f"labels: {h['labels']}")
    print(f"codec:  {h['codec']['id']}: {format_config(resolved_codec_config(h['codec']))}")
    for key, value in sorted(h["codec"].get("info", {}).items()):
        if key in INFO_JSON_ONLY:
            print(f"        {key}: {len(value) if isinstance(value, list) else 1} entries (info --json)")
        else:
            print(f"        {key}: {value}")
    print("sections:")
    for s in h["sections"]:
        extra = {k: v for k, v in s.items() if k not in ("name", "kind", "offset", "length", "crc32")}
        print(f"  {s['name']:<24} {s['kind']:<8} offset {s['offset']:>10} length {s['length']:>10} "
              f"crc32 {s['crc32']:08x} {extra if extra else ''}")
    for name in ("augment", "provenance"):
        if name in info:
            print(f"{name}: {info[name]}")
    return EXIT_OK


def cmd_demo(args):
    """Encode the committed real-teacher fixture and report bits and fidelity."""
    if not os.path.exists(DEMO_FIXTURE):
        raise UsageError(f"{DEMO_FIXTURE}: demo fixture is missing from this installation")
    if args.output_dir is not None:
        if not os.path.isdir(args.output_dir):
            raise UsageError(f"{args.output_dir}: output folder does not exist")
        return _demo(args, args.output_dir)
    with tempfile.TemporaryDirectory(prefix="slcodec-demo-") as out_dir:
        status = _demo(args, out_dir)
    print(f"\n(the files were written to a temporary folder, {out_dir}, now removed; "
          "--output-dir DIR keeps them)")
    return status


def _demo(args, out_dir) -> int:
    from ..pipeline import reader as api
    from ..pipeline.device import default_codec
    from ..pipeline.encode import encode
    from ..format.container import Container
    from ..pipeline.inputs import load_labels
    from ..pipeline.metrics import reader_fidelity
    from ..format.stats import file_stats, format_stats

    src = load_labels(DEMO_FIXTURE)
    print(f"demo: {src.count:,} real soft labels from EfficientNet-Lite0 (ImageNet, {src.classes} classes), "
          f"shape {list(src.shape)}, read as {src.kind}")
    codecs = args.codecs or [default_codec(), "topk"]
    summary = []
    for codec_id in codecs:
        out = os.path.join(out_dir, f"lite0_8x64.{codec_id}.vqsl")
        t0 = time.perf_counter()
        encode(src, out, codec=codec_id, device=args.device, seed=0,
               provenance={"teacher": "EfficientNet-Lite0 (ImageNet-1K)"},
               progress=_progress_printer(args.quiet))
        elapsed = time.perf_counter() - t0
        with Container.open(out) as c:
            s = file_stats(c)
        with api.open(out) as reader:
            s["fidelity"] = reader_fidelity(reader, src, temperatures=sorted({*DEFAULT_KL_TEMPERATURES,
                                                                              *reader.temperatures}))
        print(f"\n== codec {codec_id}: encoded in {elapsed:.1f} s -> {out}")
        print(format_stats(s))
        summary.append((codec_id, s))
    print("\nsummary (this fixture has only 512 labels; the fixed part is paid once per label set):")
    for codec_id, s in summary:
        fixed_bits = s["fixed_bytes"] * 8
        line = (f"  {codec_id:<6} label streams {s['marginal_bits_per_label']:9.2f} bits/label + fixed part "
                f"{s['fixed_bytes']:,} bytes; KL@T4 {s['fidelity']['kl'].get('4', float('nan')):.5f}, "
                f"top-1 {s['fidelity']['top1_agreement']:.4f}")
        fp16_bits = 16 * s["classes"]
        if s["marginal_bits_per_label"] < fp16_bits and fixed_bits > 8 * 1024:
            even = fixed_bits / (fp16_bits / 20 - s["marginal_bits_per_label"]) \
                if s["marginal_bits_per_label"] < fp16_bits / 20 else None
            if even:
                line += f"; 20x smaller than FP16 from {even:,.0f} labels on"
        print(line)
    return EXIT_OK


# --------------------------------------------------------------------------- parser
QUIET_HELP = "print nothing but errors (no summary, no progress bars)"
VQSL_INPUT_HELP = "a .vqsl file (or the manifest of a sharded set)"


#: the commands that take the codec options
CODEC_OPTION_COMMANDS = ("encode", "import")


def _command_of(argv) -> str | None:
    """The command named in ``argv`` (the first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(codec_options: bool = True):
    """The parser; ``codec_options=False`` leaves out the options of encode and import, whose
    building loads every codec's module (main() does so for the other commands, to start fast)."""
    p = _Parser(prog="slcodec", description="Storage codec for the soft labels of dataset distillation.")
    p.add_argument("--version", action="version", version=f"slcodec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    e = sub.add_parser("encode", help="fit a codec on labels and write a .vqsl file")
    e.add_argument("input", help="labels: .pt, .npy, .npz or .h5 (file.h5:dataset), [N, C] or [images, augs, C]")
    e.add_argument("-o", "--output", required=True, help="the .vqsl file to write (replaced atomically)")
    e.add_argument("--codec", default=None, help="codec id (default: vq when available, else fp16)")
    e.add_argument("--input-kind", default="auto", choices=("auto", "logits", "probs"),
                   help="whether the input holds logits or probabilities (default: detect, and say so)")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    e.add_argument("--seed", type=int, default=0, help="seed for fitting (default 0)")
    e.add_argument("--teacher", default=None, help="teacher name stored as provenance")
    e.add_argument("--shard-rows", type=int, default=None,
                   help="write a sharded set (format 1.1): OUTPUT (NAME.vqsl) is the manifest, shards of this many "
                        "labels are NAME-TOKEN-00000.vqsl, ... beside it (TOKEN: 8 hex digits, new for each write)")
    e.add_argument("--shards", type=int, default=None, help="write a sharded set of this many equal shards")
    e.add_argument("--distributed", action="store_true",
                   help="under torchrun: every rank fits the same codec and encodes its own range into its "
                        "shard; rank 0 writes the manifest OUTPUT")
    e.add_argument("--max-kl", action="append", default=[], metavar="VALUE@T",
                   help="target: mean KL(p||q) at temperature T at most VALUE (repeatable); without --codec and "
                        "codec options the codec and its size are chosen for the set (default target: "
                        "--max-kl 0.1@1 --max-kl 0.01@4 within 2%% of FP16 size; an explicit target that cannot be "
                        "met is an error)")
    e.add_argument("--max-bits", type=float, default=None, metavar="B",
                   help="budget: bits per label of the whole file, all counted (default: 0.02 * 16 * C)")
    e.add_argument("--allow-top1-loss", action="store_true",
                   help="the chosen codec may change a label's top-1 class (default: top-1 stays 100%%)")
    e.add_argument("--best-effort", action="store_true",
                   help="write the best fidelity reached when an explicit --max-kl cannot be met")
    e.add_argument("--json", action="store_true", help="print the summary (bits, fidelity, choice) as JSON")
    e.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    if codec_options:
        _add_codec_options(e)
    e.set_defaults(func=cmd_encode)

    mg = sub.add_parser("merge", help="write a sharded set (its manifest) as one file")
    mg.add_argument("input", help="the manifest")
    mg.add_argument("-o", "--output", required=True, help="the single .vqsl file to write (replaced atomically)")
    mg.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    mg.set_defaults(func=cmd_merge)

    sp = sub.add_parser("split", help="write one file as a sharded set (manifest + shards)")
    sp.add_argument("input", help="the .vqsl file to split")
    sp.add_argument("-o", "--output", required=True, help="the manifest to write; shards go beside it")
    sp.add_argument("--shards", type=int, default=None, help="number of shards (of equal size)")
    sp.add_argument("--shard-rows", type=int, default=None, help="labels per shard")
    sp.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sp.set_defaults(func=cmd_split)

    d = sub.add_parser("decode", help="decode a .vqsl file to a label file")
    d.add_argument("input", help=VQSL_INPUT_HELP)
    d.add_argument("-o", "--output", required=True,
                   help="the label file to write: .pt/.pth (a torch tensor), .npy or .h5/.hdf5 (dataset named "
                        "after --as); another name needs --format")
    d.add_argument("--format", choices=("pt", "npy", "h5"), default=None,
                   help="what to write (default: from the output's extension)")
    d.add_argument("--as", dest="as_", choices=("probs", "logits", "log_probs"), default="probs",
                   help="probabilities (softmax), log-probabilities, or the decoded logits as they are "
                        "(default: probs)")
    d.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature for probs/log_probs (default: 1)")
    d.add_argument("--device", default="cpu", help="torch device to decode on: cpu or cuda[:N] (default: cpu)")
    d.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    d.set_defaults(func=cmd_decode)

    s = sub.add_parser("stats", help="exact bit accounting (and fidelity with --reference)")
    s.add_argument("input", help=VQSL_INPUT_HELP)
    s.add_argument("--json", action="store_true", help="stable JSON output (documented in FORMAT.md)")
    s.add_argument("--reference", default=None,
                   help="the original labels, to report KL (mean, median, 99th percentile, max), top-1 and top-5")
    s.add_argument("--temperature", type=float, nargs="+", default=list(DEFAULT_KL_TEMPERATURES), metavar="T",
                   help="with --reference: the softmax temperatures to report KL at (default: 1 4)")
    s.add_argument("--compare", action="store_true",
                   help="also the storage of this label set in the frameworks' own layouts (SRe2L/CDA, FKD, LPQLD)")
    s.add_argument("--image-bytes", type=int, default=None, metavar="N",
                   help="with --compare: bytes of one stored image (e.g. 13820: SRe2L's JPEGs, 691 MB / 50,000), to show the "
                        "labels' share of images + labels")
    s.add_argument("--input-kind", default="auto", choices=("auto", "logits", "probs"),
                   help="whether --reference holds logits or probabilities (default: detect)")
    s.set_defaults(func=cmd_stats)

    v = sub.add_parser("verify", help="check checksums and structure (exit 0 valid, 1 invalid)")
    v.add_argument("inputs", nargs="+", help=".vqsl files, manifests (the whole set) or shards")
    v.add_argument("--structure-only", action="store_true",
                   help="checksums and structure only: skip the codec-level checks of parameters and streams")
    v.set_defaults(func=cmd_verify)

    i = sub.add_parser("info", help="print the header")
    i.add_argument("input", help=VQSL_INPUT_HELP)
    i.add_argument("--json", action="store_true",
                   help="the whole header as JSON, with the fit's full record (e.g. vq's loss history)")
    i.set_defaults(func=cmd_info)

    im = sub.add_parser("import", help="import a framework's label folder (SRe2L/CDA/LPLD, LPQLD, FKD) with its "
                                       "augmentation parameters")
    im.add_argument("folder", help="sre2l/lpqld: the folder holding epoch_*/batch_*.tar; fkd: the folder of "
                                   "per-image files")
    im.add_argument("-o", "--output", required=True, help="the .vqsl file to write (replaced atomically)")
    im.add_argument("--layout", required=True, choices=("sre2l", "lpqld", "fkd"),
                    help="sre2l (also CDA, LPLD), lpqld or fkd")
    im.add_argument("--classes", type=int, default=None,
                    help="number of classes (needed for lpqld and fkd, whose files keep only the top k)")
    im.add_argument("--codec", default=None, help="codec id (default: vq when available, else fp16)")
    im.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    im.add_argument("--seed", type=int, default=0, help="seed for fitting (default 0)")
    im.add_argument("--teacher", default=None, help="teacher name stored as provenance")
    im.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    if codec_options:
        _add_codec_options(im)
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="write a framework's label folder back from a .vqsl file with an explicit "
                                       "augmentation record")
    ex.add_argument("input", help="a .vqsl file with an explicit augmentation record (made by import)")
    ex.add_argument("-o", "--output", required=True, help="the folder to create (must not exist, or be empty)")
    ex.add_argument("--layout", default=None, choices=("sre2l", "fkd"), help="default: the layout recorded in the file")
    ex.add_argument("--device", default="cpu", help="torch device to decode on (default: cpu)")
    ex.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    ex.set_defaults(func=cmd_export)

    m = sub.add_parser("demo", help="encode the bundled real-teacher labels and report bits and fidelity")
    m.add_argument("--output-dir", default=None,
                   help="keep the encoded files in this existing folder (default: a temporary folder, removed "
                        "at the end)")
    m.add_argument("--codecs", nargs="+", default=None, help="codecs to run (default: the default codec and topk)")
    m.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    m.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    m.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
        args = build_parser(codec_options=_command_of(argv) in CODEC_OPTION_COMMANDS).parse_args(argv)
        return args.func(args)
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except SlcodecError as exc:
        print(f"slcodec: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, IsADirectoryError, PermissionError, OSError) as exc:
        name = getattr(exc, "filename", None)
        print(f"slcodec: error: {name + ': ' if name else ''}{exc.strerror or one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:  # a dependency missing (encode or decode without torch), or a bug of ours
        if (getattr(exc, "name", None) or "").split(".")[0] == "slcodec":
            return _internal_error(exc)
        missing = getattr(exc, "name", None) or one_line(exc)
        print(f"slcodec: error: this command needs {missing}, which cannot be imported ({one_line(exc)})",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("slcodec: interrupted; no output was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("slcodec: error: out of memory", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # an internal bug: still one line, traceback only on request
        return _internal_error(exc)


def _internal_error(exc) -> int:
    if os.environ.get("SLCODEC_DEBUG"):
        raise exc
    print(f"slcodec: internal error: {type(exc).__name__}: {one_line(exc)} "
          "(set SLCODEC_DEBUG=1 for a traceback)", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
