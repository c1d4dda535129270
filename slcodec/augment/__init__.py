"""Augmentation records: the seeded, numpy-only core (:mod:`.record`, torch-free, read by the
format layer's tools) and the torch views built from it (:mod:`.views`, imported on demand).

``from slcodec.augment import Policy`` keeps working: the record's public names are re-exported."""
from .record import *  # noqa: F401,F403
from .record import __all__  # noqa: F401
