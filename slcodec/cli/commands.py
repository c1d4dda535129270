"""The commands of the command line (``cmd_*``): thin shells over the Python API."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from ..errors import FormatError
from .reports import INFO_JSON_ONLY, busy_machine_note, load_average, print_encode_summary, progress_printer, stats_of
from .usage import EXIT_INVALID, EXIT_OK, UsageError


#: decode's output formats by file extension (any other name needs --format)
DECODE_FORMATS = {".pt": "pt", ".pth": "pt", ".npy": "npy", ".h5": "h5", ".hdf5": "h5"}


#: the temperatures stats --reference reports KL at unless --temperature says otherwise
DEFAULT_KL_TEMPERATURES = [1.0, 4.0]


DEMO_FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "lite0_8x64_fp16.npy")


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
        note = busy_machine_note(codec.config.get("fit_threads"), torch.get_num_threads(), load_average(),
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
        choose_kwargs = dict(allow_top1_loss=args.allow_top1_loss, seed=args.seed, objective=objective,
                             progress=progress_printer(args.quiet))
        if args.distributed:   # chosen once, by rank 0, and sent to every rank: one codec for all shards
            from .. import distributed
            shared = distributed.choose(src, target, budget, device=args.device, **choose_kwargs)
            choice, codec_id, config, met, unmet = shared.choice, shared.codec, shared.config, shared.met, shared.unmet
        else:
            choice = ch.choose(src, target, budget, device=resolve_device(args.device), **choose_kwargs)
            codec_id, config, met, unmet = choice.codec, choice.config, choice.met, ch.unmet_text(choice)
        if explicit_target and not met and not args.best_effort:
            raise UsageError(f"{args.input}: {unmet}; --best-effort writes it")
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
               shard_rows=args.shard_rows, shards=args.shards, progress=progress_printer(args.quiet), **config)
    fid = None
    if not args.quiet or args.json or output != args.output:
        try:
            fid = ch.written_fidelity(output, src, [t for _, t in target], seed=args.seed)
            missed = ch.written_misses(fid, stats_of(output)["bits_per_label"], required, budget,
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
    print_encode_summary(args, codec_id, config, choosing, choice, fid, required, budget, elapsed)
    return EXIT_OK


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
                  progress=progress_printer(args.quiet), **config)
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
    export_folder(args.input, args.output, args.layout, device=args.device, progress=progress_printer(args.quiet))
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


def cmd_stats(args):
    from ..format.stats import format_stats
    bad = [t for t in args.temperature if not (0 < t < float("inf"))]
    if bad:
        raise UsageError(f"--temperature must be positive and finite, got {bad[0]:g}")
    s = stats_of(args.input)
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
               progress=progress_printer(args.quiet))
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
