"""``slcodec``'s entry point: runs a command and turns every error into one line and an exit code.

Exit codes: 0 success; 1 ``verify`` found a damaged or invalid file; 2 bad input, bad
arguments or an unreadable file (one line on stderr, no traceback); 3 an internal error.
"""
from __future__ import annotations

import os
import sys
from ..errors import SlcodecError, one_line
from .parser import CODEC_OPTION_COMMANDS, build_parser, command_of
from .usage import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_USAGE


def main(argv=None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
        args = build_parser(codec_options=command_of(argv) in CODEC_OPTION_COMMANDS).parse_args(argv)
        return args.func(args)
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except SlcodecError as exc:
        print(f"slcodec: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # the reader of stdout went away (`slcodec stats F | head`): no error line, as other tools do;
        # stdout is pointed at /dev/null so the interpreter's final flush cannot fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (FileNotFoundError, IsADirectoryError, PermissionError, OSError) as exc:
        name = getattr(exc, "filename", None)
        print(f"slcodec: error: {name + ': ' if name else ''}{exc.strerror or one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:  # a dependency missing (encode or decode without torch), or a bug of ours
        if (getattr(exc, "name", None) or "").split(".")[0] == "slcodec":
            return internal_error(exc)
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
        return internal_error(exc)


def internal_error(exc) -> int:
    if os.environ.get("SLCODEC_DEBUG"):
        raise exc
    print(f"slcodec: internal error: {type(exc).__name__}: {one_line(exc)} "
          "(set SLCODEC_DEBUG=1 for a traceback)", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
