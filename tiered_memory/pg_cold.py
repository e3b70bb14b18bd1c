"""Deprecated alias: this module moved to :mod:`tiered_memory.tiers.pg_cold`; import it from there."""

import warnings

from tiered_memory.tiers.pg_cold import *  # noqa: F403
from tiered_memory.tiers.pg_cold import __doc__ as _moved_doc  # noqa: F401

warnings.warn("tiered_memory.pg_cold moved to tiered_memory.tiers.pg_cold", DeprecationWarning, stacklevel=2)
