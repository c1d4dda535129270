"""TEMPORARY alias: this module moved to slcodec.frameworks.importers (issue 13); removed before the session ends."""
import sys

from .frameworks import importers as _moved

sys.modules[__name__] = _moved
