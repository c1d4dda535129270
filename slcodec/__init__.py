"""slcodec: a storage codec and file format for the soft labels of dataset distillation."""
from ._version import __version__  # noqa: E402

from .errors import ConfigError, FormatError, InputError, SlcodecError  # noqa: E402

__all__ = ["__version__", "encode", "open", "Reader", "Writer", "SlcodecError", "FormatError", "InputError",
           "ConfigError"]


def __getattr__(name):
    # The API needs torch; importing it lazily keeps `import slcodec.format.container` torch-free.
    if name == "encode":
        from .pipeline.encode import encode
        return encode
    if name in ("open", "Reader"):
        from .pipeline import reader
        return getattr(reader, name)
    if name == "Writer":
        from .pipeline.writer import Writer
        return Writer
    raise AttributeError(f"module 'slcodec' has no attribute {name!r}")
