"""The command line: a thin shell over the Python API (entry point ``slcodec = slcodec.cli:main``).

Modules: usage (exit codes, the usage error), parser, commands (``cmd_*``), reports (what is
printed), main (the entry point)."""
from .main import main  # noqa: F401
from .parser import build_parser  # noqa: F401
