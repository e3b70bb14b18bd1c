"""Property test: whatever agents share, revoke, update, delete or restart, none ever sees beyond its grants."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from tiered_memory import MemoryNotFoundError, PermissionDenied, TieredMemory

from .conftest import DIM, unit_rows

VECTORS = unit_rows(64, seed=5)
AGENTS = ("ana", "bo", "cy", "rae")
agent_names = st.sampled_from(AGENTS)
ceilings = st.sampled_from(["read-write", "read-only", "none"])
targets = st.lists(agent_names, max_size=3, unique=True)
accesses = st.sampled_from(["read", "read-write"])
vector_indexes = st.integers(0, len(VECTORS) - 1)


class SharingMachine(RuleBasedStateMachine):
    """Random shares, grants, revokes, updates, deletes and restarts against a model of the grants."""

    shared = Bundle("shared")

    @initialize()
    def open_team(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="agents-prop-"))
        self.owner: dict[str, str] = {}
        self.grants: dict[str, dict[str, str]] = {}  # memory id -> agent -> granted access
        self.private: dict[str, set[str]] = {name: set() for name in AGENTS}
        self.ceiling = {name: "read-write" for name in AGENTS} | {"rae": "read-only"}
        self.mem = self._open()
        hub = self.mem.agents("u")
        for name in AGENTS:
            hub.register(name, shared_access=self.ceiling[name])
        # Another user's agent shares in its own hub on the same store: never visible to "u".
        other = self.mem.agents("v").register("ana")
        self.foreign = {other.remember("v private", vector=VECTORS[0]),
                        self.mem.agents("v").share(other, [], "v shared", vector=VECTORS[1])}

    def _open(self) -> TieredMemory:
        return TieredMemory(self.directory, encoder=None, dimension=DIM, durability="async")

    def teardown(self) -> None:
        if hasattr(self, "mem"):
            self.mem.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def hub(self):
        return self.mem.agents("u")

    def may(self, agent: str, memory_id: str) -> str | None:
        grant = self.grants.get(memory_id, {}).get(agent)
        if grant is None or self.ceiling[agent] == "none":
            return None
        return "read" if self.ceiling[agent] == "read-only" else grant

    def grantable(self, to: list[str], access: str) -> bool:
        ceilings = {self.ceiling[name] for name in to}
        return "none" not in ceilings and not (access == "read-write" and "read-only" in ceilings)

    # -- rules ---------------------------------------------------------------------------

    @rule(agent=agent_names, index=vector_indexes)
    def remember(self, agent: str, index: int) -> None:
        self.private[agent].add(self.hub.agent(agent).remember(f"{agent} note {index}", vector=VECTORS[index]))

    @rule(target=shared, owner=agent_names, to=targets, access=accesses, index=vector_indexes)
    def share_new(self, owner: str, to: list[str], access: str, index: int) -> str:
        refused = self.ceiling[owner] != "read-write" or not self.grantable([n for n in to if n != owner], access)
        try:
            memory_id = self.hub.share(owner, to, f"shared by {owner}", access=access, vector=VECTORS[index])
        except PermissionDenied:
            assert refused
            return "refused"
        assert not refused
        self.owner[memory_id] = owner
        self.grants[memory_id] = {name: access for name in to if name != owner} | {owner: "read-write"}
        return memory_id

    @rule(memory_id=shared, granter=agent_names, to=targets, access=accesses)
    def share_more(self, memory_id: str, granter: str, to: list[str], access: str) -> None:
        others = [n for n in to if n != granter]
        # a grantee (not the owner) never lowers an existing grant, the owner's included
        lowers = granter != self.owner.get(memory_id) and access == "read" and \
            any(self.grants.get(memory_id, {}).get(n) == "read-write" for n in others)
        allowed = self.may(granter, memory_id) == "read-write" and self.grantable(others, access) and not lowers
        try:
            self.hub.share(granter, to, memory_id=memory_id, access=access)
        except (PermissionDenied, MemoryNotFoundError):
            assert not allowed
            return
        assert allowed
        self.grants[memory_id].update({name: access for name in to if name != granter})

    @rule(memory_id=shared, by=agent_names, to=targets)
    def revoke(self, memory_id: str, by: str, to: list[str]) -> None:
        owner = self.owner.get(memory_id)
        to = [name for name in to if name != owner]
        try:
            self.hub.revoke(memory_id, to, by=by)
        except (PermissionDenied, MemoryNotFoundError):
            assert owner is None or by != owner or self.may(by, memory_id) is None
            return
        assert owner == by and self.may(by, memory_id)
        for name in to:
            self.grants[memory_id].pop(name, None)

    @rule(memory_id=shared, by=agent_names, index=vector_indexes)
    def update(self, memory_id: str, by: str, index: int) -> None:
        try:
            self.hub.update(memory_id, {"text": f"edited by {by}", "vector": VECTORS[index]}, by=by)
        except (PermissionDenied, MemoryNotFoundError):
            assert self.may(by, memory_id) != "read-write"
            return
        assert self.may(by, memory_id) == "read-write"

    @rule(memory_id=shared, by=agent_names)
    def delete(self, memory_id: str, by: str) -> None:
        try:
            self.hub.agent(by).forget(memory_id)
        except (PermissionDenied, MemoryNotFoundError):
            assert self.owner.get(memory_id) != by or self.may(by, memory_id) is None
            return
        assert self.owner.pop(memory_id) == by and self.may(by, memory_id)
        del self.grants[memory_id]

    @rule(agent=agent_names, ceiling=ceilings)
    def change_ceiling(self, agent: str, ceiling: str) -> None:
        self.hub.register(agent, shared_access=ceiling)  # takes effect on every grant at once
        self.ceiling[agent] = ceiling

    @rule()
    def restart(self) -> None:
        self.mem.close()
        self.mem = self._open()

    # -- what every agent sees -------------------------------------------------------------

    @invariant()
    def each_agent_sees_exactly_its_own_and_granted_memories(self) -> None:
        if not hasattr(self, "mem"):
            return
        for name in AGENTS:
            agent = self.hub.agent(name)
            visible = {mid for mid in self.grants if self.may(name, mid)}
            expected = self.private[name] | visible
            for query in (VECTORS[2], VECTORS[40]):
                found = {hit.memory.id for hit in agent.search(vector=query, k=200)}
                assert found == expected, (name, found ^ expected)
            assert set(agent.shared_ids()) == visible
            for memory_id in list(self.grants)[:4] + sorted(self.foreign):
                try:
                    agent.recall(memory_id)
                    assert memory_id in expected
                except (PermissionDenied, MemoryNotFoundError):
                    assert memory_id not in expected


SharingMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=20, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
test_sharing_never_shows_an_agent_more_than_its_grants = SharingMachine.TestCase
