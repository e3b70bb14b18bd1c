"""tiered_memory: an agent's memory in three tiers (hot LRU, warm hnswlib over int8, cold LMDB)."""

from typing import TYPE_CHECKING, Any

from tiered_memory.agents.agent import Agent, Entry
from tiered_memory.agents.hub import AgentHub, SharedInfo, Version
from tiered_memory.agents.store import Notification
from tiered_memory.config import MemoryConfig
from tiered_memory.conversation.prefetch import PrefetchConfig, PrefetchStats
from tiered_memory.encoders import ENCODER_NAMES, Encoder, MiniLMEncoder, make_encoder
from tiered_memory.engine import (
    DEFAULT_ENCODER,
    MaintenanceReport,
    StoreStats,
    TieredMemory,
    TierStats,
)
from tiered_memory.errors import (
    ConcurrentUpdateError,
    ConfigError,
    DecryptionError,
    DimensionMismatchError,
    EmptyTextError,
    EncoderError,
    EncryptionRequiredError,
    InvalidExpiryError,
    InvalidFilterError,
    InvalidInputError,
    InvalidTextError,
    InvalidVectorError,
    MemoryExpiredError,
    MemoryNotFoundError,
    MetadataError,
    PermissionDenied,
    QuotaExceededError,
    SchemaVersionError,
    StorageError,
    StoreClosedError,
    StoreLockedError,
    TextTooLargeError,
    TieredMemoryError,
)
from tiered_memory.onnx_encoder import OnnxMiniLMEncoder
from tiered_memory.quantization import (
    BinaryQuantizer,
    Float16Quantizer,
    Float32Quantizer,
    Int4Quantizer,
    Int8Quantizer,
    Quantizer,
    make_quantizer,
)
from tiered_memory.records import Hit, Memory, Tier

if TYPE_CHECKING:
    from tiered_memory.aio import AsyncTieredMemory
    from tiered_memory.conversation.session import Conversation, ConversationBuffer, Message, MessageTooLargeError
    from tiered_memory.conversation.tokens import TokenizerDataError, UnknownEncodingError, count_tokens

# Imported on first use, so `import tiered_memory` does not load tiktoken (conversations and
# token counting need it; -X importtime: 26 ms of the import) nor asyncio (AsyncTieredMemory).
# torch loads only with the PyTorch encoder or an ONNX export; tests/test_imports.py checks
# both stay out.
_LAZY = {
    "AsyncTieredMemory": "aio",
    "Conversation": "conversation.session", "ConversationBuffer": "conversation.session",
    "Message": "conversation.session", "MessageTooLargeError": "conversation.session",
    "TokenizerDataError": "conversation.tokens", "UnknownEncodingError": "conversation.tokens",
    "count_tokens": "conversation.tokens",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tiered_memory' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AsyncTieredMemory",
    "Agent",
    "AgentHub",
    "Entry",
    "Notification",
    "SharedInfo",
    "Version",
    "Conversation",
    "ConversationBuffer",
    "Message",
    "MessageTooLargeError",
    "PrefetchConfig",
    "PrefetchStats",
    "TokenizerDataError",
    "UnknownEncodingError",
    "count_tokens",
    "DEFAULT_ENCODER",
    "BinaryQuantizer",
    "ConfigError",
    "ConcurrentUpdateError",
    "DecryptionError",
    "EncryptionRequiredError",
    "DimensionMismatchError",
    "EmptyTextError",
    "Encoder",
    "EncoderError",
    "Float16Quantizer",
    "Float32Quantizer",
    "Hit",
    "Int4Quantizer",
    "Int8Quantizer",
    "InvalidExpiryError",
    "InvalidFilterError",
    "InvalidInputError",
    "InvalidTextError",
    "InvalidVectorError",
    "MaintenanceReport",
    "Memory",
    "MemoryConfig",
    "MemoryExpiredError",
    "MemoryNotFoundError",
    "MetadataError",
    "MiniLMEncoder",
    "OnnxMiniLMEncoder",
    "ENCODER_NAMES",
    "make_encoder",
    "PermissionDenied",
    "Quantizer",
    "QuotaExceededError",
    "SchemaVersionError",
    "StorageError",
    "StoreClosedError",
    "StoreLockedError",
    "StoreStats",
    "TextTooLargeError",
    "Tier",
    "TierStats",
    "TieredMemory",
    "TieredMemoryError",
    "make_quantizer",
    "__version__",
]
