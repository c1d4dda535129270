"""TEMPORARY alias: this module moved to slcodec.format.atomic (issue 13); removed before the session ends."""
import sys

from .format import atomic as _moved

sys.modules[__name__] = _moved
