"""Agents with encryption at rest: no plaintext of a sensitive memory, entry or version reaches the disk."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from tiered_memory import DecryptionError, EncryptionRequiredError, TieredMemory

from .conftest import DIM, unit_rows

KEY = bytes(range(32))
VECTORS = unit_rows(8, seed=21)
SECRETS = (
    "078-05-1120", "Zebediah Quincy", "client_ssn",  # a sealed agent's entry: value, metadata, key
    "arrhythmia", "cardiology-ward-7",  # a sealed agent's memory
    "PELICAN", "OSPREY-NEST", "OSPREY-ROOST", "merger-date",  # a sensitive shared memory: versions, key
)


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def leaked(directory: Path, secrets: tuple[str, ...]) -> list[str]:
    """The secrets whose bytes appear in any file under directory."""
    data = all_bytes(directory)
    return [secret for secret in secrets if secret.encode() in data]


@pytest.mark.model
def test_sealed_agent_and_sensitive_shared_memory_leave_no_plaintext(tmp_path: Path, minilm) -> None:
    path = tmp_path / "s"
    with TieredMemory(path, encoder=minilm, encryption_key=KEY) as mem:
        hub = mem.agents("acme")
        vault = hub.register("vault", sealed=True)
        analyst, writer = hub.register("analyst"), hub.register("writer", shared_access="read-only")
        vault.put("client_ssn", "SSN 078-05-1120", metadata={"holder": "Zebediah Quincy"})
        diagnosis = vault.remember("The patient was diagnosed with an arrhythmia",
                                   metadata={"ward": "cardiology-ward-7"})
        analyst.remember("Public note: the office moves to the third floor")
        merger = hub.share(analyst, [writer], "The merger with PELICAN closes in May", key="merger-date",
                           metadata={"codename": "OSPREY-NEST"}, sensitive=True)
        hub.update(merger, {"text": "The merger with PELICAN closes in June",
                            "metadata": {"codename": "OSPREY-ROOST"}}, by=analyst)
        assert writer.get("merger-date") == "The merger with PELICAN closes in June"
        mem.maintain()  # persists statistics and the (sealed) warm graphs
    assert leaked(path, SECRETS) == []
    assert leaked(path, ("Public note",)) == ["Public note"]  # the scan finds what is stored unsealed

    with TieredMemory(path, encoder=minilm, encryption_key=KEY) as mem:
        hub = mem.agents("acme")
        vault, writer = hub.agent("vault"), hub.agent("writer")
        assert vault.entry("client_ssn").metadata == {"holder": "Zebediah Quincy"}
        assert [v.metadata["codename"] for v in hub.history(merger)] == ["OSPREY-NEST", "OSPREY-ROOST"]
        assert writer.search("When does the acquisition close?", k=1)[0].memory.id == merger
        assert vault.search("heart condition", k=1)[0].memory.id == diagnosis
        assert [n.event for n in writer.notifications()] == ["shared", "updated"]


def test_entries_once_sensitive_stay_sealed(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with TieredMemory(path, encoder=None, dimension=DIM, encryption_key=KEY) as mem:
        agent = mem.agents().register("analyst")
        agent.put("token", "tok-FIRST-secret", sensitive=True)
        agent.put("token", "tok-SECOND-secret")  # no flag: still sealed
        agent.put("plain", "visible-value")
        agent.remember("private but sensitive: ORCA-42", vector=VECTORS[0], sensitive=True)
        assert agent.get("token") == "tok-SECOND-secret" and agent.entry("token").sensitive
    assert leaked(path, ("tok-FIRST", "tok-SECOND", "ORCA-42", "visible-value")) == ["visible-value"]


def test_a_missing_or_wrong_key_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with TieredMemory(path, encoder=None, dimension=DIM, encryption_key=KEY) as mem:
        mem.agents().register("vault", sealed=True).put("pin", "4471")  # the only sealed data: a hub entry
    with TieredMemory(path, encoder=None, dimension=DIM) as mem:
        with pytest.raises(EncryptionRequiredError, match="encryption_key"):
            mem.agents()
    with pytest.raises(DecryptionError, match="wrong encryption key"):
        TieredMemory(path, encoder=None, dimension=DIM, encryption_key=os.urandom(32))


def test_a_sealed_record_moved_to_another_key_fails_to_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with TieredMemory(path, encoder=None, dimension=DIM, encryption_key=KEY) as mem:
        vault = mem.agents().register("vault", sealed=True)
        vault.put("a", "alpha")
        vault.put("b", "beta")
        entries = list(mem.cold.extra_items(b"hub/default/k/vault/"))
        assert all(msgpack.unpackb(value)[0] for _, value in entries)  # both sealed
        with mem.cold.env.begin(write=True, db=mem.cold.dbs["extra"]) as txn:
            txn.put(entries[1][0], entries[0][1])  # entry b now holds a's sealed bytes
    with TieredMemory(path, encoder=None, dimension=DIM, encryption_key=KEY) as mem:
        with pytest.raises(DecryptionError, match="altered"):
            mem.agents()


def test_sealing_needs_a_key_and_changes_nothing_without_one(tmp_path: Path) -> None:
    with TieredMemory(tmp_path / "s", encoder=None, dimension=DIM) as mem:
        hub = mem.agents()
        with pytest.raises(EncryptionRequiredError):
            hub.register("vault", sealed=True)
        assert hub.agent_names() == []
        analyst = hub.register("analyst")
        before = mem.cold.meta_get("generation")
        with pytest.raises(EncryptionRequiredError):
            hub.share(analyst, [], "secret", vector=VECTORS[1], sensitive=True)
        with pytest.raises(EncryptionRequiredError):
            analyst.put("k", "v", sensitive=True)
        assert mem.cold.meta_get("generation") == before and len(mem) == 0


def test_a_sealed_shared_namespace_seals_every_shared_memory(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with TieredMemory(path, encoder=None, dimension=DIM, encryption_key=KEY) as mem:
        hub = mem.agents("acme", seal_shared=True)
        analyst, writer = hub.register("analyst"), hub.register("writer")
        memory_id = hub.share(analyst, [writer], "shared secret HERON-9", metadata={"tag": "KESTREL"},
                              vector=VECTORS[2])
        hub.update(memory_id, {"text": "shared secret HERON-10", "vector": VECTORS[3]}, by=analyst)
        assert hub.info(memory_id).sensitive and writer.recall(memory_id).text == "shared secret HERON-10"
        mem.maintain()
    assert leaked(path, ("HERON", "KESTREL")) == []


def test_an_unsealed_grant_of_a_sealed_memory_written_without_the_key_is_ignored(tmp_path: Path) -> None:
    """Grants decide who reads a memory: a sensitive memory's grants are sealed, so someone who can
    write the files but has no key cannot grant an agent of his a sealed memory (issue 11.5)."""
    path = tmp_path / "s"
    with TieredMemory(path, encoder=None, dimension=DIM, encryption_key=KEY) as mem:
        hub = mem.agents()
        owner, friend = hub.register("owner"), hub.register("friend")
        intruder = hub.register("intruder")
        secret = hub.share(owner, [friend], "the vault code", vector=VECTORS[2], sensitive=True)
        grants = dict(mem.cold.extra_items(f"hub/default/g/{secret}/".encode()))
        assert grants and all(msgpack.unpackb(value)[0] for value in grants.values())  # sealed
        forged_key = f"hub/default/g/{secret}/intruder".encode()
        forged = msgpack.packb([False, msgpack.packb("read")])  # what an attacker without the key can write
        with mem.cold.env.begin(write=True, db=mem.cold.dbs["extra"]) as txn:
            txn.put(forged_key, forged)
        del intruder
    with TieredMemory(path, encoder=None, dimension=DIM, encryption_key=KEY) as mem:
        hub = mem.agents()
        assert hub.agent("friend").recall(secret).text == "the vault code"
        with pytest.raises(Exception, match="not|denied|refused"):
            hub.agent("intruder").recall(secret)
        assert hub.agent("intruder").search(vector=VECTORS[2], k=5) == []
