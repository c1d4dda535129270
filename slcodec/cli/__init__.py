"""The command line: a thin shell over the Python API (entry point ``slcodec = slcodec.cli:main``)."""
from .commands import build_parser, main  # noqa: F401
