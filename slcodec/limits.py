"""TEMPORARY alias: this module moved to slcodec.format.limits (issue 13); removed before the session ends."""
import sys

from .format import limits as _moved

sys.modules[__name__] = _moved
