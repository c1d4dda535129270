"""TEMPORARY alias: this module moved to slcodec.format.stats (issue 13); removed before the session ends."""
import sys

from .format import stats as _moved

sys.modules[__name__] = _moved
