"""Exceptions raised by slcodec.

Every error a user can cause by handing us a bad file or a bad argument is a
subclass of :class:`SlcodecError`; the CLI prints those as one line and exits 2
(``verify`` exits 1 on a damaged container).
"""


class SlcodecError(Exception):
    """Base class of every error slcodec raises on purpose."""


class FormatError(SlcodecError):
    """A ``.vqsl`` container (or a section of it) is malformed, damaged or unsupported.

    ``rule`` names the MUST-reject rule of FORMAT.md that the file broke.
    """

    def __init__(self, message, rule="format"):
        super().__init__(message)
        self.rule = rule


class ResourceError(SlcodecError):
    """slcodec ran out of memory, or a request exceeds one of its documented resource caps
    (decoded bytes per decode call).  Not a verdict on the file: ``verify`` exits 2, not 1."""


class InputError(SlcodecError):
    """A label input file (``.pt``, ``.npy``, ``.npz``, ``.h5``) cannot be used."""


class ConfigError(SlcodecError):
    """A codec option or API argument is invalid."""


class SetReplacedError(SlcodecError):
    """A sharded set was replaced by a new one while it was being read: not damage; open it again."""


_TERMINAL_ESCAPE = r"\x1b\[[0-9;]*[A-Za-z]"


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's message as one printable line: terminal escape codes and control
    characters dropped, runs of whitespace (newlines included) made one space, cut to ``limit``
    characters; the exception's type name when the message is empty.  The CLI and the input
    adapters print every error through this, so a hostile file cannot draw on the terminal."""
    import re
    text = re.sub(_TERMINAL_ESCAPE, "", str(exc))
    text = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", text).split())
    if not text:
        return type(exc).__name__
    if limit is not None and len(text) > limit:
        text = text[:max(0, limit - 3)] + "..."
    return text
