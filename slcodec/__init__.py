"""slcodec: a storage codec and file format for the soft labels of dataset distillation."""
__version__ = "0.1.0"

from .errors import ConfigError, FormatError, InputError, SlcodecError  # noqa: E402

__all__ = ["__version__", "encode", "open", "Reader", "Writer", "SlcodecError", "FormatError", "InputError",
           "ConfigError"]


def __getattr__(name):
    # The API needs torch; importing it lazily keeps `import slcodec.container` torch-free.
    if name in ("encode", "open", "Reader"):
        from . import api
        return getattr(api, name)
    if name == "Writer":
        from .writer import Writer
        return Writer
    raise AttributeError(f"module 'slcodec' has no attribute {name!r}")
