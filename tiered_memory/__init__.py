"""tiered_memory: an agent's memory in three tiers (hot LRU, warm hnswlib over int8, cold LMDB)."""

from .config import MemoryConfig
from .encoders import Encoder, MiniLMEncoder
from .engine import DEFAULT_ENCODER, MaintenanceReport, StoreStats, TieredMemory, TierStats
from .errors import (
    ConfigError,
    DecryptionError,
    DimensionMismatchError,
    EmptyTextError,
    EncoderError,
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

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ENCODER",
    "BinaryQuantizer",
    "ConfigError",
    "DecryptionError",
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
