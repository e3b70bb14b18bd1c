"""mem0-style API: ``from tiered_memory.compat import Memory, AsyncMemory``.

Code written for mem0's ``Memory`` / ``AsyncMemory`` runs on a local tiered_memory store with the
same calls and result shapes; see :mod:`tiered_memory.integrations.mem0` for what differs.
"""

from tiered_memory.integrations.mem0 import (
    AsyncMemory,
    ExtractedFactsError,
    Memory,
    MemoryIdNotFoundError,
    MessageFormatError,
    ScopeError,
)

__all__ = ["AsyncMemory", "ExtractedFactsError", "Memory", "MemoryIdNotFoundError", "MessageFormatError",
           "ScopeError"]
