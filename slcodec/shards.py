"""TEMPORARY alias: this module moved to slcodec.format.shards (issue 13); removed before the session ends."""
import sys

from .format import shards as _moved

sys.modules[__name__] = _moved
