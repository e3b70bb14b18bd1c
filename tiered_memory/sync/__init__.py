"""Offline-first sync: an embedded store that exchanges changes with another store (a PostgreSQL
store, or any other store directory) when it is back online.

- **Change tracking**: every add, update and delete writes, in its own transaction, a change stamp
  for each memory it changes (a hybrid-logical-clock stamp, the stamps of the versions it descends
  from, the store it was made in), numbered per namespace in commit order
  (:func:`tiered_memory.tiers.cold_ops.stamp_op`). A delete leaves a tombstone stamp.
- **Exchange**: :meth:`TieredMemory.sync` pulls the other store's changes since its cursor, then
  pushes its own, in batches (:mod:`.batch`) of stored bytes: vectors travel as int8 codes and
  float originals (nothing is re-embedded), sealed memories stay sealed.
- **Conflicts** (:mod:`.merge`): the newest change wins on both sides, a delete being a change
  like any other; the loser is kept in :meth:`TieredMemory.sync_history`.
- **Interrupted syncs**: each batch commits with the receiver's cursor in one transaction.
- **Tombstones** are kept until every store that has synced with this one has applied them
  (:meth:`SyncEndpoint.forget_peer` stops waiting for a store that will not come back).

What is local to each store and never synced: access statistics, tiers, expiry extensions
(``extend``), expiry sweeps (each store expires memories by itself), agent-hub grants and
notifications (a merge therefore never widens anyone's access).
"""

from tiered_memory.sync.endpoint import Applied, Conflict, LostVersion, SyncEndpoint
from tiered_memory.sync.session import SyncReport, sync_stores

__all__ = ["Applied", "Conflict", "LostVersion", "SyncEndpoint", "SyncReport", "sync_stores"]
