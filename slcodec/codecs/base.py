"""The codec interface and the registry of codecs.

A codec turns a block of labels ``[n, C]`` into

* *parameters*: named numpy arrays shared by every label (codebooks, decoder
  weights), fitted once and stored as array sections - the fixed part of a file;
* *streams*: named 2-D numpy arrays ``[n, width]`` whose row ``i`` belongs to
  label ``i`` - the marginal part, stored chunked so any row range decodes alone.

Encoding is split into ``fit`` (on a sample, may be a no-op) and ``encode``
(any number of batches, each independent), so a streaming writer can fit once
and encode batches as a teacher produces them.  ``decode`` maps stream rows back
to labels on any torch device.  ``get_config``/``from_config`` round-trip the
JSON/msgpack-able configuration stored in the container header.
"""
from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np

from .._checks import check_int
from ..format import limits, rules
from ..errors import ConfigError
from .rules import check_options

SOURCE_KINDS = ("logits", "probs")


@dataclasses.dataclass(frozen=True)
class Option:
    """One codec option: a keyword of the codec's config and a CLI flag (``--name-with-dashes``)."""

    name: str
    type: Callable[[str], Any]
    default: Any
    help: str
    nargs: str | None = None
    choices: tuple | None = None
    #: the type and range rule of the value (slcodec.codecs.rules), checked before anything is built
    rule: Any = None


@dataclasses.dataclass
class Context:
    """What a codec needs to know beside the labels themselves."""

    source_kind: str = "logits"       # what the label values are: "logits" or "probs"
    classes: int = 0
    device: str = "cpu"                # torch device for fitting / encoding / decoding
    seed: int = 0
    #: progress(done, total, what); ``what`` names the stage, optionally followed by ": " and a
    #: status shown beside the bar (e.g. "vq fit: loss 0.0412")
    progress: Callable[[int, int, str], None] | None = None
    log: Callable[[str], None] | None = None
    #: leading shape of the whole label set: (N,) or (images, augmentations); None if unknown
    label_shape: tuple | None = None
    #: global label indices (int64 numpy) of the rows being fitted / encoded / decoded, when the
    #: caller knows them (Writer and Reader always pass them); codecs that condition on the
    #: image of a label (``vq`` with ``image_bias``) need them
    rows: Any = None
    #: the caller ran validate_streams on these stream rows already (the Reader does)
    streams_checked: bool = False


class Codec(ABC):
    """Abstract codec.  Subclasses set ``codec_id`` and ``options`` and register themselves."""

    codec_id: ClassVar[str]
    options: ClassVar[tuple[Option, ...]] = ()
    #: True when decode returns a new tensor nothing else refers to (not a view of its streams),
    #: so readers may convert it in place
    decode_owns_output: ClassVar[bool] = False
    #: options the fit does not depend on (only how labels are encoded against fitted
    #: parameters): :meth:`with_options` may change them on a fitted codec
    encode_only_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **config):
        known = {o.name: o for o in self.options}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ConfigError(f"codec {self.codec_id!r} has no option {unknown[0]!r} "
                              f"(options: {', '.join(known) or 'none'})")
        self.config = check_options(self.codec_id, self.options,
                                    {name: config.get(name, opt.default) for name, opt in known.items()})
        self.validate_config()
        self.fit_info: dict = {}

    # -- configuration ---------------------------------------------------
    def validate_config(self) -> None:
        """Raise ConfigError on a bad combination of option values (each value alone was checked
        by its option's rule already) and set up the codec's state."""

    def get_config(self) -> dict:
        return dict(self.config)

    #: format minor version a file written with this codec (as configured) needs; see FORMAT.md
    def format_minor(self) -> int:
        return 0

    def fit_statistics(self, label_shape, classes: int) -> tuple[str, ...]:
        """Names of the whole-input statistics (``slcodec.pipeline.statistics``) this codec wants
        before fitting a set of this leading shape; the pipeline computes each over every label and
        hands it to :meth:`set_fit_statistic`.  Default: none."""
        return ()

    def set_fit_statistic(self, name: str, value: np.ndarray) -> None:
        """Receive the statistic ``name`` of the whole input (one that :meth:`fit_statistics` asked for)."""
        raise ConfigError(f"codec {self.codec_id!r} does not use the input statistic {name!r}")

    @classmethod
    def from_config(cls, config: dict) -> "Codec":
        return cls(**config)

    def with_options(self, **options) -> "Codec":
        """A codec sharing this one's fitted state (parameters, encoder), with some of its
        :attr:`encode_only_options` changed: one fit, several files (the no-flag choice's
        trials of ``vq`` with and without a residual)."""
        other = sorted(set(options) - set(self.encode_only_options))
        if other:
            raise ConfigError(f"codec {self.codec_id!r}: option {other[0]!r} changes the fit; only "
                              f"{', '.join(self.encode_only_options) or 'none'} may change after it")
        twin = copy.copy(self)
        twin.config = check_options(self.codec_id, self.options, dict(self.config, **options))
        twin.fit_info = dict(self.fit_info)
        return twin

    # -- identity (as numcodecs defines it: a codec is its config - here, and what it has fitted) --
    def __eq__(self, other):
        if not isinstance(other, Codec):
            return NotImplemented
        if type(self) is not type(other) or self.get_config() != other.get_config():
            return False
        mine, theirs = self.get_params(), other.get_params()
        return mine.keys() == theirs.keys() and all(
            np.asarray(mine[k]).dtype == np.asarray(theirs[k]).dtype and np.array_equal(mine[k], theirs[k])
            for k in mine)

    __hash__ = None   # a fit changes what a codec is: not a dict key

    def __repr__(self):
        """The codec as its constructor call, ``TopK(k=5)``: what ``from_config(get_config())`` rebuilds."""
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"

    # -- parameters (the fixed part) --------------------------------------
    def fit(self, labels, ctx: Context) -> None:
        """Fit parameters on a sample ``labels`` (torch float32 ``[n, C]``).  Default: nothing to fit."""

    def get_params(self) -> dict[str, np.ndarray]:
        return {}

    def set_params(self, params: dict[str, np.ndarray], ctx: Context) -> None:
        """Load parameters read from a container; raise FormatError if they are inconsistent."""
        if params:
            from ..errors import FormatError
            raise FormatError(f"codec {self.codec_id!r} takes no parameters, file has {sorted(params)}",
                              rule=rules.CODEC_PARAMS)

    # -- labels <-> streams -----------------------------------------------
    @abstractmethod
    def encode(self, labels, ctx: Context) -> dict[str, np.ndarray]:
        """Encode torch float32 ``[n, C]`` labels (values of kind ``ctx.source_kind``) to streams."""

    @abstractmethod
    def decode(self, streams: dict, ctx: Context):
        """Decode torch tensors (stream rows, on ``ctx.device``) to float32 ``[n, C]`` on that device.

        The values are of kind :meth:`decoded_kind`.
        """

    def validate_streams(self, streams: dict[str, np.ndarray], classes: int) -> None:
        """Raise FormatError(rule=rules.CODEC_STREAMS) if stream rows (numpy) hold values out of range.

        Called by the reader on every block it decodes and by ``slcodec verify`` on every row,
        so that a file with, say, a class id >= C is rejected rather than decoded wrongly."""

    def decoded_kind(self, source_kind: str) -> str:
        """What ``decode`` returns: ``"logits"`` (log-space, any per-row offset) or ``"probs"``."""
        return source_kind

    def stream_specs(self, classes: int) -> dict[str, tuple[str, int]]:
        """Expected ``{stream name: (dtype, width)}``; the reader checks files against it."""
        raise NotImplementedError


def check_classes(codec_id: str, classes) -> int:
    """``classes`` (C) as an int within the format's bounds (2 .. MAX_CLASSES), else ConfigError."""
    return check_int(classes, f"{codec_id}: the number of classes", 2, limits.MAX_CLASSES)


def check_decode_size(codec_id: str, rows: int, classes: int) -> None:
    """Refuse a decode call whose float32 ``[rows, classes]`` result exceeds MAX_DECODE_BYTES
    (checked before allocating; a request to split, not a damaged file)."""
    check_classes(codec_id, classes)
    if rows * classes * 4 > limits.MAX_DECODE_BYTES:
        raise ConfigError(f"{codec_id}: decoding {rows:,} labels of {classes:,} classes is "
                          f"{rows * classes * 4:,} bytes, over the {limits.MAX_DECODE_BYTES:,}-byte limit of "
                          "one call: decode fewer labels at a time")


def block_rows(classes: int) -> int:
    """Rows of a ``[rows, classes]`` float32 working block of at most DECODE_BLOCK_BYTES."""
    return max(1, limits.DECODE_BLOCK_BYTES // (4 * max(1, classes)))


_EXPONENT = {2: (np.uint16, 0x7FFF, 0x7C00), 4: (np.uint32, 0x7FFFFFFF, 0x7F800000),
             8: (np.uint64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


def all_finite(values: np.ndarray) -> bool:
    """Whether a float16/32/64 array holds no NaN and no infinity.  Tested on the bits (the
    magnitude below the all-ones exponent), which costs a fraction of ``np.isfinite`` on float16."""
    a = np.ascontiguousarray(values)
    utype, magnitude, inf = _EXPONENT[a.dtype.itemsize]
    bits = a.reshape(-1).view(utype)
    step = 1 << 20
    buf = np.empty(min(step, bits.size), dtype=utype)
    for s in range(0, bits.size, step):
        part = bits[s:s + step]
        if np.bitwise_and(part, utype(magnitude), out=buf[:part.size]).max() >= inf:
            return False
    return True


_REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    if cls.codec_id in _REGISTRY:
        raise RuntimeError(f"codec id {cls.codec_id!r} registered twice")
    _REGISTRY[cls.codec_id] = cls
    return cls


#: the module of a built-in codec whose id is not its module's name
_MODULE_OF_CODEC = {"fp32": "raw", "fp16": "raw"}


def get_codec_class(codec_id: str) -> type[Codec]:
    if codec_id not in _REGISTRY and isinstance(codec_id, str) and codec_id.isidentifier():
        _load_builtin_module(_MODULE_OF_CODEC.get(codec_id, codec_id))  # just the one needed
    if codec_id not in _REGISTRY:
        _load_builtin()
    try:
        return _REGISTRY[codec_id]
    except KeyError:
        raise ConfigError(f"unknown codec {codec_id!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def codec_ids() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin_module(name: str) -> None:
    import importlib
    import importlib.util

    if importlib.util.find_spec(f"{__package__}.{name}") is not None:
        importlib.import_module(f"{__package__}.{name}")


def _load_builtin() -> None:
    # Imported lazily so that the container layer (and `slcodec stats`) never needs torch.
    import importlib
    import importlib.util

    for name in ("raw", "topk", "sparse", "vq", "sq", "imgprior"):
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            importlib.import_module(f"{__package__}.{name}")
