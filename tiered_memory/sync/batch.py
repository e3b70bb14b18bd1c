"""The sync wire format: one namespace's changes from one store, as bytes any store can apply.

A batch is self-describing (msgpack): a header naming the sending store, its vector space
(encoder identity, dimension, originals' precision, the quantizer state its codes were made with,
sealed as the store keeps it) and the range of the namespace's change numbers it covers, then one
entry per memory: its stamp row and the stored bytes of its record, catalog row, int8 code and
float original. Values are exactly what the sender's cold store holds, so a sensitive memory's
text, metadata and vectors travel sealed and no store re-embeds what it receives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from tiered_memory.errors import SyncError
from tiered_memory.tiers.cold_ops import StoredStamp, StoredVersion

FORMAT = "tiered-memory-changes"
FORMAT_VERSION = 1


@dataclass
class ChangeBatch:
    store_id: bytes  # the sending store
    encoder: str | None  # the sender's encoder identity (None: vectors given by the caller)
    dimension: int
    originals: str  # "none", "float16" or "float32": how the sender keeps float originals
    quantizer: bytes  # the quantizer state the codes were made with, as the sender stores it
    namespace: str
    ns_id: int  # the sender's id of the namespace (sealed codes are bound to it)
    after: int  # the batch holds the namespace's changes numbered after this ...
    upto: int  # ... up to this one (the receiver's cursor once applied)
    more: bool  # the sender has changes after upto
    versions: list[StoredVersion] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        header = {"format": FORMAT, "version": FORMAT_VERSION, "store": self.store_id, "encoder": self.encoder,
                  "dimension": self.dimension, "originals": self.originals, "quantizer": self.quantizer,
                  "namespace": self.namespace, "ns_id": self.ns_id, "after": self.after, "upto": self.upto,
                  "more": self.more}
        entries = [[v.memory_id, v.stamp.pack() if v.stamp is not None else None, v.record, v.row, v.code,
                    v.original] for v in self.versions]
        return msgpack.packb([header, entries], use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> ChangeBatch:
        try:
            header, entries = msgpack.unpackb(data, raw=False)
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise ValueError("not a batch of changes")
            if header.get("version") != FORMAT_VERSION:
                raise SyncError(f"a batch of changes in format version {header.get('version')!r}; this tiered_memory "
                                f"reads version {FORMAT_VERSION}: upgrade both stores' tiered_memory to one version")
            versions = []
            for memory_id, stamp, record, row, code, original in entries:
                if not isinstance(memory_id, str) or not isinstance(stamp, bytes):
                    raise ValueError("an entry without its id or stamp")
                if not all(value is None or isinstance(value, bytes) for value in (record, row, code, original)):
                    raise ValueError(f"entry {memory_id!r} holds a value that is not bytes")
                versions.append(StoredVersion(memory_id, StoredStamp.unpack(stamp, memory_id), record, row, code,
                                              original))
            batch = cls(_typed(header, "store", bytes), header.get("encoder"), _typed(header, "dimension", int),
                        _typed(header, "originals", str), _typed(header, "quantizer", bytes),
                        _typed(header, "namespace", str), _typed(header, "ns_id", int), _typed(header, "after", int),
                        _typed(header, "upto", int), _typed(header, "more", bool), versions)
        except SyncError:
            raise
        except Exception as err:  # a damaged or foreign payload: nothing of it is applied
            raise SyncError(f"a batch of changes is damaged or not one ({err}); nothing of it was applied: "
                            "sync again") from err
        if batch.originals not in ("none", "float16", "float32") or batch.upto < batch.after:
            raise SyncError("a batch of changes has an impossible header; nothing of it was applied: sync again")
        return batch


def _typed(header: dict[str, Any], name: str, kind: type) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"header field {name!r} is {value!r:.40}")
    return value
