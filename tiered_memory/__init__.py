"""tiered_memory: an agent's memory in three tiers (hot LRU, warm hnswlib over int8, cold LMDB)."""

from .agents import AgentHub, SharedInfo, Version
from .agents_handle import Agent, Entry
from .agents_store import Notification
from .config import MemoryConfig
from .conversation import Conversation, ConversationBuffer, Message, MessageTooLargeError
from .encoders import Encoder, MiniLMEncoder
from .engine import (
    DEFAULT_ENCODER,
    MaintenanceReport,
    StoreStats,
    TieredMemory,
    TierStats,
)
from .errors import (
    ConfigError,
    DecryptionError,
    DimensionMismatchError,
    EmptyTextError,
    EncoderError,
    EncryptionRequiredError,
    InvalidFilterError,
    InvalidInputError,
    InvalidTextError,
    InvalidVectorError,
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
from .prefetch import PrefetchConfig, PrefetchStats
from .quantization import (
    BinaryQuantizer,
    Float16Quantizer,
    Float32Quantizer,
    Int4Quantizer,
    Int8Quantizer,
    Quantizer,
    make_quantizer,
)
from .records import Hit, Memory, Tier
from .tokens import TokenizerDataError, UnknownEncodingError, count_tokens

__version__ = "0.1.0"

__all__ = [
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
    "InvalidFilterError",
    "InvalidInputError",
    "InvalidTextError",
    "InvalidVectorError",
    "MaintenanceReport",
    "Memory",
    "MemoryConfig",
    "MemoryNotFoundError",
    "MetadataError",
    "MiniLMEncoder",
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
