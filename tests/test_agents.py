"""Agents over one store: private memory, sharing with grants, coordinated updates, notifications."""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiered_memory import (
    AgentHub,
    ConfigError,
    InvalidInputError,
    MemoryNotFoundError,
    Notification,
    PermissionDenied,
    QuotaExceededError,
    StorageError,
    TieredMemory,
)
from tiered_memory.agents.store import HubStore

from .conftest import ROOT, unit_rows

VECTORS = unit_rows(64, seed=11)


def generation(mem: TieredMemory) -> int:
    """Committed LMDB writes so far: unchanged means nothing was written."""
    return mem.cold.meta_get("generation", 0)


@dataclass
class Team:
    mem: TieredMemory
    hub: AgentHub
    shared_id: str
    private_id: str


def build_team(mem: TieredMemory) -> Team:
    """owner (read-write), editor (granted read-write), reader (granted read), writer (registered
    read-only, granted read), outsider (read-write, no grant); one shared and one private memory."""
    hub = mem.agents("acme")
    owner = hub.register("owner", capabilities=["data_processing"])
    for name in ("editor", "reader", "outsider"):
        hub.register(name)
    hub.register("writer", shared_access="read-only")
    private_id = owner.remember("owner's private draft", vector=VECTORS[0])
    owner.put("draft", "private value")
    shared_id = hub.share(owner, ["editor"], "Q3 revenue grew 12%", key="q3", access="read-write",
                          vector=VECTORS[1], metadata={"quarter": 3})
    hub.share(owner, ["reader", "writer"], memory_id=shared_id, access="read")
    return Team(mem, hub, shared_id, private_id)


@pytest.fixture
def team(open_store) -> Team:
    # fsync adds nothing to what these tests check (a reopen in-process sees the OS's pages)
    return build_team(open_store(durability="async"))


def test_namespace_scheme_keeps_users_apart(open_store) -> None:
    mem = open_store()
    alice, bob = mem.agents("alice"), mem.agents("bob")
    assert mem.agents("alice") is alice
    with pytest.raises(ConfigError, match="already has a hub"):
        AgentHub(mem, "alice")
    a = alice.register("analyst")
    b = bob.register("analyst")
    assert (a.namespace, b.namespace, alice.shared_namespace) == ("alice/analyst", "bob/analyst", "alice/shared")
    a.put("k", "alice's")
    b.put("k", "bob's")
    mid = a.remember("alice private", vector=VECTORS[0])
    sid = alice.share(a, [], "alice shared", key="s", vector=VECTORS[1])
    assert set(mem.namespaces()) == {"alice/analyst", "alice/shared"}
    assert (a.get("k"), b.get("k"), b.get("s")) == ("alice's", "bob's", None)
    assert b.search(vector=VECTORS[0], k=10) == [] and b.search(vector=VECTORS[1], k=10) == []
    for memory_id in (mid, sid):  # another user's memories are not even confirmed to exist
        with pytest.raises(MemoryNotFoundError):
            b.recall(memory_id)
        with pytest.raises(MemoryNotFoundError):
            b.update(memory_id, text="bob was here")
    with pytest.raises(MemoryNotFoundError):
        bob.update(sid, {"text": "bob was here"}, by=b)
    for bad in ("a/b", "", "shared", "x" * 65, 7):
        with pytest.raises(InvalidInputError):
            alice.register(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no '/'"):
        mem.agents("evil/user")


def test_private_key_value_entries(open_store, tmp_path: Path) -> None:
    mem = open_store()
    hub = mem.agents()
    analyst, writer = hub.register("analyst"), hub.register("writer")
    analyst.put("stats", {"rows": 1200, "columns": ["a", "b"]}, metadata={"source": "q3.csv"})
    analyst.put("stats", {"rows": 1300, "columns": ("a", "b")})  # replaces; tuples come back as lists
    assert analyst.get("stats") == {"rows": 1300, "columns": ["a", "b"]}
    assert writer.get("stats") is None and writer.get("stats", "none") == "none"
    assert analyst.entry("stats").metadata == {} and analyst.keys() == ["stats"]
    before = generation(mem)
    with pytest.raises(InvalidInputError, match="not serializable"):
        analyst.put("bad", object())
    assert generation(mem) == before and analyst.keys() == ["stats"]
    analyst.put("gone", 1)
    assert analyst.delete("gone") and not analyst.delete("gone")
    mem.close()
    with TieredMemory(tmp_path / "store", encoder=None, dimension=32) as reopened:
        again = reopened.agents().agent("analyst")
        assert again.get("stats") == {"rows": 1300, "columns": ["a", "b"]} and again.keys() == ["stats"]


@pytest.mark.model
def test_search_covers_private_and_granted_memories_only(tmp_path: Path, minilm) -> None:
    with TieredMemory(tmp_path / "s", encoder=minilm) as mem:
        hub = mem.agents()
        analyst, writer = hub.register("data-analyst"), hub.register("report-generator", shared_access="read-only")
        analyst.remember("The churn model overfits on the March cohort")
        analyst.remember("Customers in Norway pay in kroner", kind="fact")
        note = writer.remember("Reports use the company's blue template")
        assert [h.memory.id for h in writer.search("Which colour is the report template?", k=5)] == [note]
        shared = hub.share(analyst, [writer], "Revenue grew 12% in the third quarter", kind="finding")
        hits = writer.search("How much did revenue grow?", k=2)
        assert hits[0].memory.id == shared and {h.memory.id for h in hits} == {shared, note}
        assert [h.memory.id for h in writer.search("revenue growth", k=5, scope="private")] == [note]
        assert analyst.search("currency in Norway", k=1)[0].memory.text == "Customers in Norway pay in kroner"
        hub.revoke(shared, [writer])
        assert [h.memory.id for h in writer.search("How much did revenue grow?", k=5)] == [note]


def test_quota_is_enforced_and_leaves_the_store_unchanged(open_store, tmp_path: Path) -> None:
    mem = open_store()
    hub = mem.agents()
    agent = hub.register("analyst", private_quota_bytes=200)
    agent.put("a", "x" * 50)
    mid = agent.remember("y" * 60, vector=VECTORS[0])
    used, before = agent.usage(), generation(mem)
    assert 110 < used <= 200
    with pytest.raises(QuotaExceededError, match="private_quota_bytes=200"):
        agent.put("b", "z" * 100)
    with pytest.raises(QuotaExceededError, match="forget"):
        agent.remember("w" * 100, vector=VECTORS[1])
    with pytest.raises(QuotaExceededError):
        agent.update(mid, text="v" * 200, vector=VECTORS[2])
    assert (agent.usage(), generation(mem), agent.keys(), mem.count(agent.namespace)) == (used, before, ["a"], 1)
    agent.forget(mid)
    agent.put("b", "z" * 100)  # fits once the memory is gone
    usage = agent.usage()
    mem.close()
    with TieredMemory(tmp_path / "store", encoder=None, dimension=32) as reopened:
        assert reopened.agents().agent("analyst").usage() == usage  # recounted from what is stored


# -- the access matrix ---------------------------------------------------------------------

def op_recall(team: Team, name: str) -> None:
    team.hub.agent(name).recall(team.shared_id)


def op_update(team: Team, name: str) -> None:
    team.hub.update(team.shared_id, {"text": f"edited by {name}", "vector": VECTORS[2]}, by=name)


def op_agent_update(team: Team, name: str) -> None:
    team.hub.agent(name).update(team.shared_id, metadata={"quarter": 4})


def op_history(team: Team, name: str) -> None:
    team.hub.history(team.shared_id, by=name)


def op_share_onward(team: Team, name: str) -> None:
    team.hub.share(name, ["outsider"], memory_id=team.shared_id)


def op_revoke(team: Team, name: str) -> None:
    team.hub.revoke(team.shared_id, ["reader"], by=name)


def op_delete(team: Team, name: str) -> None:
    team.hub.agent(name).forget(team.shared_id)


def op_share_new(team: Team, name: str) -> None:
    team.hub.share(name, ["reader"], "a new finding", vector=VECTORS[3])


def op_recall_private(team: Team, name: str) -> None:
    team.hub.agent(name).recall(team.private_id)


def op_update_private(team: Team, name: str) -> None:
    team.hub.agent(name).update(team.private_id, importance=0.9)


def op_forget_private(team: Team, name: str) -> None:
    team.hub.agent(name).forget(team.private_id)


def op_share_private(team: Team, name: str) -> None:
    team.hub.share(name, ["reader"], memory_id=team.private_id)


OPERATIONS: dict[str, Callable[[Team, str], None]] = {
    "recall": op_recall, "update": op_update, "agent_update": op_agent_update, "history": op_history,
    "share_onward": op_share_onward, "revoke": op_revoke, "delete": op_delete, "share_new": op_share_new,
    "recall_private": op_recall_private, "update_private": op_update_private,
    "forget_private": op_forget_private, "share_private": op_share_private,
}
ROLES = ("owner", "editor", "reader", "writer", "outsider")
# Which role may do what (every other cell must raise PermissionDenied and change nothing).
ALLOWED = {
    "owner": set(OPERATIONS),
    "editor": {"recall", "update", "agent_update", "history", "share_onward", "share_new"},
    "reader": {"recall", "history", "share_new"},
    "writer": {"recall", "history"},
    "outsider": {"share_new"},
}


def snapshot(team: Team) -> tuple:
    hub, mem = team.hub, team.mem
    return (generation(mem), mem.get(team.shared_id).version, mem.get(team.shared_id).text,
            hub.info(team.shared_id), len(hub.history(team.shared_id)), len(mem),
            {name: hub.agent(name).notifications() for name in ROLES})


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_access_matrix(team: Team, role: str, operation: str) -> None:
    if operation in ALLOWED[role]:
        OPERATIONS[operation](team, role)
        return
    before = snapshot(team)
    with pytest.raises(PermissionDenied):
        OPERATIONS[operation](team, role)
    assert snapshot(team) == before


@pytest.mark.parametrize("role", ROLES)
def test_what_each_role_sees(team: Team, role: str) -> None:
    agent = team.hub.agent(role)
    sees_shared = role != "outsider"
    assert (agent.get("q3") == "Q3 revenue grew 12%") == sees_shared
    assert (agent.get("draft") == "private value") == (role == "owner")
    found = {hit.memory.id for hit in agent.search(vector=VECTORS[1], k=10)}
    assert found == ({team.shared_id} if sees_shared else set()) | ({team.private_id} if role == "owner" else set())
    assert agent.shared_ids() == ([team.shared_id] if sees_shared else [])


def test_grants_are_checked_against_the_agents_ceiling(team: Team) -> None:
    hub, before = team.hub, generation(team.mem)
    with pytest.raises(PermissionDenied, match="read-only"):
        hub.share("owner", ["writer"], memory_id=team.shared_id, access="read-write")
    hub.register("mute", shared_access="none")
    with pytest.raises(PermissionDenied, match="none"):
        hub.share("owner", ["mute"], "secret plan", vector=VECTORS[4])
    assert generation(team.mem) > before  # registering wrote; the refused shares did not
    assert hub.info(team.shared_id).grants == {"owner": "read-write", "editor": "read-write", "reader": "read",
                                               "writer": "read"}
    hub.register("editor", shared_access="read-only")  # lowering the ceiling lowers every grant at once
    with pytest.raises(PermissionDenied, match="read-only"):
        op_update(team, "editor")


def test_what_a_grant_onward_may_change(team: Team) -> None:
    """A read-write grantee adds grants and raises them up to its own level; it
    never lowers an existing grant (another grantee's or the owner's): only the owner does."""
    hub, sid = team.hub, team.shared_id
    hub.register("second")
    hub.share("owner", ["second"], memory_id=sid, access="read-write")
    grants = {"owner": "read-write", "editor": "read-write", "second": "read-write", "reader": "read",
              "writer": "read"}
    assert hub.info(sid).grants == grants
    refused = [("editor", ["second"], "read", "lower the grant of ['second']"),  # a partial revoke
               ("editor", ["owner"], "read", "lower the grant of ['owner']"),  # the owner's own access
               ("editor", ["outsider", "second"], "read", "lower"),  # all or nothing: outsider not added
               ("reader", ["outsider"], "read", "read access only"),  # a read grantee grants nothing
               ("writer", ["outsider"], "read", "read-only")]  # nor does a read-only agent
    for granter, targets, access, why in refused:
        before = snapshot(team)
        with pytest.raises(PermissionDenied, match=re.escape(why)):
            hub.share(granter, targets, memory_id=sid, access=access)
        assert snapshot(team) == before and hub.info(sid).grants == grants
    hub.share("editor", ["outsider"], memory_id=sid, access="read")  # a grantee adds a read grant
    hub.share("editor", ["reader"], memory_id=sid, access="read-write")  # and raises one to its own level
    hub.share("editor", ["second"], memory_id=sid, access="read-write")  # keeping a grant as it is
    assert hub.info(sid).grants == grants | {"outsider": "read", "reader": "read-write"}
    hub.share("owner", ["editor", "reader"], memory_id=sid, access="read")  # the owner lowers grants
    assert hub.info(sid).grants == grants | {"outsider": "read", "editor": "read"}
    with pytest.raises(PermissionDenied, match="read access only"):  # and the lowered editor grants no more
        hub.share("editor", ["outsider"], memory_id=sid, access="read-write")
    assert [n.event for n in hub.agent("editor").notifications()][-1] == "shared"


# -- coordinated updates, history, notifications -------------------------------------------

def test_updates_bump_versions_keep_history_and_notify(team: Team, tmp_path: Path, clock) -> None:
    hub, sid = team.hub, team.shared_id
    clock.tick(10)
    changed = hub.update(sid, {"text": "Q3 revenue grew 13%", "vector": VECTORS[5]}, by="editor")
    clock.tick(10)
    hub.update(sid, {"metadata": {"quarter": 3, "checked": True}}, by="owner")
    assert changed.version == 2 and team.mem.get(sid).version == 3
    info = hub.info(sid)
    assert (info.last_updated_by, info.updated_at) == ("owner", clock())
    history = hub.history(sid)
    assert [(v.version, v.by, v.text) for v in history] == [
        (1, "owner", "Q3 revenue grew 12%"), (2, "editor", "Q3 revenue grew 13%"), (3, "owner", "Q3 revenue grew 13%")]
    assert history[2].metadata == {"quarter": 3, "checked": True} and history[1].metadata == {"quarter": 3}
    reader = hub.agent("reader").notifications()
    assert [(n.seq, n.event, n.version, n.by) for n in reader] == [
        (1, "shared", 1, "owner"), (2, "updated", 2, "editor"), (3, "updated", 3, "owner")]
    assert [n.by for n in hub.agent("editor").notifications()] == ["owner", "owner"]  # not told of its own
    assert hub.agent("outsider").notifications() == []
    assert hub.agent("reader").ack(2) == 2
    team.mem.close()
    with TieredMemory(tmp_path / "store", encoder=None, dimension=32) as mem:
        hub = mem.agents("acme")
        assert hub.history(sid) == history
        assert [(n.seq, n.version) for n in hub.agent("reader").notifications()] == [(3, 3)]
        assert mem.get(sid).text == "Q3 revenue grew 13%"
        hub.update(sid, {"importance": 0.9}, by="editor")
        assert [n.seq for n in hub.agent("reader").notifications()] == [3, 4]  # numbering goes on


def test_revoking_takes_effect_at_once(team: Team) -> None:
    hub, sid = team.hub, team.shared_id
    reader = hub.agent("reader")
    hub.revoke(sid, ["reader", "outsider"])
    assert reader.get("q3") is None and reader.shared_ids() == []
    assert reader.search(vector=VECTORS[1], k=10) == []
    with pytest.raises(PermissionDenied):
        reader.recall(sid)
    assert reader.notifications()[-1].event == "revoked"
    with pytest.raises(InvalidInputError, match="owns"):
        hub.revoke(sid, ["owner"])
    hub.agent("owner").forget(sid)
    with pytest.raises(MemoryNotFoundError):
        hub.agent("editor").recall(sid)
    assert hub.agent("editor").notifications()[-1].event == "deleted"
    with pytest.raises(MemoryNotFoundError):
        hub.history(sid)
    assert not list(team.mem.cold.extra_items(f"hub/acme/h/{sid}".encode()))


def test_callbacks_run_in_order_after_the_change_is_durable(team: Team) -> None:
    hub, sid = team.hub, team.shared_id
    seen: list[tuple[int, int, int]] = []

    def on_change(note: Notification) -> None:
        # Durable before delivery: the history entry and the engine's version are committed.
        committed = hub.history(sid)[-1].version if note.event != "shared" else 1
        seen.append((note.seq, note.version, committed))

    hub.agent("reader").subscribe(on_change)  # delivers what is queued, then acknowledges it
    assert seen == [(1, 1, 1)] and hub.agent("reader").notifications() == []
    for i in range(3):
        hub.update(sid, {"importance": 0.1 * (i + 1)}, by="editor")
    assert seen == [(1, 1, 1), (2, 2, 2), (3, 3, 3), (4, 4, 4)]


def test_a_failing_callback_keeps_its_notification_queued(team: Team, caplog) -> None:
    hub, sid = team.hub, team.shared_id
    calls: list[int] = []

    def flaky(note: Notification) -> None:
        calls.append(note.seq)
        if len(calls) == 2:
            raise RuntimeError("subscriber bug")

    hub.agent("reader").subscribe(flaky)
    hub.update(sid, {"importance": 0.2}, by="editor")  # the change stands although the callback fails
    assert team.mem.get(sid).version == 2 and "subscriber bug" in caplog.text
    assert [n.seq for n in hub.agent("reader").notifications()] == [2]
    hub.deliver()
    assert calls == [1, 2, 2] and hub.agent("reader").notifications() == []


def test_a_callback_may_change_shared_memories_itself(team: Team) -> None:
    hub, sid = team.hub, team.shared_id
    other = hub.share("owner", ["editor", "reader"], "follow-up", vector=VECTORS[6], access="read-write")
    order: list[tuple[str, int]] = []

    def react(note: Notification) -> None:
        order.append((note.memory_id, note.seq))
        if note.memory_id == sid and note.event == "updated":
            hub.update(other, {"importance": 0.7}, by="editor")

    hub.agent("reader").subscribe(react)
    hub.update(sid, {"importance": 0.3}, by="owner")
    assert [seq for _, seq in order] == [1, 2, 3, 4]
    assert order[-1] == (other, 4) and hub.agent("reader").notifications() == []


def test_notifications_are_redelivered_after_a_restart(team: Team, tmp_path: Path) -> None:
    hub, sid = team.hub, team.shared_id
    for i in range(4):
        hub.update(sid, {"importance": 0.1 * (i + 1)}, by="editor")
    got: list[int] = []
    hub.agent("reader").subscribe(lambda note: got.append(note.seq))
    hub.agent("writer").ack(2)
    team.mem.close()
    with TieredMemory(tmp_path / "store", encoder=None, dimension=32) as mem:
        again = mem.agents("acme")
        assert again.agent("reader").notifications() == []  # delivered and acknowledged before
        redelivered: list[int] = []
        again.agent("writer").subscribe(lambda note: redelivered.append(note.seq))
        assert got == [1, 2, 3, 4, 5] and redelivered == [3, 4, 5]


# -- crash consistency ----------------------------------------------------------------------

class SimulatedCrash(BaseException):
    """Stands for the process dying: nothing after it runs."""


def crash(*args: object, **kwargs: object) -> None:
    raise SimulatedCrash


def crash_before_hub_records(monkeypatch) -> None:
    monkeypatch.setattr(HubStore, "_settle", crash)


def test_changes_interrupted_after_the_engine_write_are_completed_at_open(team: Team, tmp_path: Path,
                                                                         monkeypatch) -> None:
    hub, sid = team.hub, team.shared_id
    crash_before_hub_records(monkeypatch)
    with pytest.raises(SimulatedCrash):
        hub.update(sid, {"text": "interrupted edit", "vector": VECTORS[7]}, by="editor")
    monkeypatch.undo()
    with pytest.raises(StorageError, match="reopen"):  # fail-stop until recovery has run
        hub.agent("owner").put("more", 1)
    team.mem.close()
    with TieredMemory(tmp_path / "store", encoder=None, dimension=32) as mem:
        hub = mem.agents("acme")
        assert [(v.version, v.by, v.text) for v in hub.history(sid)][-1] == (2, "editor", "interrupted edit")
        assert hub.info(sid).last_updated_by == "editor"
        assert [n.event for n in hub.agent("reader").notifications()] == ["shared", "updated"]
        crash_before_hub_records(monkeypatch)
        with pytest.raises(SimulatedCrash):
            hub.share("owner", ["reader"], "interrupted share", key="late", vector=VECTORS[8])
        monkeypatch.undo()
    with TieredMemory(tmp_path / "store", encoder=None, dimension=32) as mem:
        hub = mem.agents("acme")
        assert hub.agent("reader").get("late") == "interrupted share"
        assert [n.seq for n in hub.agent("reader").notifications()] == [1, 2, 3]
        assert not list(mem.cold.extra_items(b"hub/acme/p/"))


def test_an_intent_whose_engine_write_never_happened_is_dropped(team: Team, tmp_path: Path, monkeypatch) -> None:
    hub, sid = team.hub, team.shared_id
    crash_before_hub_records(monkeypatch)
    monkeypatch.setattr(team.mem, "update", crash)
    with pytest.raises(SimulatedCrash):  # the process dies after the intent, before the engine writes
        hub.update(sid, {"text": "never written", "vector": VECTORS[7]}, by="editor")
    monkeypatch.undo()
    assert list(team.mem.cold.extra_items(b"hub/acme/p/"))
    team.mem.close()
    with TieredMemory(tmp_path / "store", encoder=None, dimension=32) as mem:
        hub = mem.agents("acme")
        assert [v.version for v in hub.history(sid)] == [1] and mem.get(sid).version == 1
        assert not list(mem.cold.extra_items(b"hub/acme/p/"))


def test_an_engine_refusal_leaves_no_intent(team: Team) -> None:
    before = snapshot(team)
    with pytest.raises(InvalidInputError):
        team.hub.update(team.shared_id, {"metadata": {"bad": object()}}, by="editor")
    with pytest.raises(InvalidInputError, match="keys among"):
        team.hub.update(team.shared_id, {"colour": "red"}, by="editor")
    assert snapshot(team) == before


# -- sharing copies and bad input -------------------------------------------------------------

def test_sharing_a_private_memory_shares_a_copy(team: Team) -> None:
    hub = team.hub
    copy = hub.share("owner", ["reader"], memory_id=team.private_id, key="draft-copy")
    assert copy != team.private_id and team.mem.get(team.private_id).namespace == "acme/owner"
    shared = hub.agent("reader").recall(copy)
    assert shared.text == "owner's private draft" and shared.namespace == "acme/shared"
    assert hub.agent("reader").search(vector=VECTORS[0], k=1)[0].memory.id == copy
    assert hub.info(copy).owner == "owner"


def test_bad_sharing_requests_are_refused_before_writing(team: Team) -> None:
    hub, before = team.hub, snapshot(team)
    with pytest.raises(InvalidInputError, match="either content"):
        hub.share("owner", ["reader"], "text", memory_id=team.shared_id)
    with pytest.raises(InvalidInputError, match="either content"):
        hub.share("owner", ["reader"])
    with pytest.raises(InvalidInputError, match="no agent 'nobody'"):
        hub.share("owner", ["nobody"], "text", vector=VECTORS[9])
    with pytest.raises(InvalidInputError, match="access must be"):
        hub.share("owner", ["reader"], "text", access="write", vector=VECTORS[9])
    with pytest.raises(InvalidInputError, match="already named"):
        hub.share("owner", ["reader"], "text", key="q3", vector=VECTORS[9])
    assert snapshot(team) == before


def test_registration_settings_and_capabilities(open_store) -> None:
    mem = open_store()
    hub = mem.agents()
    hub.register("analyst", capabilities=["data_processing", "sql"], private_quota_bytes=1_000)
    hub.register("writer", capabilities=["writing"], shared_access="read-only")
    before = generation(mem)
    again = hub.register("analyst", capabilities=["data_processing", "sql"], private_quota_bytes=1_000)
    assert generation(mem) == before  # the same settings again write nothing
    assert (hub.find("sql"), hub.find("writing"), hub.find("cooking")) == (["analyst"], ["writer"], [])
    assert again.capabilities == ["data_processing", "sql"] and hub.agent("writer").shared_access == "read-only"
    assert hub.register("analyst") and generation(mem) == before  # settings left out are kept
    hub.register("analyst", shared_access="read-only")
    record = hub.state.agents["analyst"]
    assert (record.capabilities, record.private_quota_bytes, record.shared_access) == (
        ["data_processing", "sql"], 1_000, "read-only")
    before = generation(mem)
    for bad in ({"private_quota_bytes": -1}, {"private_quota_bytes": True}, {"shared_access": "write"},
                {"capabilities": "sql"}, {"sealed": "yes"}):
        with pytest.raises(InvalidInputError):
            hub.register("analyst", **bad)
    assert generation(mem) == before
    with pytest.raises(InvalidInputError, match="no agent 'ghost'"):
        hub.agent("ghost")


def test_a_read_only_opener_sees_the_hub_but_cannot_change_it(team: Team, tmp_path: Path) -> None:
    team.mem.close()
    with TieredMemory(tmp_path / "store", encoder=None, dimension=32, read_only=True) as mem:
        hub = mem.agents("acme")
        reader = hub.agent("reader")
        assert reader.get("q3") == "Q3 revenue grew 12%" and hub.agent("owner").get("draft") == "private value"
        assert [h.memory.id for h in reader.search(vector=VECTORS[1], k=5)] == [team.shared_id]
        with pytest.raises(InvalidInputError, match="read-only"):
            reader.put("k", "v")
        with pytest.raises(InvalidInputError, match="read-only"):
            hub.update(team.shared_id, {"importance": 0.1}, by="owner")


_READER = """
import json, sys
import numpy as np
from tiered_memory import TieredMemory, TieredMemoryError

vectors = np.array(json.loads(sys.argv[2]), dtype=np.float32)
sid = sys.argv[3]
mem = TieredMemory(sys.argv[1], encoder=None, dimension=32, read_only=True)
hub = mem.agents("acme")


def attempt(call):
    try:
        return call()
    except TieredMemoryError as err:
        return type(err).__name__


for line in sys.stdin:
    state = hub.state
    out = {}
    for name in ("reader", "editor"):
        agent = hub.agent(name)
        out[name] = {
            "recall": attempt(lambda: agent.recall(sid).id),
            "search": sorted({h.memory.id for v in vectors for h in agent.search(vector=v, k=5, scope="shared")}),
            "get": agent.get("q3"),
            "shared_ids": agent.shared_ids(),
        }
    out["grants"] = attempt(lambda: hub.info(sid).grants)
    out["reloaded"] = hub.state is not state
    print(json.dumps(out), flush=True)
mem.close()
"""


def test_a_read_only_process_follows_revokes_made_by_the_writer(team: Team, tmp_path: Path) -> None:
    """A reader's hub re-reads grants when the writer changes them, so a revoked
    agent stops reading the memory there too, including text written after the revoke."""
    hub, sid = team.hub, team.shared_id
    probes = [VECTORS[1], VECTORS[5]]  # the memory's vector before and after the update below
    with subprocess.Popen([sys.executable, "-c", _READER, str(tmp_path / "store"),
                           json.dumps([v.tolist() for v in probes]), sid],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT))) as child:
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None

        def ask() -> dict:
            child.stdin.write("check\n")
            child.stdin.flush()
            line = child.stdout.readline()
            assert line, child.stderr.read()
            return json.loads(line)

        before = ask()
        for name in ("reader", "editor"):
            assert before[name] == {"recall": sid, "search": [sid], "get": "Q3 revenue grew 12%", "shared_ids": [sid]}
        assert ask()["reloaded"] is False  # nothing changed: the reader keeps what it loaded

        hub.revoke(sid, ["reader"])
        hub.update(sid, {"text": "Q3 revenue grew 15% (restated)", "vector": VECTORS[5]}, by="owner")
        after = ask()
        assert after["reloaded"] is True
        assert after["reader"] == {"recall": "PermissionDenied", "search": [], "get": None, "shared_ids": []}
        assert "reader" not in after["grants"] and after["grants"]["editor"] == "read-write"
        assert after["editor"]["recall"] == sid and after["editor"]["search"] == [sid]
        assert after["editor"]["shared_ids"] == [sid]

        hub.delete(sid, by="owner")
        gone = ask()
        assert gone["editor"]["shared_ids"] == [] and gone["editor"]["get"] is None
        assert gone["editor"]["recall"] in ("PermissionDenied", "MemoryNotFoundError")
        assert gone["grants"] == "MemoryNotFoundError"
        child.stdin.close()
        assert child.wait(timeout=60) == 0, child.stderr.read()


def test_concurrent_updates_keep_versions_history_and_notifications_in_step(team: Team) -> None:
    hub, sid = team.hub, team.shared_id
    seen: list[int] = []
    hub.agent("reader").subscribe(lambda note: seen.append(note.seq))

    def work(name: str) -> None:
        for i in range(15):
            hub.update(sid, {"importance": i / 20}, by=name)
            hub.agent(name).put(f"{name}-{i}", i)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("owner", "editor")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    versions = [v.version for v in hub.history(sid)]
    assert versions == list(range(1, 32)) and team.mem.get(sid).version == 31
    assert seen == list(range(1, 32))  # every change, once, in order
    assert len(hub.agent("owner").keys()) == 16 and len(hub.agent("editor").keys()) == 15


def test_a_hub_does_not_keep_its_store_alive(tmp_path: Path) -> None:
    mem = TieredMemory(tmp_path / "s", encoder=None, dimension=32)
    mem.agents().register("analyst").put("k", "v")
    mem.close()
    alive = weakref.ref(mem)
    del mem
    gc.collect()
    assert alive() is None
