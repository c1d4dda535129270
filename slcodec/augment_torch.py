"""TEMPORARY alias: this module moved to slcodec.augment.views (issue 13); removed before the session ends."""
import sys

from .augment import views as _moved

sys.modules[__name__] = _moved
