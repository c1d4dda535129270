"""The command line's argument parser; codec options are added only for the commands that take them, so
that inspecting a file needs no torch."""
from __future__ import annotations
from .._version import __version__
from . import commands
from .commands import DEFAULT_KL_TEMPERATURES
from .reports import default_text
from .usage import Parser


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


def _option_help(owned) -> str:
    """The help of an option shared by codecs ``owned`` ([(codec id, Option)]), its default stated
    once: not appended when the help already states it, per codec when the codecs differ."""
    text = owned[0][1].help.strip()
    if "default" in text.lower():
        return text
    defaults = {cid: default_text(o.default) for cid, o in owned}
    if len(set(defaults.values())) == 1:
        return f"{text} (default: {next(iter(defaults.values()))})"
    return f"{text} (default: {', '.join(f'{cid} {d}' for cid, d in defaults.items())})"


# --------------------------------------------------------------------------- parser
QUIET_HELP = "print nothing but errors (no summary, no progress bars)"


VQSL_INPUT_HELP = "a .vqsl file (or the manifest of a sharded set)"


#: the commands that take the codec options
CODEC_OPTION_COMMANDS = ("encode", "import")


def command_of(argv) -> str | None:
    """The command named in ``argv`` (the first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(codec_options: bool = True):
    # One declarative listing of every command and option (no logic): long because the command
    # line is wide, and kept in one piece so that its whole surface reads in one place.
    """The parser; ``codec_options=False`` leaves out the options of encode and import, whose
    building loads every codec's module (main() does so for the other commands, to start fast)."""
    p = Parser(prog="slcodec", description="Storage codec for the soft labels of dataset distillation.")
    p.add_argument("--version", action="version", version=f"slcodec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
                   help="budget: bits per label of the whole file, all counted (default: 0.02 * 16 * C, at least 10)")
    e.add_argument("--allow-top1-loss", action="store_true",
                   help="the chosen codec may change a label's top-1 class (default: top-1 stays 100%%)")
    e.add_argument("--best-effort", action="store_true",
                   help="write the best fidelity reached when an explicit --max-kl cannot be met")
    e.add_argument("--json", action="store_true", help="print the summary (bits, fidelity, choice) as JSON")
    e.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    if codec_options:
        _add_codec_options(e)
    e.set_defaults(func=commands.cmd_encode)

    mg = sub.add_parser("merge", help="write a sharded set (its manifest) as one file")
    mg.add_argument("input", help="the manifest")
    mg.add_argument("-o", "--output", required=True, help="the single .vqsl file to write (replaced atomically)")
    mg.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    mg.set_defaults(func=commands.cmd_merge)

    sp = sub.add_parser("split", help="write one file as a sharded set (manifest + shards)")
    sp.add_argument("input", help="the .vqsl file to split")
    sp.add_argument("-o", "--output", required=True, help="the manifest to write; shards go beside it")
    sp.add_argument("--shards", type=int, default=None, help="number of shards (of equal size)")
    sp.add_argument("--shard-rows", type=int, default=None, help="labels per shard")
    sp.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sp.set_defaults(func=commands.cmd_split)

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
    d.set_defaults(func=commands.cmd_decode)

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
    s.set_defaults(func=commands.cmd_stats)

    v = sub.add_parser("verify", help="check checksums and structure (exit 0 valid, 1 invalid)")
    v.add_argument("inputs", nargs="+", help=".vqsl files, manifests (the whole set) or shards")
    v.add_argument("--structure-only", action="store_true",
                   help="checksums and structure only: skip the codec-level checks of parameters and streams")
    v.set_defaults(func=commands.cmd_verify)

    i = sub.add_parser("info", help="print the header")
    i.add_argument("input", help=VQSL_INPUT_HELP)
    i.add_argument("--json", action="store_true",
                   help="the whole header as JSON, with the fit's full record (e.g. vq's loss history)")
    i.set_defaults(func=commands.cmd_info)

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
    im.set_defaults(func=commands.cmd_import)

    ex = sub.add_parser("export", help="write a framework's label folder back from a .vqsl file with an explicit "
                                       "augmentation record")
    ex.add_argument("input", help="a .vqsl file with an explicit augmentation record (made by import)")
    ex.add_argument("-o", "--output", required=True, help="the folder to create (must not exist, or be empty)")
    ex.add_argument("--layout", default=None, choices=("sre2l", "fkd"), help="default: the layout recorded in the file")
    ex.add_argument("--device", default="cpu", help="torch device to decode on (default: cpu)")
    ex.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    ex.set_defaults(func=commands.cmd_export)

    m = sub.add_parser("demo", help="encode the bundled real-teacher labels and report bits and fidelity")
    m.add_argument("--output-dir", default=None,
                   help="keep the encoded files in this existing folder (default: a temporary folder, removed "
                        "at the end)")
    m.add_argument("--codecs", nargs="+", default=None, help="codecs to run (default: the default codec and topk)")
    m.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    m.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    m.set_defaults(func=commands.cmd_demo)
    return p
