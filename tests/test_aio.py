"""AsyncTieredMemory on real stores and the real encoder: concurrent calls agree with the sync
API, the event loop keeps running while the store works, errors are the sync API's own."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tiered_memory import (
    AsyncTieredMemory,
    ConfigError,
    EmptyTextError,
    InvalidExpiryError,
    InvalidFilterError,
    MemoryExpiredError,
    MemoryNotFoundError,
    StoreClosedError,
    Tier,
    TieredMemory,
    make_encoder,
)
from tiered_memory.aio import default_workers

from .conftest import DIM, unit_rows

BASE_TEXTS = [
    "The user prefers technical explanations with code examples",
    "The user is allergic to peanuts",
    "The user's flight to Lisbon leaves from gate B12 on Friday",
    "The user lives in Lyon and works as a data engineer",
    "The user's daughter plays the violin",
    "The user compared chunk sizes for PDF retrieval",
    "The user drinks green tea in the morning",
    "The user wants weekly summaries every Monday",
    "The user's manager is called Priya",
    "The user runs a half marathon in October",
    "The user dislikes long meetings",
    "The user is learning Portuguese before the trip",
]
QUERIES = ["What does the user eat?", "When is the flight to Lisbon?", "How should I explain things?",
           "Who is the user's manager?", "What sport does the user do?", "Which language is the user learning?"]
MODES = ("hybrid", "dense", "lexical")


@pytest.fixture(scope="module")
def encoder():
    """The default encoder (bundled all-MiniLM-L6-v2, ONNX), shared by the stores of this module."""
    encoder = make_encoder("minilm-onnx")
    encoder.encode(["warm up"])
    return encoder


def open_pair(tmp_path: Path, encoder, clock) -> tuple[TieredMemory, TieredMemory]:
    """Two stores with the same base memories: one for the async calls, one for the sync ones."""
    stores = []
    for name in ("async", "sync"):
        mem = TieredMemory(tmp_path / name, encoder=encoder, clock=clock)
        mem.add_many(BASE_TEXTS, namespace="base", ids=[f"base-{i}" for i in range(len(BASE_TEXTS))],
                     metadata=[{"i": i} for i in range(len(BASE_TEXTS))])
        stores.append(mem)
    return stores[0], stores[1]


def operations() -> list[tuple[str, dict[str, Any]]]:
    """100 calls a web service might make at once: searches, gets (some of unknown ids), adds."""
    ops: list[tuple[str, dict[str, Any]]] = []
    for i in range(100):
        if i % 5 in (0, 1):
            ops.append(("search", dict(query=QUERIES[i % len(QUERIES)], namespace="base", k=5,
                                       mode=MODES[i % len(MODES)])))
        elif i % 5 == 2:
            ops.append(("get", dict(memory_id=f"base-{i % len(BASE_TEXTS)}" if i % 3 else f"missing-{i}")))
        else:
            ops.append(("add", dict(text=f"Note {i}: the user mentioned topic number {i}", namespace="new",
                                    id=f"new-{i}", metadata={"i": i})))
    return ops


def outcome(name: str, result: Any) -> Any:
    """What a call's answer says, without access counters (which differ between the two runs)."""
    if isinstance(result, BaseException):
        return (type(result), str(result))
    if name == "search":
        return [(hit.memory.id, round(hit.score, 5), hit.memory.text) for hit in result]
    if name == "get":
        return (result.id, result.text, result.metadata, result.version)
    return result


def call_sync(mem: TieredMemory, name: str, arguments: dict[str, Any]) -> Any:
    arguments = dict(arguments)
    try:
        if name == "search":
            return mem.search(arguments.pop("query"), **arguments)
        if name == "get":
            return mem.get(arguments["memory_id"])
        return mem.add(arguments.pop("text"), **arguments)
    except MemoryNotFoundError as err:
        return err


async def call_async(amem: AsyncTieredMemory, name: str, arguments: dict[str, Any]) -> Any:
    arguments = dict(arguments)
    try:
        if name == "search":
            return await amem.search(arguments.pop("query"), **arguments)
        if name == "get":
            return await amem.get(arguments["memory_id"])
        return await amem.add(arguments.pop("text"), **arguments)
    except MemoryNotFoundError as err:
        return err


def test_a_hundred_concurrent_tasks_agree_with_the_sync_api(tmp_path: Path, encoder, clock) -> None:
    async_store, sync_store = open_pair(tmp_path, encoder, clock)
    ops = operations()
    peak = 0

    async def run() -> list[Any]:
        nonlocal peak
        async with AsyncTieredMemory(async_store) as amem:
            tasks = [asyncio.create_task(call_async(amem, name, arguments)) for name, arguments in ops]
            while not all(task.done() for task in tasks):
                peak = max(peak, amem.in_flight)
                await asyncio.sleep(0.001)
            return [task.result() for task in tasks]

    concurrent_results = asyncio.run(run())
    sequential_results = [call_sync(sync_store, name, arguments) for name, arguments in ops]
    assert peak > 1  # the calls did overlap
    for (name, _), got, expected in zip(ops, concurrent_results, sequential_results):
        assert outcome(name, got) == outcome(name, expected), name
    assert sum(isinstance(result, MemoryNotFoundError) for result in concurrent_results) > 0
    for mem in (async_store, sync_store):
        mem.wait_idle(timeout=30)
    assert sorted(async_store.ids("new")) == sorted(sync_store.ids("new")) and async_store.count("new") == 40
    assert [m.text for m in async_store.list_memories("new", limit=100)] == \
        [m.text for m in sync_store.list_memories("new", limit=100)]
    async_store.close()
    sync_store.close()


def test_the_event_loop_keeps_running_while_a_long_add_many_works(tmp_path: Path, encoder) -> None:
    texts = [f"Message {i} of a long conversation about travel plans, food and the weather in Lyon"
             for i in range(64)]
    with TieredMemory(tmp_path / "s", encoder=encoder) as mem:

        async def run() -> tuple[int, int]:
            ticks = 0
            stop = asyncio.Event()

            async def heartbeat() -> None:
                nonlocal ticks
                while not stop.is_set():
                    await asyncio.sleep(0.005)
                    ticks += 1

            beating = asyncio.create_task(heartbeat())
            await asyncio.sleep(0.02)
            async with AsyncTieredMemory(mem) as amem:
                before = ticks
                ids = await amem.add_many(texts, namespace="async")
                while_async = ticks - before
                before = ticks
                mem.add_many(texts, namespace="blocking")  # the same work on the loop's own thread
                while_blocking = ticks - before
            stop.set()
            await beating
            assert len(ids) == len(texts)
            return while_async, while_blocking

        while_async, while_blocking = asyncio.run(run())
    # Encoding 64 texts takes hundreds of milliseconds: the heartbeat ticks through it, unless
    # the work holds the loop's thread (then not once).
    assert while_async >= 10, while_async
    assert while_blocking == 0


def test_errors_are_the_sync_apis_own(tmp_path: Path, encoder, clock) -> None:
    with TieredMemory(tmp_path / "s", encoder=encoder, clock=clock) as mem:
        mid = mem.add("a memory that expires", ttl_s=10)

        async def run() -> None:
            async with AsyncTieredMemory(mem) as amem:
                cases = [
                    (amem.get("no-such-id"), lambda: mem.get("no-such-id"), MemoryNotFoundError),
                    (amem.add("   "), lambda: mem.add("   "), EmptyTextError),
                    (amem.add("x", ttl_s=-1), lambda: mem.add("x", ttl_s=-1), InvalidExpiryError),
                    (amem.search("q", where={"$bogus": 1}), lambda: mem.search("q", where={"$bogus": 1}),
                     InvalidFilterError),
                ]
                for awaitable, sync_call, error in cases:
                    with pytest.raises(error) as from_async:
                        await awaitable
                    with pytest.raises(error) as from_sync:
                        sync_call()
                    assert type(from_async.value) is type(from_sync.value)
                    assert str(from_async.value) == str(from_sync.value)
                clock.tick(10)
                with pytest.raises(MemoryExpiredError, match="expired"):
                    await amem.get(mid)
            with pytest.raises(StoreClosedError):
                await amem.get(mid)

        asyncio.run(run())


def test_close_waits_for_calls_in_flight_and_closes_the_store_it_opened(tmp_path: Path, encoder) -> None:
    texts = [f"Fact {i}: the user said something worth keeping about item {i}" for i in range(48)]

    async def run() -> list[str]:
        amem = await AsyncTieredMemory.open(tmp_path / "s", encoder=encoder)
        writing = asyncio.create_task(amem.add_many(texts))
        await asyncio.sleep(0)  # the task submits its call
        assert amem.in_flight == 1
        await amem.close()
        assert writing.done() and amem.memory.closed and amem.closed
        with pytest.raises(StoreClosedError):
            await amem.search("anything")
        await amem.close()  # twice is fine
        return writing.result()

    ids = asyncio.run(run())
    with TieredMemory(tmp_path / "s", encoder=encoder) as mem:
        assert sorted(mem.ids()) == sorted(ids) and len(ids) == 48


def test_every_method_matches_the_sync_store(tmp_path: Path, clock) -> None:
    vectors = unit_rows(6)

    async def run() -> None:
        async with AsyncTieredMemory(tmp_path / "s", encoder=None, dimension=DIM, clock=clock,
                                     promote_in_background=False, max_workers=4) as amem:
            mem = amem.memory
            assert amem.max_workers == 4
            ids = await amem.add_many([f"m{i}" for i in range(6)], namespace="n", vectors=vectors)
            one = await amem.add("single", namespace="m", vector=vectors[0], ttl_s=100)
            assert await amem.count() == 7 == mem.count() and await amem.count("n") == 6
            assert sorted(await amem.ids()) == sorted(mem.ids())
            assert await amem.namespaces() == mem.namespaces() == ["n", "m"]
            assert [m.id for m in await amem.list_memories("n", limit=3)] == ids[:3]
            hits = await amem.search(vector=vectors[1], namespace="n", k=2)
            assert [h.memory.id for h in hits] == [h.memory.id for h in mem.search(vector=vectors[1],
                                                                                   namespace="n", k=2)]
            assert (await amem.get(ids[0])).text == "m0"
            assert (await amem.update(ids[0], importance=0.9)).importance == 0.9
            assert (await amem.update(one, expires_at=None)).expires_at is None
            assert (await amem.update(one, ttl_s=50)).expires_at == clock.now + 50
            assert await amem.extend(one, ttl_s=500) == clock.now + 500
            assert await amem.extend_many([one], ttl_s=10) == [clock.now + 500]
            assert (await amem.record(ids[1])).text == "m1"
            assert await amem.promote([ids[2]]) >= 1 and mem.tier_of(ids[2]) is Tier.HOT
            assert await amem.wait_idle(timeout=5)
            await amem.preload(["n", "m"])
            await amem.delete(ids[5])
            report = await amem.maintain()
            assert report.expired == 0 and (await amem.stats()).memories == 6
            with pytest.raises(MemoryNotFoundError):
                await amem.get(ids[5])
        assert amem.memory.closed

    asyncio.run(run())


def test_arguments_are_checked_when_the_wrapper_is_made(tmp_path: Path) -> None:
    with TieredMemory(tmp_path / "s", encoder=None, dimension=DIM) as mem:
        for bad in (0, -1, True, 2.5, 256):
            with pytest.raises(ConfigError, match="max_workers"):
                AsyncTieredMemory(mem, max_workers=bad)
        with pytest.raises(ConfigError, match="open already"):
            AsyncTieredMemory(mem, dimension=DIM)
        assert not mem.closed

        async def leaves_a_given_store_open() -> None:
            async with AsyncTieredMemory(mem) as amem:
                await amem.add("kept", vector=unit_rows(1)[0])
            assert not mem.closed and mem.count() == 1

        asyncio.run(leaves_a_given_store_open())
    with pytest.raises(ConfigError, match="max_readers"):
        AsyncTieredMemory(tmp_path / "t", encoder=None, dimension=DIM, max_workers=300)
    TieredMemory(tmp_path / "t", encoder=None, dimension=DIM).close()  # the refusal closed what it opened
    assert 4 <= default_workers() <= 32
