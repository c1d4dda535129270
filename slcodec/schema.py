"""TEMPORARY alias: this module moved to slcodec.format.schema (issue 13); removed before the session ends."""
import sys

from .format import schema as _moved

sys.modules[__name__] = _moved
