"""Topic tracking and prefetch: the right memories move up, off the caller's path, and the worker stops cleanly."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tiered_memory import InvalidInputError, PrefetchConfig, Tier
from tiered_memory.conversation.prefetch import ConversationTrack, PrefetchWorker, TopicTracker

from .conftest import DIM, ROOT, SHARED

DAY = 86_400.0
CLUSTERS = 8
PER_CLUSTER = 80


def clustered(seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cluster of each row, unit centers): well separated, so k-means finds the clusters."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((CLUSTERS, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(CLUSTERS), PER_CLUSTER)
    rows = centers[labels] + 0.12 * rng.standard_normal((len(labels), DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), labels, centers


@pytest.fixture
def topic_store(open_store, clock):
    """640 memories in 8 clusters, 8 topics fitted, every memory decayed to the cold tier."""
    rows, labels, centers = clustered()
    mem = open_store(topics_per_namespace=CLUSTERS, hot_capacity=100, warm_capacity=400)
    ids = mem.add_many([f"memory {i}" for i in range(len(rows))], namespace="agent", vectors=rows,
                       created_at=clock() - 90 * DAY)
    report = mem.maintain()
    assert report.topics_fitted == ["agent"]
    assert {mem.tier_of(i) for i in ids} == {Tier.COLD}
    return mem, ids, rows, labels, centers


def message_vector(centers: np.ndarray, cluster: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vector = centers[cluster] + 0.05 * rng.standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_tracker_is_a_decayed_mean() -> None:
    tracker = TopicTracker(decay=0.5)
    a, b = np.eye(DIM, dtype=np.float32)[:2]
    assert np.allclose(tracker.observe(a), a)
    expected = (0.5 * a + 0.5 * b) / np.linalg.norm(0.5 * a + 0.5 * b)
    assert np.allclose(tracker.observe(b), expected)
    with pytest.raises(InvalidInputError):
        TopicTracker().vector  # noqa: B018  (the property raises)


@pytest.mark.parametrize("kwargs", [{"topics": 0}, {"hot": -1}, {"warm": 1.5}, {"decay": 1.0},
                                    {"relevance_weight": float("inf")}, {"min_shift": -0.1}])
def test_bad_prefetch_settings_are_rejected(kwargs) -> None:
    with pytest.raises(InvalidInputError):
        PrefetchConfig(**kwargs)


def test_prefetch_moves_the_nearest_memories_of_the_conversations_topic(topic_store) -> None:
    mem, ids, rows, labels, centers = topic_store
    vectors = {"let us talk about cluster three": message_vector(centers, 3, seed=1)}
    moved: list[str] = []
    conv = mem.conversation("agent", embed=vectors.__getitem__, prefetch=PrefetchConfig(topics=1, hot=20, warm=30))
    conv.worker.on_promoted = lambda namespace, hot, warm: moved.extend(hot + warm)
    hits_before = mem.stats().hot.hits
    conv.add_message("user", "let us talk about cluster three")
    assert conv.worker.wait_idle(10)
    stats = conv.worker.stats
    assert (stats.prefetches, stats.promoted_hot, stats.promoted_warm) == (1, 20, 30)
    hot = [i for i, memory_id in enumerate(ids) if mem.tier_of(memory_id) is Tier.HOT]
    warm = [i for i, memory_id in enumerate(ids) if mem.tier_of(memory_id) is Tier.WARM]
    assert len(hot) == 20 and len(warm) == 30
    assert set(labels[hot + warm]) == {3}  # all from the conversation's topic
    # The hot ones are the cluster's nearest to the conversation (int8 codes rank them: allow ties).
    cosine = rows @ vectors["let us talk about cluster three"]
    in_cluster = np.sort(cosine[labels == 3])[::-1]
    assert cosine[hot].min() >= in_cluster[21] - 2e-3
    assert cosine[hot].min() >= cosine[warm].max() - 2e-3
    assert sorted(moved) == sorted(ids[i] for i in hot + warm)
    assert mem.stats().hot.hits == hits_before  # moved, not accessed
    assert mem.get(ids[hot[0]]).access_count == 1  # this get is its first use
    assert conv.topics == mem.nearest_topics("agent", vectors["let us talk about cluster three"], 1)


def test_prefetch_follows_the_conversation_to_a_new_topic(topic_store) -> None:
    mem, ids, rows, labels, centers = topic_store
    texts = {f"about cluster 2, take {i}": message_vector(centers, 2, seed=i) for i in range(3)}
    texts.update({f"now cluster 6, take {i}": message_vector(centers, 6, seed=10 + i) for i in range(3)})
    conv = mem.conversation("agent", embed=texts.__getitem__, prefetch=PrefetchConfig(topics=1, hot=30, warm=0))
    for text in texts:
        conv.add_message("user", text)
        assert conv.worker.wait_idle(10)
        cluster = 2 if "cluster 2" in text else 6
        hot_now = [i for i, memory_id in enumerate(ids) if mem.tier_of(memory_id) is Tier.HOT]
        assert np.sum(labels[hot_now] == cluster) >= 30 or "take 0" in text and cluster == 6
    hot = [i for i, memory_id in enumerate(ids) if mem.tier_of(memory_id) is Tier.HOT]
    assert np.sum(labels[hot] == 6) >= 30 and set(labels[hot]) <= {2, 6}
    assert conv.topics == mem.nearest_topics("agent", centers[6], 1)


def test_a_prefetched_memory_survives_the_next_maintenance(open_store, clock) -> None:
    rows, _, _ = clustered()
    mem = open_store()
    old, other = mem.add_many(["old", "other"], vectors=rows[:2], created_at=clock() - 90 * DAY)
    mem.maintain()
    assert mem.tier_of(old) is Tier.COLD
    assert mem.promote([old], tier=Tier.HOT) == 2  # cold -> warm -> hot
    mem.maintain()  # without the idle clock restarting, decay would send it straight back to cold
    assert mem.tier_of(old) is Tier.HOT and mem.tier_of(other) is Tier.COLD
    assert mem.get(old).access_count == 1


def test_stale_messages_are_embedded_but_only_the_newest_prefetches(topic_store) -> None:
    mem, _, _, _, centers = topic_store
    texts = {f"message {i}": message_vector(centers, i % CLUSTERS, seed=i) for i in range(6)}

    def slow_embed(text: str) -> np.ndarray:
        time.sleep(0.03)  # a real encoder takes ~12 ms a sentence: messages pile up behind it
        return texts[text]

    conv = mem.conversation("agent", embed=slow_embed, prefetch=PrefetchConfig(topics=1, hot=10))
    for text in texts:
        conv.add_message("user", text)
    assert conv.worker.wait_idle(10)
    stats = conv.worker.stats
    assert stats.messages == 6 and stats.prefetches == 1 and stats.skipped_stale == 5
    assert conv.topics == mem.nearest_topics("agent", conv.track.tracker.vector, 1)


def test_the_queue_is_bounded_and_drops_its_oldest_jobs(open_store) -> None:
    mem = open_store()
    started, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def blocking_embed(text: str) -> np.ndarray:
        seen.append(int(text))
        started.set()
        release.wait(10)
        return np.eye(DIM, dtype=np.float32)[0]

    track = ConversationTrack("ns", blocking_embed, None)
    worker = PrefetchWorker(mem, queue_size=2, yield_s=0.0)
    try:
        worker.submit(track, 0, "0")
        assert started.wait(10)  # job 0 runs (and blocks); the queue is empty again
        for seq in range(1, 5):
            worker.submit(track, seq, str(seq))
        release.set()
        assert worker.wait_idle(10)
        assert worker.stats.dropped_full == 2 and seen == [0, 3, 4]
    finally:
        worker.close()


def test_the_worker_gives_the_caller_time_to_search_first(topic_store) -> None:
    mem, _, _, _, centers = topic_store
    calls: list[str] = []
    vectors = {"hello": message_vector(centers, 1, seed=0), "later": message_vector(centers, 2, seed=1)}

    def embed(text: str) -> np.ndarray:
        calls.append(threading.current_thread().name)
        return vectors[text]

    conv = mem.conversation("agent", embed=embed, prefetch=PrefetchConfig(topics=1, hot=5))
    conv.worker.yield_s = 0.3
    conv.add_message("user", "hello")
    conv.recall(k=3)  # at once: embedded here, on the caller's path
    assert conv.worker.stats.messages == 0  # the worker has not started yet
    assert conv.worker.wait_idle(10)
    assert calls == [threading.current_thread().name]  # once only: the worker found the vector ready
    assert conv.worker.stats.messages == 1 and conv.worker.stats.prefetches == 1
    conv.add_message("user", "later")
    assert conv.worker.wait_idle(10)  # nobody searched: the worker embedded it
    assert calls[1] == "tiered-memory-prefetch"
    conv.recall(k=3)
    assert len(calls) == 2  # the recall found the vector ready


def test_without_a_topic_model_nothing_is_prefetched(open_store) -> None:
    mem = open_store()
    rows, _, centers = clustered()
    mem.add_many([f"m{i}" for i in range(20)], namespace="small", vectors=rows[:20])
    conv = mem.conversation("small", embed=lambda text: centers[0], prefetch=PrefetchConfig())
    conv.add_message("user", "anything")
    assert conv.worker.wait_idle(10)
    assert conv.worker.stats.messages == 1 and conv.worker.stats.prefetches == 0 and conv.topics == []


def test_the_worker_stops_cleanly_when_the_store_closes(topic_store) -> None:
    mem, _, _, _, centers = topic_store
    started = threading.Event()

    def slow_embed(text: str) -> np.ndarray:
        started.set()
        time.sleep(0.3)
        return centers[0]

    conv = mem.conversation("agent", embed=slow_embed, prefetch=PrefetchConfig(topics=1, hot=5))
    worker = conv.worker
    worker.yield_s = 0.0
    conv.add_message("user", "one")
    conv.add_message("user", "two")  # queued behind "one"
    assert started.wait(10)
    mem.close()  # the running job finishes, the queued one is dropped, the thread is joined
    assert not worker._thread.is_alive()
    assert worker.closed
    worker.submit(conv.track, 99, "ignored after close")
    assert worker.stats.submitted == 2
    assert not any(t.name == "tiered-memory-prefetch" and t.is_alive() and t is worker._thread
                   for t in threading.enumerate())


# -- loading a returning user's namespace ahead of the first search --------------------------------


def _returning_user(open_store, tmp_path: Path) -> tuple[object, list[str], np.ndarray, list[str]]:
    """A store with one user's 120 memories (and another's), closed and reopened: nothing loaded.
    Returns (store, the user's ids, their vectors, the names of the threads that called preload)."""
    rows, _, _ = clustered()
    mem = open_store(tmp_path / "users")
    ids = mem.add_many([f"memory {i}" for i in range(120)], namespace="user", vectors=rows[:120])
    mem.add_many([f"other {i}" for i in range(40)], namespace="other", vectors=rows[200:240])
    mem.close()
    mem = open_store(tmp_path / "users", preload=False)
    assert len(mem.registry) == 0
    callers: list[str] = []
    preload = mem.preload

    def spy(namespace):
        callers.append(threading.current_thread().name)
        return preload(namespace)

    mem.preload = spy
    return mem, ids, rows[:120], callers


def test_a_conversations_start_loads_its_namespace_on_the_worker(open_store, tmp_path: Path) -> None:
    mem, ids, rows, callers = _returning_user(open_store, tmp_path)
    conv = mem.conversation("user", embed=lambda text: rows[7], prefetch=True)
    assert conv.worker.wait_idle(10)
    # Loaded before anything searched, by the worker: the caller's thread never took the write lock.
    assert "user" in mem.registry and "other" not in mem.registry
    assert callers == ["tiered-memory-prefetch"]
    assert conv.worker.stats.preloads == 1 and mem.stats().loaded["loads"] == 1
    conv.add_message("user", "hello")  # loaded already: nothing queued
    assert conv.recall(k=1)[0].memory.id == ids[7]
    assert conv.worker.wait_idle(10)
    assert callers == ["tiered-memory-prefetch"] and mem.stats().loaded["loads"] == 1


def test_with_prefetch_off_nothing_loads_before_the_first_search(open_store, tmp_path: Path) -> None:
    mem, ids, rows, callers = _returning_user(open_store, tmp_path)
    conv = mem.conversation("user", embed=lambda text: rows[7], prefetch=False)
    assert conv.worker is not None  # embedding ahead still runs on the worker
    conv.add_message("user", "hello")
    assert conv.worker.wait_idle(10)
    assert conv.worker.stats.messages == 1
    assert len(mem.registry) == 0 and callers == [] and conv.worker.stats.preloads == 0
    assert conv.recall(k=1)[0].memory.id == ids[7]  # the search loads it, on the caller's path
    assert "user" in mem.registry and mem.stats().loaded["loads"] == 1


def test_a_message_reloads_an_unloaded_namespace_without_waiting_for_the_yield(open_store, tmp_path: Path) -> None:
    mem, ids, rows, callers = _returning_user(open_store, tmp_path)
    conv = mem.conversation("user", embed=lambda text: rows[3], prefetch=True)
    assert conv.worker.wait_idle(10) and "user" in mem.registry
    with mem._rw.write:  # idle long enough to be unloaded
        mem._tiers.unload("user")
    assert "user" not in mem.registry
    loaded = threading.Event()
    spy = mem.preload

    def signal(namespace):
        spy(namespace)
        loaded.set()

    mem.preload = signal
    conv.worker.yield_s = 30.0  # the message's own job waits; the load does not
    conv.add_message("user", "I am back")
    assert loaded.wait(10)
    assert "user" in mem.registry and conv.worker.stats.messages == 0
    assert callers == ["tiered-memory-prefetch", "tiered-memory-prefetch"]
    assert conv.worker.stats.preloads == 2


def test_preloading_a_namespace_without_memories_loads_nothing(open_store) -> None:
    mem = open_store()
    conv = mem.conversation("nobody", embed=lambda text: np.eye(DIM, dtype=np.float32)[0], prefetch=True)
    assert conv.worker.wait_idle(10)
    assert "nobody" not in mem.registry and conv.worker.stats.preloads == 0 and conv.worker.stats.errors == 0


# -- traces and the replay benchmark (need ../shared/datasets) -------------------------------------


def _require_shared() -> None:
    if not (SHARED / "dailydialog" / "dialogues_text.txt").is_file():
        pytest.skip(f"DailyDialog not found under {SHARED} (../shared/datasets is absent)")


@pytest.mark.shared
def test_dailydialog_trace_is_deterministic_and_topical() -> None:
    _require_shared()
    from tiered_memory.corpora import load_dailydialog
    from tiered_memory.traces import dailydialog_trace

    data = load_dailydialog(SHARED)
    trace = dailydialog_trace(data, sessions=5, memories=2_000, seed=3)
    assert trace.digest() == dailydialog_trace(data, sessions=5, memories=2_000, seed=3).digest()
    assert trace.digest() != dailydialog_trace(data, sessions=5, memories=2_000, seed=4).digest()
    sessions = trace.sessions()
    assert len(sessions) == 5
    labels = [{trace.turns[i].label for i in session} for session in sessions]
    assert all(len(s) == 1 for s in labels) and all(a != b for a, b in zip(labels, labels[1:]))
    live = {trace.turns[i].source.split(":")[1] for session in sessions for i in session}
    assert not live & {source.split(":")[1] for source in trace.memory_sources}  # no leak into memory
    assert len(trace.memory_texts) <= 2_000 and max(trace.memory_created) < trace.turns[0].timestamp
    embed = trace.embedder()
    assert np.allclose(embed(trace.turns[0].text), trace.vectors[trace.turns[0].row])


@pytest.mark.shared
def test_locomo_trace_asks_each_question_after_its_evidence() -> None:
    if not (SHARED / "locomo" / "locomo_dev.json").is_file():
        pytest.skip(f"LoCoMo not found under {SHARED}")
    from tiered_memory.corpora import load_locomo
    from tiered_memory.traces import locomo_trace

    conversations = load_locomo(SHARED / "locomo" / "locomo_dev.json")
    trace = locomo_trace(conversations, lambda texts: np.ones((len(texts), 4), dtype=np.float32) / 2)
    assert len(trace.turns) == sum(len(c.turns) for c in conversations)
    position = {turn.source: i for i, turn in enumerate(trace.turns)}
    for question in trace.questions:
        assert all(position[e] < question.after_turn for e in question.evidence)
        asked_in = trace.turns[question.after_turn].session
        assert asked_in > max(trace.turns[position[e]].session for e in question.evidence)
    assert len(trace.questions) + sum(trace.notes.values()) == sum(
        1 for c in conversations for q in c.questions if q.category in (1, 2, 3, 4))


@pytest.mark.shared
def test_the_replay_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    _require_shared()
    spec = importlib.util.spec_from_file_location("prefetch_replay", ROOT / "benchmarks" / "prefetch_replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)
        assert module.main(["--quick", "--sessions", "2", "--memories", "1000", "--out", str(tmp_path)]) == 0
    finally:
        del sys.modules[spec.name]
    report = json.loads((tmp_path / "quick.json").read_text())
    trace = report["traces"][0]
    assert [run["mode"] for run in trace["runs"]] == ["lru", "prefetch"]
    lru, prefetch = trace["runs"]
    assert lru["searches"] == prefetch["searches"] > 0
    assert 0.0 <= lru["hot_share"] <= 1.0 and 0.0 <= prefetch["hot_share"] <= 1.0
    assert prefetch["work"]["prefetches"] > 0 and prefetch["work"]["errors"] == 0
    assert trace["comparison"]["agreement"] > 0.9  # prefetch moves memories, it does not change answers
    assert trace["topic_quality"]["engine"]["nmi_utterances"] > 0.0
    assert "Hot share with prefetch" in (tmp_path / "quick.md").read_text()
