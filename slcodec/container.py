"""TEMPORARY alias: this module moved to slcodec.format.container (issue 13); removed before the session ends."""
import sys

from .format import container as _moved

sys.modules[__name__] = _moved
