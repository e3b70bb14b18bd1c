"""Large adds into a namespace with a graph: durable and searchable at once, in the graph soon after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tiered_memory import Tier

from .conftest import DIM, ROOT, unit_rows
from .invariants import check_invariants


def test_a_large_add_is_found_at_once_and_enters_the_graph_in_the_background(open_store, monkeypatch) -> None:
    from tiered_memory.tiering.manager import TierManager

    mem = open_store(exact_search_max=16, promote_in_background=True)
    admitted = []
    real = TierManager._admit_waiting

    def counted(self) -> bool:  # (the admissions the background thread makes, counted)
        done = real(self)
        admitted.append(done)
        return done

    monkeypatch.setattr(TierManager, "_admit_waiting", counted)
    first = mem.add_many([f"seed {i}" for i in range(40)], vectors=unit_rows(40, seed=1))  # the graph is built
    assert mem.tier_of(first[0]) == Tier.WARM
    vectors = unit_rows(600, seed=2)
    mem.wait_idle(timeout=60)
    ids = mem.add_many([f"bulk {i}" for i in range(600)], vectors=vectors)
    # Durable, in cold blocks: exact scan finds every one of them before the graph has them.
    for i in (0, 299, 599):
        assert mem.search(vector=vectors[i], k=1)[0].memory.id == ids[i]
    assert mem.wait_idle(timeout=60)
    assert sum(admitted) >= 600 // 256  # in chunks, by the background thread
    assert {mem.tier_of(memory_id) for memory_id in ids} <= {Tier.WARM, Tier.HOT}
    assert mem.search(vector=vectors[123], k=1)[0].memory.id == ids[123]
    check_invariants(mem)


def test_admission_waits_for_no_thread_that_is_not_there_and_keeps_its_backlog_bounded(open_store,
                                                                                         tmp_path) -> None:
    inline = open_store(tmp_path / "inline", exact_search_max=16, promote_in_background=False)
    inline.add_many([f"seed {i}" for i in range(40)], vectors=unit_rows(40, seed=1))
    ids = inline.add_many([f"bulk {i}" for i in range(300)], vectors=unit_rows(300, seed=2))
    assert {inline.tier_of(memory_id) for memory_id in ids} == {Tier.WARM}  # inserted by the add itself
    bounded = open_store(tmp_path / "bounded", exact_search_max=16, admission_backlog_max=100,
                         promote_in_background=True)
    bounded.add_many([f"seed {i}" for i in range(40)], vectors=unit_rows(40, seed=3))
    ids = bounded.add_many([f"bulk {i}" for i in range(300)], vectors=unit_rows(300, seed=4))
    assert {bounded.tier_of(memory_id) for memory_id in ids} == {Tier.WARM}  # past the bound: at once
    check_invariants(bounded)


def test_a_memory_deleted_before_its_admission_stays_deleted(open_store) -> None:
    mem = open_store(exact_search_max=16, promote_in_background=True)
    mem.add_many([f"seed {i}" for i in range(40)], vectors=unit_rows(40, seed=1))
    vectors = unit_rows(400, seed=5)
    ids = mem.add_many([f"bulk {i}" for i in range(400)], vectors=vectors)
    for memory_id in ids[:50]:
        mem.delete(memory_id)
    assert mem.wait_idle(timeout=60)
    assert all(memory_id not in mem for memory_id in ids[:50])
    assert mem.search(vector=vectors[0], k=1)[0].memory.id != ids[0]
    check_invariants(mem)


def _stalled_admission(monkeypatch) -> None:
    """The background thread falls behind: nothing queued enters a graph until undone."""
    from tiered_memory.tiering.manager import TierManager

    monkeypatch.setattr(TierManager, "_admit_waiting", lambda self: False)


def _seeded_and_stalled(open_store, monkeypatch, path=None, namespace: str = "default", preload: bool = True):
    """A store whose namespace has a graph, and whose background thread then falls behind."""
    mem = open_store(path, exact_search_max=16, promote_in_background=True, preload=preload)
    mem.add_many([f"seed {i}" for i in range(40)], vectors=unit_rows(40, seed=1), namespace=namespace)
    assert mem.wait_idle(timeout=60)
    _stalled_admission(monkeypatch)
    return mem


def test_admissions_waiting_at_close_resume_when_the_store_is_opened_again(open_store, tmp_path,
                                                                            monkeypatch) -> None:
    path = tmp_path / "store"
    mem = _seeded_and_stalled(open_store, monkeypatch, path)
    vectors = unit_rows(600, seed=2)
    ids = mem.add_many([f"bulk {i}" for i in range(600)], vectors=vectors)
    assert {mem.tier_of(memory_id) for memory_id in ids} == {Tier.COLD}
    mem.close()
    monkeypatch.undo()
    again = open_store(path, exact_search_max=16, promote_in_background=True)
    assert again.search(vector=vectors[7], k=1)[0].memory.id == ids[7]
    assert again.wait_idle(timeout=60)
    # Without the saved backlog they stayed cold for good (served by scan or the on-disk index).
    assert {again.tier_of(memory_id) for memory_id in ids} <= {Tier.WARM, Tier.HOT}
    check_invariants(again)
    again.close()
    # Nothing waits any more: all of them are in the saved graph, a third open queues nothing.
    third = open_store(path, exact_search_max=16, promote_in_background=True)
    assert third._tiers.admission_backlog() == 0
    assert {third.tier_of(memory_id) for memory_id in ids} <= {Tier.WARM, Tier.HOT}


def _user0_with_a_stalled_backlog(open_store, monkeypatch):
    """A store whose namespace user0 has a graph and 300 memories queued for it, not admitted."""
    mem = _seeded_and_stalled(open_store, monkeypatch, namespace="user0", preload=False)
    vectors = unit_rows(300, seed=3)
    ids = mem.add_many([f"bulk {i}" for i in range(300)], vectors=vectors, namespace="user0")
    return mem, ids, vectors


def _reloaded_and_admitted(mem, ids, vectors) -> None:
    """Loading user0 again queues what waited; the background thread then admits all of it."""
    assert mem.wait_idle(timeout=60)
    assert mem.search(vector=vectors[9], namespace="user0", k=1)[0].memory.id == ids[9]  # loads it
    assert mem.wait_idle(timeout=60)
    assert {mem.tier_of(memory_id) for memory_id in ids} <= {Tier.WARM, Tier.HOT}
    check_invariants(mem)


def test_admissions_waiting_when_a_namespace_unloads_resume_when_it_loads(open_store, monkeypatch) -> None:
    mem, ids, vectors = _user0_with_a_stalled_backlog(open_store, monkeypatch)
    with mem._rw.write:
        mem._tiers.unload("user0")
    monkeypatch.undo()
    # Another namespace takes the catalog slots user0 left (a queue of slots would now name its rows).
    mem.add_many([f"other {i}" for i in range(340)], vectors=unit_rows(340, seed=4), namespace="user1")
    _reloaded_and_admitted(mem, ids, vectors)


def test_admissions_in_flight_when_a_namespace_unloads_resume_when_it_loads(open_store, monkeypatch) -> None:
    # The background thread wakes while an unload holds the write lock: a chunk it took off the
    # queue before the lock would be stored as cold by the unload, and its slots found gone after.
    mem, ids, vectors = _user0_with_a_stalled_backlog(open_store, monkeypatch)
    tiers = mem._tiers
    with mem._rw.write:
        monkeypatch.undo()
        tiers._promoter.wake()
        time.sleep(0.3)  # the thread is waiting for this lock
        assert tiers.admission_backlog() == 300  # the chunk leaves the queue only under the lock
        tiers.unload("user0")
    _reloaded_and_admitted(mem, ids, vectors)


def test_admissions_of_an_add_survive_a_crash_before_any_persist(open_store, tmp_path) -> None:
    # The queue was saved only at persist (maintenance, unload, close): a process killed after a
    # large add left its memories cold for good.
    path = tmp_path / "store"
    code = f"""
        import os, signal
        from tests.conftest import unit_rows
        from tiered_memory import TieredMemory
        from tiered_memory.tiering.manager import TierManager
        mem = TieredMemory({str(path)!r}, encoder=None, dimension={DIM}, exact_search_max=16,
                           promote_in_background=True)
        mem.add_many([f"seed {{i}}" for i in range(40)], vectors=unit_rows(40, seed=1))
        assert mem.wait_idle(timeout=60)
        mem.maintain()
        TierManager._admit_waiting = lambda self: False  # the background thread falls behind
        mem.add_many([f"bulk {{i}}" for i in range(300)], vectors=unit_rows(300, seed=3))
        os.kill(os.getpid(), signal.SIGKILL)
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    assert result.returncode == -signal.SIGKILL, result.stderr
    mem = open_store(path, exact_search_max=16, promote_in_background=True)
    assert mem.wait_idle(timeout=60)
    bulk = [memory.id for memory in mem.list_memories(limit=1_000) if memory.text.startswith("bulk ")]
    assert len(bulk) == 300
    assert {mem.tier_of(memory_id) for memory_id in bulk} <= {Tier.WARM, Tier.HOT}
    check_invariants(mem)


def test_a_waiting_memory_whose_row_is_rewritten_still_enters_the_graph_after_a_reopen(open_store, tmp_path,
                                                                                        monkeypatch) -> None:
    # Every writer of a catalog row (here extend() and the statistics flush at close) stores a
    # waiting memory as warm, the tier it is headed for; as cold it would stay cold for good.
    path = tmp_path / "store"
    mem = _seeded_and_stalled(open_store, monkeypatch, path)
    ids = mem.add_many([f"bulk {i}" for i in range(300)], vectors=unit_rows(300, seed=2), ttl_s=600)
    assert mem.extend(ids[5], ttl_s=3_600) > mem.record(ids[6]).expires_at  # its row rewritten
    mem.close()
    monkeypatch.undo()
    again = open_store(path, exact_search_max=16, promote_in_background=True)
    assert again.wait_idle(timeout=60)
    assert again.tier_of(ids[5]) in (Tier.WARM, Tier.HOT)
    check_invariants(again)
