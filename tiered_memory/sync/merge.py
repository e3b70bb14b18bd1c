"""How a version received from another store meets the one this store holds.

Each memory's stamp row names its current version (a hybrid-logical-clock stamp) and the stamps of
the versions it descends from. Received version R against held version H:

- no H: R is taken (a new memory, or a tombstone for one this store never had);
- same stamp: nothing to do (the store already has R; it may have come back from a peer);
- H's stamp among R's ancestors: R descends from H, R is taken (fast-forward);
- R's stamp among H's ancestors: R is older than what this store has, nothing to do (an ancestry
  keeps ANCESTRY_MAX stamps: a version older than the oldest a full one keeps counts as one);
- otherwise both changed the memory since they last agreed: a **conflict**. The version with the
  larger stamp wins (newest change wins; stamps never tie, they end with the writer's id), a delete
  being a version like any other (a later update brings a deleted memory back, a later delete
  removes an updated one). The result is a new version stamped by the store that resolved it,
  descending from both, with the winner's content and version ``max(both) + 1``: every store then
  sees it as a fast-forward and ends with the same memory, whichever order syncs run in. The
  loser is kept in the memory's sync history on the resolving store.
"""

from __future__ import annotations

from enum import Enum

from tiered_memory.tiers.cold_ops import ANCESTRY_MAX, StoredStamp


class Outcome(Enum):
    TAKE = "take"
    SAME = "same"
    STALE = "stale"
    CONFLICT = "conflict"


def decide(theirs: StoredStamp, mine: StoredStamp | None) -> Outcome:
    if mine is None:
        return Outcome.TAKE
    if theirs.stamp == mine.stamp:
        return Outcome.SAME
    if mine.stamp in theirs.ancestry or _before_kept(mine.stamp, theirs.ancestry):
        return Outcome.TAKE
    if theirs.stamp in mine.ancestry or _before_kept(theirs.stamp, mine.ancestry):
        return Outcome.STALE
    return Outcome.CONFLICT


def _before_kept(stamp: bytes, ancestry: list[bytes]) -> bool:
    """Whether `stamp` is older than the oldest ancestor a full (truncated) ancestry still names:
    a version more than ANCESTRY_MAX changes back is taken for an ancestor. Were it a concurrent
    change instead, the newer version would win the conflict anyway; only its report and the
    loser's history entry are not made."""
    return len(ancestry) >= ANCESTRY_MAX and stamp < ancestry[-1]


def theirs_win(theirs: StoredStamp, mine: StoredStamp) -> bool:
    return theirs.stamp > mine.stamp


def merged_ancestry(theirs: StoredStamp, mine: StoredStamp) -> list[bytes]:
    """Both versions and both ancestries, newest first, at most ANCESTRY_MAX."""
    stamps = {theirs.stamp, mine.stamp, *theirs.ancestry, *mine.ancestry}
    return sorted(stamps, reverse=True)[:ANCESTRY_MAX]
