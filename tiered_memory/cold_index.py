"""Deprecated alias: this module moved to :mod:`tiered_memory.tiers.cold_index`; import it from there."""

import warnings

from tiered_memory.tiers.cold_index import *  # noqa: F403
from tiered_memory.tiers.cold_index import __doc__ as _moved_doc  # noqa: F401

warnings.warn("tiered_memory.cold_index moved to tiered_memory.tiers.cold_index", DeprecationWarning, stacklevel=2)
