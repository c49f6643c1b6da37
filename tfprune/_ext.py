"""The compiled extension tfprune._C, or None (with one warning) when it was not built."""
from __future__ import annotations

import warnings

__all__ = ["extension"]

try:
    from . import _C as extension
except ImportError as error:  # built with TFPRUNE_NO_EXT=1, or not built yet
    extension = None
    warnings.warn(f"tfprune._C is not available ({error}); using the torch reference paths", stacklevel=2)
