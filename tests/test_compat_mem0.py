"""The mem0-style facade (tiered_memory.compat): every verb, mem0's result shapes, scope isolation,
history, the infer= path, bad input, and AsyncMemory under concurrent tasks. Real store, real model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiered_memory import (
    ConfigError,
    EmptyTextError,
    InvalidFilterError,
    InvalidInputError,
    MemoryNotFoundError,
    MetadataError,
    StoreClosedError,
    TieredMemory,
    TieredMemoryError,
)
from tiered_memory.compat import (
    AsyncMemory,
    ExtractedFactsError,
    Memory,
    MemoryIdNotFoundError,
    MessageFormatError,
    ScopeError,
)
from tiered_memory.integrations.mem0 import Scope, parse_namespace, scope_namespace

pytestmark = pytest.mark.model

KEY = bytes(range(32))
ITEM_KEYS = {"id", "memory", "hash", "metadata", "created_at", "updated_at"}
HISTORY_KEYS = {"id", "memory_id", "old_memory", "new_memory", "event", "created_at", "updated_at", "is_deleted",
                "actor_id", "role"}


@pytest.fixture
def memory(tmp_path: Path, minilm) -> Iterator[Memory]:
    with Memory(path=tmp_path / "store", encoder=minilm) as facade:
        yield facade


def texts(results: dict) -> list[str]:
    return [item["memory"] for item in results["results"]]


def snapshot(facade: Memory) -> tuple:
    """Everything a call could change: memories (with text and metadata) and the facade's extra records."""
    mem = facade.mem
    records = sorted((r.id, r.namespace, r.text, repr(sorted(r.metadata.items())), r.version)
                     for r in (mem.record(i) for i in mem.ids()) if r is not None)
    extra = mem.extra(b"compat/")
    return records, extra.items()


# -- add and its shapes --------------------------------------------------------------------------

def test_add_stores_each_message_verbatim_with_its_role(memory: Memory) -> None:
    result = memory.add([
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "I'm allergic to peanuts", "name": "alice"},
        {"role": "assistant", "content": "Noted: no peanuts in any suggestion."},
    ], user_id="alice", metadata={"source": "chat"})
    assert [(r["memory"], r["event"], r["role"], r["actor_id"]) for r in result["results"]] == [
        ("I'm allergic to peanuts", "ADD", "user", "alice"),
        ("Noted: no peanuts in any suggestion.", "ADD", "assistant", None),
    ]  # the system message instructs, it is not remembered (as in mem0)
    first = memory.get(result["results"][0]["id"])
    assert first is not None and set(first) == ITEM_KEYS | {"user_id", "role", "actor_id"}
    assert first["memory"] == "I'm allergic to peanuts" and first["user_id"] == "alice"
    assert first["role"] == "user" and first["actor_id"] == "alice" and first["metadata"] == {"source": "chat"}
    assert first["created_at"].endswith("+00:00") and first["updated_at"] == first["created_at"]
    second = memory.get(result["results"][1]["id"])
    assert second is not None and "actor_id" not in second and second["role"] == "assistant"
    stored = memory.mem.record(first["id"])
    assert stored is not None and stored.metadata == {"source": "chat", "role": "user", "actor_id": "alice"}


def test_add_takes_a_str_or_one_message_dict(memory: Memory) -> None:
    plain = memory.add("I live in Lyon", user_id="u1")["results"]
    one = memory.add({"role": "assistant", "content": "Lyon is lovely in May"}, user_id="u1")["results"]
    assert [(r["memory"], r["role"]) for r in plain + one] == [("I live in Lyon", "user"),
                                                               ("Lyon is lovely in May", "assistant")]
    # Verbatim turns are all kept, repeats included, as mem0's infer=False keeps them.
    again = memory.add("I live in Lyon", user_id="u1")["results"]
    assert again[0]["event"] == "ADD" and again[0]["id"] != plain[0]["id"]
    assert memory.add({"role": "system", "content": "Be brief."}, user_id="u1") == {"results": []}
    assert len(memory.get_all(user_id="u1")["results"]) == 3


def test_search_returns_mem0_items_best_first(memory: Memory) -> None:
    memory.add([{"role": "user", "content": "I am vegetarian and avoid all meat"},
                {"role": "user", "content": "My daughter plays the violin"},
                {"role": "user", "content": "I drive a blue electric car"}], user_id="alice", agent_id="chef")
    found = memory.search("What should I cook for dinner? Any dietary needs?", user_id="alice", limit=2)
    items = found["results"]
    assert len(items) == 2 and items[0]["memory"] == "I am vegetarian and avoid all meat"
    assert set(items[0]) == ITEM_KEYS | {"score", "user_id", "agent_id", "role"}
    assert items[0]["agent_id"] == "chef" and items[0]["score"] >= items[1]["score"]
    # top_k is mem0's newer name for limit; threshold is a cosine floor (scores are cosines in dense mode).
    dense = memory.search("violin lessons", user_id="alice", top_k=3, threshold=0.3, mode="dense")["results"]
    assert [item["memory"] for item in dense] == ["My daughter plays the violin"]
    assert dense[0]["score"] >= 0.3
    assert memory.search("violin", user_id="nobody") == {"results": []}


# -- scopes ---------------------------------------------------------------------------------------

def test_scopes_never_mix(memory: Memory) -> None:
    memory.add("alice likes green tea", user_id="alice")
    memory.add("alice's planner agent books trains", user_id="alice", agent_id="planner")
    memory.add("alice's session one was about Rome", user_id="alice", run_id="s1")
    memory.add("bob likes black coffee", user_id="bob")
    memory.add("bob's planner agent books flights", user_id="bob", agent_id="planner")
    memory.add("alice10 is another user entirely", user_id="alice10")
    query = "what does this person like to drink and how do they travel?"

    alice = set(texts(memory.search(query, user_id="alice")))
    assert alice == {"alice likes green tea", "alice's planner agent books trains",
                     "alice's session one was about Rome"}
    assert set(texts(memory.get_all(user_id="alice"))) == alice
    assert set(texts(memory.search(query, user_id="bob"))) == {"bob likes black coffee",
                                                              "bob's planner agent books flights"}
    # Every id given must match: (alice, planner) is one scope; planner alone spans users, as in mem0.
    assert texts(memory.search(query, user_id="alice", agent_id="planner")) == ["alice's planner agent books trains"]
    assert set(texts(memory.get_all(agent_id="planner"))) == {"alice's planner agent books trains",
                                                             "bob's planner agent books flights"}
    assert texts(memory.get_all(run_id="s1")) == ["alice's session one was about Rome"]
    assert texts(memory.get_all(user_id="alice", run_id="s2")) == []
    # mem0's newer spelling: the scope inside filters.
    assert set(texts(memory.get_all(filters={"user_id": "bob"}))) == {"bob likes black coffee",
                                                                      "bob's planner agent books flights"}
    assert texts(memory.get_all(filters={"user_id": "alice", "agent_id": "*", "run_id": "s1"})) == \
        ["alice's session one was about Rome"]


def test_ids_holding_separators_cannot_collide(memory: Memory) -> None:
    # "a|a:b" as a user must not read as user "a" with agent "b"; "%7C" must not read as "|".
    memory.add("the user named a with agent b", user_id="a", agent_id="b")
    memory.add("the user named a|a:b", user_id="a|a:b")
    memory.add("the user named a%7Ca:b", user_id="a%7Ca:b")
    assert texts(memory.get_all(user_id="a|a:b")) == ["the user named a|a:b"]
    assert texts(memory.get_all(user_id="a%7Ca:b")) == ["the user named a%7Ca:b"]
    assert texts(memory.get_all(user_id="a")) == ["the user named a with agent b"]
    assert len({ns for ns in memory.mem.namespaces()}) == 3


@settings(max_examples=200, deadline=None)
@given(st.tuples(*[st.none() | st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
                   for _ in range(3)]))
def test_namespaces_decode_to_the_scope_they_encode(ids: tuple) -> None:
    scope = Scope(*ids)
    if scope == Scope():
        return
    namespace = scope_namespace(scope, "mem0")
    assert parse_namespace(namespace, "mem0") == scope
    assert parse_namespace(namespace, "other") is None
    # Distinct scopes, distinct namespaces: the escaping is injective.
    shifted = Scope(*(None if v is None else v + "|" for v in ids))
    assert scope_namespace(shifted, "mem0") != namespace


def test_by_id_access_follows_mem0_but_stays_inside_the_facade(tmp_path: Path, minilm) -> None:
    with TieredMemory(tmp_path / "store", encoder=minilm) as mem:
        facade = Memory(store=mem)
        other_collection = Memory(store=mem, collection="team2")
        mid = facade.add("alice's passport number ends in 42", user_id="alice")["results"][0]["id"]
        foreign = mem.add("written by another feature of the app", namespace="app/internal")

        assert facade.get(mid)["memory"] == "alice's passport number ends in 42"  # by id, as in mem0
        assert facade.get(mid, user_id="alice") is not None
        assert facade.get(mid, user_id="bob") is None  # a scope given narrows it
        assert facade.get(foreign) is None and other_collection.get(mid) is None
        assert facade.get("0" * 32) is None
        before = snapshot(facade)
        for call in (lambda: facade.update(mid, "changed", user_id="bob"),
                     lambda: facade.delete(mid, user_id="bob"),
                     lambda: facade.update(foreign, "changed"),
                     lambda: facade.delete(foreign),
                     lambda: other_collection.delete(mid),
                     lambda: facade.delete("0" * 32)):
            with pytest.raises(MemoryIdNotFoundError) as caught:
                call()
            assert isinstance(caught.value, ValueError) and isinstance(caught.value, MemoryNotFoundError)
        assert snapshot(facade) == before
        assert facade.history(mid, user_id="bob") == [] and other_collection.history(mid) == []
        assert mem.get(foreign).text == "written by another feature of the app"
        facade.reset()  # the collection's memories go; the store's others stay
        assert facade.get(mid) is None and mem.get(foreign).namespace == "app/internal"
        facade.close()
        assert not mem.closed  # a store passed in stays open


def test_two_facades_on_one_store_see_each_others_writes_and_resets(tmp_path: Path, minilm) -> None:
    with TieredMemory(tmp_path / "store", encoder=minilm) as mem:
        first, second = Memory(store=mem), Memory(store=mem)
        first.add("written by the first facade", user_id="u")
        assert texts(second.search("written", user_id="u")) == ["written by the first facade"]
        second.reset()
        assert first.get_all(user_id="u") == {"results": []}
        first.add("written after the other one's reset", user_id="u")  # the scope is registered again
        assert texts(second.search("written", user_id="u")) == ["written after the other one's reset"]


# -- update, delete, history ------------------------------------------------------------------------

def test_history_records_add_update_delete_durably(tmp_path: Path, minilm) -> None:
    with Memory(path=tmp_path / "store", encoder=minilm) as facade:
        added = facade.add({"role": "user", "content": "I live in Lyon", "name": "alice"}, user_id="alice")
        mid = added["results"][0]["id"]
        assert facade.update(mid, "I live in Paris") == {"message": "Memory updated successfully!"}
        assert facade.update(mid, text="I live in Paris, near the Louvre", metadata={"city": "Paris"}) == \
            {"message": "Memory updated successfully!"}
        item = facade.get(mid)
        assert item["memory"] == "I live in Paris, near the Louvre" and item["metadata"] == {"city": "Paris"}
        assert item["role"] == "user" and item["updated_at"] > item["created_at"]
        assert texts(facade.search("Where does she live?", user_id="alice")) == ["I live in Paris, near the Louvre"]
        assert facade.delete(mid) == {"message": "Memory deleted successfully!"}
        assert facade.get(mid) is None
        with pytest.raises(MemoryIdNotFoundError):
            facade.delete(mid)
    with Memory(path=tmp_path / "store", encoder=minilm) as reopened:
        events = reopened.history(mid)
    assert [(e["event"], e["old_memory"], e["new_memory"], e["is_deleted"]) for e in events] == [
        ("ADD", None, "I live in Lyon", False),
        ("UPDATE", "I live in Lyon", "I live in Paris", False),
        ("UPDATE", "I live in Paris", "I live in Paris, near the Louvre", False),
        ("DELETE", "I live in Paris, near the Louvre", None, True),
    ]
    assert all(set(e) == HISTORY_KEYS and e["memory_id"] == mid for e in events)
    assert all(e["actor_id"] == "alice" and e["role"] == "user" for e in events)
    assert len({e["id"] for e in events}) == 4
    assert [e["updated_at"] for e in events] == sorted(e["updated_at"] for e in events)
    assert len({e["created_at"] for e in events}) == 1


def test_update_merges_metadata_and_keeps_the_scope(memory: Memory) -> None:
    mid = memory.add("I like jazz", user_id="alice", metadata={"genre": "jazz", "mood": "calm"})["results"][0]["id"]
    memory.update(mid, metadata={"mood": "lively", "user_id": "alice"})  # the same scope id is accepted, dropped
    assert memory.get(mid)["metadata"] == {"genre": "jazz", "mood": "lively"}
    before = snapshot(memory)
    with pytest.raises(MetadataError):
        memory.update(mid, metadata={"user_id": "bob"})  # moving a memory to another user: refused
    with pytest.raises(InvalidInputError):
        memory.update(mid)  # nothing to change
    with pytest.raises(InvalidInputError):
        memory.update(mid, "one text", text="another")
    with pytest.raises(EmptyTextError):
        memory.update(mid, "   ")
    assert snapshot(memory) == before


def test_delete_all_clears_one_scope_and_logs_each_delete(memory: Memory) -> None:
    alice_ids = [r["id"] for r in memory.add([{"role": "user", "content": "alice fact one"},
                                               {"role": "user", "content": "alice fact two"}],
                                              user_id="alice", run_id="r1")["results"]]
    memory.add("alice in another run", user_id="alice", run_id="r2")
    memory.add("bob fact", user_id="bob", run_id="r1")
    assert memory.delete_all(user_id="alice", run_id="r1") == {"message": "Memories deleted successfully!"}
    assert texts(memory.get_all(user_id="alice")) == ["alice in another run"]
    assert texts(memory.get_all(run_id="r1")) == ["bob fact"]
    assert [e["event"] for e in memory.history(alice_ids[0])] == ["ADD", "DELETE"]
    with pytest.raises(ScopeError):
        memory.delete_all()  # mem0 refuses too: reset() is the call that empties everything
    memory.reset()
    assert memory.get_all(user_id="alice") == {"results": []} and memory.get_all(user_id="bob") == {"results": []}
    assert memory.history(alice_ids[0]) == [] and memory.mem.count() == 0
    assert memory.add("after reset", user_id="alice")["results"][0]["event"] == "ADD"
    assert texts(memory.search("after", user_id="alice")) == ["after reset"]


# -- filters --------------------------------------------------------------------------------------

def test_filters_map_mem0_operators(memory: Memory) -> None:
    rows = [("Dinner at the Thai place was great", {"category": "food", "rating": 5, "city": "Lyon"}),
            ("The pizza downtown was soggy", {"category": "food", "rating": 2, "city": "Paris"}),
            ("The museum tour was long but good", {"category": "travel", "rating": 4, "city": "Paris"}),
            ("Train tickets to Rome are booked", {"category": "travel", "rating": 3})]
    for text, meta in rows:
        memory.add(text, user_id="alice", metadata=meta)
    memory.add("bob's Thai dinner", user_id="bob", metadata={"category": "food", "rating": 5})

    def listed(filters: dict) -> set[str]:
        found = set(texts(memory.get_all(user_id="alice", filters=filters)))
        searched = set(texts(memory.search("what happened?", user_id="alice", filters=filters)))
        assert found == searched  # the engine's where= (search) and the facade's listing agree
        return found

    assert listed({"category": "food"}) == {rows[0][0], rows[1][0]}
    assert listed({"rating": {"gte": 4}}) == {rows[0][0], rows[2][0]}
    assert listed({"rating": {"$lt": 3}}) == {rows[1][0]}
    assert listed({"city": {"in": ["Lyon", "Rome"]}}) == {rows[0][0]}
    assert listed({"city": {"ne": "Paris"}}) == {rows[0][0], rows[3][0]}  # a missing field is "not Paris"
    assert listed({"city": "*"}) == {rows[0][0], rows[1][0], rows[2][0]}
    assert listed({"OR": [{"rating": 5}, {"category": "travel", "rating": {"lte": 3}}]}) == {rows[0][0], rows[3][0]}
    assert listed({"AND": [{"category": "travel"}, {"city": "Paris"}]}) == {rows[2][0]}
    # No engine operator for these: evaluated over the scope's records, then searched with only_ids.
    assert listed({"NOT": [{"category": "food"}]}) == {rows[2][0], rows[3][0]}
    assert listed({"city": {"contains": "ari"}}) == {rows[1][0], rows[2][0]}
    assert listed({"city": {"icontains": "LYO"}, "rating": {"gt": 1}}) == {rows[0][0]}
    assert listed({"category": "food", "NOT": {"city": "Paris"}}) == {rows[0][0]}
    assert listed({"category": "sport"}) == set()
    assert listed({"role": "user"}) == {text for text, _ in rows}  # the role kept in metadata filters too
    for bad in ({"rating": {"between": [1, 2]}}, {"rating": {"in": 3}}, {"OR": []}, {"$where": 1},
                {"AND": [{"user_id": "bob"}]}, {"city": {"contains": 3}}, {"NOT": "x"}):
        with pytest.raises(InvalidFilterError):
            memory.search("x", user_id="alice", filters=bad)
    with pytest.raises(ScopeError):
        memory.search("x", user_id="alice", filters={"user_id": "bob"})


# -- infer= ---------------------------------------------------------------------------------------

def test_infer_stores_the_facts_an_extractor_draws(memory: Memory) -> None:
    seen = []

    def extract(messages: list[dict], prompt: str | None = None) -> list[str]:
        seen.append((messages, prompt))
        return ["Name is Ann", "Lives in Berlin", "name is  ANN"]  # the last repeats the first, folded

    result = memory.add([{"role": "user", "content": "Hi, I'm Ann and I just moved to Berlin."}], user_id="ann",
                        infer=extract, prompt="Extract personal facts.", metadata={"src": "onboarding"})
    events = [(r["memory"], r["event"]) for r in result["results"]]
    assert events == [("Name is Ann", "ADD"), ("Lives in Berlin", "ADD"), ("name is  ANN", "NONE")]
    assert result["results"][2]["id"] == result["results"][0]["id"]  # NONE names the memory already held
    assert seen == [([{"role": "user", "content": "Hi, I'm Ann and I just moved to Berlin."}],
                     "Extract personal facts.")]
    assert sorted(texts(memory.get_all(user_id="ann"))) == ["Lives in Berlin", "Name is Ann"]
    stored = memory.mem.record(result["results"][0]["id"])
    assert stored.kind == "fact" and stored.metadata == {"src": "onboarding"}
    again = memory.add("Ann again", user_id="ann", infer=lambda messages: ["Lives in Berlin"])
    assert again["results"] == [{"id": result["results"][1]["id"], "memory": "Lives in Berlin", "event": "NONE"}]
    assert [e["event"] for e in memory.history(result["results"][0]["id"])] == ["ADD"]
    assert memory.add("nothing worth keeping", user_id="ann", infer=lambda messages: []) == {"results": []}


def test_an_extractor_that_takes_existing_can_update_and_delete(memory: Memory) -> None:
    first = memory.add("x", user_id="ann", infer=lambda m: ["Works as a nurse", "Lives in Berlin", "Has a cat"])
    ids = {r["memory"]: r["id"] for r in first["results"]}
    offered = []

    def decide(messages: list[dict], existing: list[dict]) -> list[dict]:
        offered.append(existing)
        by_text = {item["text"]: item["id"] for item in existing}
        return [{"event": "UPDATE", "id": by_text["Lives in Berlin"], "text": "Lives in Munich"},
                {"event": "DELETE", "id": by_text["Has a cat"]},
                {"event": "NONE", "id": by_text["Works as a nurse"]},
                {"event": "ADD", "text": "Has a dog"}]

    result = memory.add("I moved to Munich; the cat went to my sister, and I adopted a dog.", user_id="ann",
                        infer=decide)
    assert sorted(item["text"] for item in offered[0]) == ["Has a cat", "Lives in Berlin", "Works as a nurse"]
    assert {item["id"] for item in offered[0]} == {"0", "1", "2"}  # small ids, mapped back (mem0's guard)
    assert [(r["event"], r["memory"]) for r in result["results"]] == [
        ("UPDATE", "Lives in Munich"), ("DELETE", "Has a cat"), ("NONE", "Works as a nurse"), ("ADD", "Has a dog")]
    assert result["results"][0]["id"] == ids["Lives in Berlin"]
    assert result["results"][0]["previous_memory"] == "Lives in Berlin"
    assert sorted(texts(memory.get_all(user_id="ann"))) == ["Has a dog", "Lives in Munich", "Works as a nurse"]
    assert [e["event"] for e in memory.history(ids["Lives in Berlin"])] == ["ADD", "UPDATE"]
    assert [e["event"] for e in memory.history(ids["Has a cat"])] == ["ADD", "DELETE"]

    before = snapshot(memory)
    for answer in ([{"event": "UPDATE", "id": "99", "text": "made up"}],  # an id it was not shown
                   [{"event": "DELETE", "id": "0"}, {"event": "UPDATE", "id": "0", "text": "twice"}],
                   [{"event": "MERGE", "text": "x"}], [""], "one string", [3], [{"event": "UPDATE", "id": "0"}]):
        with pytest.raises(ExtractedFactsError):
            memory.add("more", user_id="ann", infer=lambda messages, existing, answer=answer: answer)
    assert snapshot(memory) == before


def test_a_default_extractor_makes_add_infer_as_mem0_does(tmp_path: Path, minilm) -> None:
    def facts(messages: list[dict]) -> list[str]:
        return [f"Said: {m['content']}" for m in messages if m["role"] == "user"]

    with Memory.from_config({"path": str(tmp_path / "s"), "encoder": minilm, "infer": facts}) as facade:
        assert texts(facade.add("I run marathons", user_id="u")) == ["Said: I run marathons"]
        assert texts(facade.add("I run marathons", user_id="u", infer=False)) == ["I run marathons"]
        assert texts(facade.add("I swim", user_id="u", infer=True)) == ["Said: I swim"]
    with Memory(path=tmp_path / "t", encoder=minilm) as plain:
        with pytest.raises(ConfigError):
            plain.add("I swim", user_id="u", infer=True)
        assert plain.mem.count() == 0


# -- configuration and bad input -------------------------------------------------------------------

def test_from_config_maps_a_small_dict_onto_the_store(tmp_path: Path, minilm) -> None:
    config = {"vector_store": {"provider": "tiered_memory", "config": {"path": str(tmp_path / "m"),
                                                                        "collection_name": "agents"}},
              "embedder": {"config": {"model": "all-MiniLM-L6-v2"}}, "version": "v1.1"}
    with Memory.from_config(config) as facade:
        assert facade.collection == "agents" and facade.mem.encoder.name == "all-MiniLM-L6-v2"
        mid = facade.add("stored under a collection", user_id="u")["results"][0]["id"]
        assert facade.mem.record(mid).namespace == "agents|u:u"
    for bad in ({"llm": {"provider": "openai"}}, {"history_db_path": "/tmp/h.db"}, {"vector_stor": {}},
                {"vector_store": {"provider": "qdrant", "config": {"path": "x"}}}, {"version": "v2"},
                {"collection": "has space", "path": str(tmp_path / "n")}, {"infer": "not callable"},
                {"path": str(tmp_path / "n"), "settings": {"no_such_setting": 1}}, {}):
        with pytest.raises(ConfigError):
            Memory(bad)
    with pytest.raises(ConfigError):
        Memory({"path": str(tmp_path / "n")}, path=tmp_path / "n")  # given twice


def test_bad_input_raises_a_specific_error_and_changes_nothing(memory: Memory) -> None:
    memory.add("a memory to keep", user_id="alice")
    before = snapshot(memory)
    calls = [
        (ScopeError, lambda: memory.add("no scope")),
        (ScopeError, lambda: memory.add("blank", user_id="  ")),
        (ScopeError, lambda: memory.add("inner space", user_id="alice smith")),
        (ScopeError, lambda: memory.add("wildcard", user_id="*")),
        (ScopeError, lambda: memory.add("too long", user_id="u" * 300)),
        (ScopeError, lambda: memory.add("not an id", user_id=["alice"])),
        (ScopeError, lambda: memory.search("no scope")),
        (ScopeError, lambda: memory.get_all(filters={"topic": "x"})),
        (MessageFormatError, lambda: memory.add(42, user_id="alice")),
        (MessageFormatError, lambda: memory.add([], user_id="alice")),
        (MessageFormatError, lambda: memory.add([{"role": "user", "content": "ok"}, "bad"], user_id="alice")),
        (MessageFormatError, lambda: memory.add([{"content": "no role"}], user_id="alice")),
        (MessageFormatError, lambda: memory.add({"role": "user", "content": [{"type": "image_url"}]},
                                                user_id="alice")),
        (EmptyTextError, lambda: memory.add([{"role": "user", "content": "fine"}, {"role": "user", "content": " "}],
                                            user_id="alice")),
        (MetadataError, lambda: memory.add("m", user_id="alice", metadata=["not", "a", "dict"])),
        (MetadataError, lambda: memory.add("m", user_id="alice", metadata={"user_id": "bob"})),
        (MetadataError, lambda: memory.add("m", user_id="alice", metadata={"f": object()})),
        (InvalidInputError, lambda: memory.add("m", user_id="alice", prompt="no extractor takes it")),
        (InvalidInputError, lambda: memory.add("m", user_id="alice", infer="yes")),
        (InvalidInputError, lambda: memory.search("q", user_id="alice", limit=0)),
        (InvalidInputError, lambda: memory.search("q", user_id="alice", threshold=1.5)),
        (InvalidInputError, lambda: memory.search("q", user_id="alice", limit=3, top_k=4)),
        (EmptyTextError, lambda: memory.search("   ", user_id="alice")),
        (InvalidInputError, lambda: memory.search(None, user_id="alice")),
        (InvalidInputError, lambda: memory.get(123)),
        (InvalidInputError, lambda: memory.history(None)),
    ]
    for error, call in calls:
        with pytest.raises(error):
            call()
    assert snapshot(memory) == before
    # mem0 raises ValueError for these; ours are ValueErrors and TieredMemoryErrors both.
    with pytest.raises(ValueError):
        memory.add("no scope")
    assert issubclass(ScopeError, TieredMemoryError)
    # mem0 coerces int ids to str, so user 7 and user "7" are one user.
    memory.add("an int id", user_id=7)
    assert texts(memory.get_all(user_id="7")) == ["an int id"]


def test_a_keyed_store_seals_memories_and_their_history(tmp_path: Path, minilm) -> None:
    pytest.importorskip("cryptography", reason="encryption needs the crypto extra (cryptography)")
    secret = "my bank PIN is 4921 and my dog is called Biscuit"
    with Memory(path=tmp_path / "s", encoder=minilm, encryption_key=KEY) as facade:
        mid = facade.add(secret, user_id="alice", metadata={"vault": "personal-notes"})["results"][0]["id"]
        facade.update(mid, secret + " (updated)")
        assert texts(facade.search("what is the dog called?", user_id="alice")) == [secret + " (updated)"]
        assert [e["new_memory"] for e in facade.history(mid)] == [secret, secret + " (updated)"]
    on_disk = b"".join(p.read_bytes() for p in sorted((tmp_path / "s").rglob("*")) if p.is_file())
    for needle in (b"4921", b"Biscuit", b"personal-notes"):
        assert needle not in on_disk
    with Memory(path=tmp_path / "s", encoder=minilm, encryption_key=KEY) as reopened:
        assert reopened.get(mid)["memory"] == secret + " (updated)"


def test_a_closed_facade_refuses_calls(tmp_path: Path, minilm) -> None:
    facade = Memory(path=tmp_path / "s", encoder=minilm)
    facade.add("before closing", user_id="u")
    facade.close()
    with pytest.raises(StoreClosedError):
        facade.add("after closing", user_id="u")
    with pytest.raises(StoreClosedError):
        facade.search("closing", user_id="u")


# -- AsyncMemory ----------------------------------------------------------------------------------

def test_async_memory_serves_concurrent_tasks_in_isolation(tmp_path: Path, minilm) -> None:
    users = [f"user{i}" for i in range(6)]

    async def session(facade: AsyncMemory, user: str) -> tuple[str, dict, dict, list]:
        added = await facade.add([{"role": "user", "content": f"{user} collects rare {user[-1]}-stamps"},
                                  {"role": "assistant", "content": f"Noted the hobby of {user}"}], user_id=user)
        mid = added["results"][0]["id"]
        await facade.update(mid, f"{user} collects rare stamps from Chile")
        found = await facade.search("Which stamps does this person collect?", user_id=user, limit=5)
        listed = await facade.get_all(user_id=user)
        return mid, found, listed, await facade.history(mid)

    async def main() -> list:
        async with AsyncMemory(path=tmp_path / "s", encoder=minilm, max_workers=3) as facade:
            results = await asyncio.gather(*(session(facade, user) for user in users))
            assert (await facade.get(results[0][0]))["memory"] == "user0 collects rare stamps from Chile"
            await facade.delete(results[0][0])
            assert await facade.get(results[0][0]) is None
            await facade.delete_all(user_id="user1")
            assert await facade.get_all(user_id="user1") == {"results": []}
            with pytest.raises(ScopeError):
                await facade.search("anything")
            return results

    results = asyncio.run(main())
    for user, (_, found, listed, history) in zip(users, results):
        assert {item["user_id"] for item in found["results"] + listed["results"]} == {user}
        assert found["results"][0]["memory"] == f"{user} collects rare stamps from Chile"
        assert len(listed["results"]) == 2
        assert [e["event"] for e in history] == ["ADD", "UPDATE"]


def test_async_memory_never_blocks_the_event_loop(tmp_path: Path, minilm) -> None:
    release = threading.Event()
    calls = []

    def slow_extractor(messages: list[dict]) -> list[str]:
        calls.append(threading.get_ident())
        # Waits for the loop to set the event: if this ran on the loop's thread, nothing could.
        if not release.wait(timeout=30):
            raise TimeoutError("the event loop never ran while the extractor worked")
        return ["Prefers window seats"]

    async def polite_llm(messages: list[dict], existing: list[dict]) -> list[dict]:
        await asyncio.sleep(0)
        return [{"event": "UPDATE", "id": existing[0]["id"], "text": "Prefers aisle seats"}]

    async def main() -> tuple:
        async with AsyncMemory(path=tmp_path / "s", encoder=minilm) as facade:
            task = asyncio.create_task(facade.add("I like window seats", user_id="u", infer=slow_extractor))
            while not calls:
                await asyncio.sleep(0.01)
            release.set()
            added = await task
            updated = await facade.add("Actually, aisle seats", user_id="u", infer=polite_llm)
            return added, updated, await facade.get_all(user_id="u"), threading.get_ident()

    added, updated, listed, loop_thread = asyncio.run(main())
    assert calls and calls[0] != loop_thread
    assert added["results"][0]["event"] == "ADD"
    assert updated["results"][0]["event"] == "UPDATE" and updated["results"][0]["previous_memory"] == \
        "Prefers window seats"
    assert texts(listed) == ["Prefers aisle seats"]


def test_a_sync_facade_refuses_an_async_extractor(memory: Memory) -> None:
    async def llm(messages: list[dict]) -> list[str]:
        return ["never stored"]

    with pytest.raises(ConfigError):
        memory.add("x", user_id="u", infer=llm)
    assert memory.mem.count() == 0
