"""TEMPORARY alias: this module moved to slcodec.pipeline.reader (issue 13); removed before the session ends."""
import sys

from .pipeline import reader as _moved

sys.modules[__name__] = _moved
