"""`tiered-memory stats|namespaces|ls|get|search|export|import|verify` on real stores.

The commands run in-process through ``tiered_memory.cli.main(argv)`` (one test runs them as a
subprocess for the exit codes a shell sees). The store is built with the bundled model; the
round trip compares every field of every memory, the agent hub, the vectors and search results
(ids and scores) of the original and the copy; verify is run on clean and deliberately damaged
copies (entries deleted with the lmdb module, a graph file truncated).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lmdb
import pytest

from tiered_memory import TieredMemory
from tiered_memory.cli import main
from tiered_memory.tiers.cold import row_key

from .conftest import ROOT, FakeClock

pytestmark = pytest.mark.model

KEY = bytes(range(32))
DAY = 86_400.0
START = 1_700_000_000.0
SETTINGS: dict[str, Any] = {"exact_search_max": 16, "promote_in_background": False}  # graphs past 16 memories
# Content that is sealed at rest, and must never be in an export in clear unless decrypted.
SECRETS = ("PELICAN-7731", "8812-secret", "ZEBRA-ACCOUNTANT", "OSPREY-55")
USER_FACTS = [
    ("User prefers technical explanations with code examples", "preference", 0.8, {"confidence": 0.9}),
    ("User is allergic to peanuts and shellfish", "fact", 0.9, {"source": "intake", "tags": ["health", "food"]}),
    ("User lives in Lyon and works as a data engineer", "fact", 0.6, {"city": "Lyon", "since": 2019}),
    ("User's daughter starts school in September", "fact", 0.5, {"raw": b"\x00\x01binary", "n": {"deep": [1.5]}}),
    ("Discussed RAG for document analysis on March 15th", "conversation", 0.4, {"$unusual key": {"$bytes": "x"}}),
    ("User dislikes long meetings before noon", "preference", 0.3, {}),
    ("User drives an electric car and charges it at work", "fact", 0.4, {"confidence": -0.0}),
    ("User plays the cello in an amateur orchestra", "fact", 0.5, {"nan": float("nan"), "inf": float("inf")}),
]
ISSUES = ["cannot log in after the password reset", "the invoice shows the wrong VAT rate",
          "the mobile app crashes when uploading photos", "asks how to export reports as CSV",
          "the dashboard loads slowly in the morning", "wants to cancel the annual subscription"]
QUERIES = [("user_123", "Which foods must the user avoid?"), ("user_123", "What music does the user play?"),
           ("support", "customer cannot sign in"), ("support", "billing tax problem"),
           ("vault", "secret code"), ("user_123/shared", "How did revenue do?")]


def run(*argv: str | Path) -> int:
    return main([str(arg) for arg in argv])


def run_json(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Any:
    capsys.readouterr()
    assert run(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def key_file(directory: Path) -> Path:
    path = directory / "store.key"
    if not path.exists():
        path.write_text(KEY.hex() + "\n")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, minilm) -> dict[str, Any]:
    """A store with several namespaces, updates, deletes, uses, sealed memories and an agent hub."""
    root = tmp_path_factory.mktemp("inspect")
    path = root / "store"
    clock = FakeClock(START + 30 * DAY)
    with TieredMemory(path, encoder=minilm, encryption_key=KEY, clock=clock, **SETTINGS) as mem:
        ids = mem.add_many([text for text, *_ in USER_FACTS], namespace="user_123",
                           kind=[kind for _, kind, *_ in USER_FACTS], importance=[i for _, _, i, _ in USER_FACTS],
                           metadata=[meta for *_, meta in USER_FACTS],
                           created_at=[START + i * DAY for i in range(len(USER_FACTS))])
        secret = mem.add("The launch code is PELICAN-7731", namespace="user_123", sensitive=True,
                         metadata={"pin": "8812-secret"}, created_at=START + 20 * DAY)
        # Expiries travel with the copy, sealed or not (they are in the catalog row, in clear); far
        # enough ahead that the checks below, which open the store on the real clock, still see them.
        mem.add("Remind the user about the dentist next spring", namespace="user_123", ttl_s=40 * 365 * DAY)
        mem.add("The temporary door code is 4410", namespace="user_123", sensitive=True, ttl_s=30 * 365 * DAY)
        support = mem.add_many([f"Ticket {i}: the customer {ISSUES[i % len(ISSUES)]} (case {1000 + i})"
                                for i in range(40)], namespace="support", kind="conversation",
                               created_at=[START + i * 3600 for i in range(40)])
        mem.seal_namespace("vault")
        mem.add_many(["The vault combination is ZEBRA-ACCOUNTANT 41-7", "Backup codes are kept offline"],
                     namespace="vault")
        hub = mem.agents("user_123")
        analyst = hub.register("analyst", sealed=True)
        writer = hub.register("writer", shared_access="read-only")
        analyst.put("q3", {"rows": 1200, "note": "OSPREY-55"}, metadata={"source": "q3.csv"})
        analyst.remember("The churn model overfits on the March cohort")
        shared = hub.share(analyst, [writer], "Q3 revenue grew 12% over Q2", kind="finding", key="q3_revenue")
        hub.update(shared, {"text": "Q3 revenue grew 13% over Q2"}, by=analyst)
        mem.update(ids[2], importance=0.95, metadata={"city": "Lyon", "moved": True})
        mem.delete(ids[5])
        for memory_id in (ids[0], ids[0], ids[1], support[3], secret):
            clock.tick(60)
            mem.get(memory_id)
        mem.search("customer cannot log in", namespace="support", k=3)
        mem.maintain()  # statistics, topic models and the warm graphs reach the disk
    return {"root": root, "path": path, "ids": ids, "secret": secret, "support": support, "shared": shared,
            "key_file": key_file(root)}


def observed(path: Path, minilm, shared: str) -> dict[str, Any]:
    """Everything the public API shows of a store (opened read-only: looking changes nothing)."""
    with TieredMemory(path, encoder=minilm, encryption_key=KEY, read_only=True, **SETTINGS) as mem:
        names = mem.namespaces()
        seen: dict[str, Any] = {"namespaces": {name: (mem.count(name), mem.is_sealed(name)) for name in names}}
        seen["memories"] = {name: [m._asdict() for m in mem.list_memories(name, limit=10_000)] for name in names}
        ids = [m["id"] for memories in seen["memories"].values() for m in memories]
        seen["records"] = {i: (r.text, r.metadata, r.kind, r.namespace, r.version, r.sensitive)
                           for i in ids for r in [mem.record(i)]}
        seen["vectors"] = {i: mem.vector(i).tobytes() for i in ids}
        seen["tiers"] = {i: mem.tier_of(i) for i in ids}
        seen["extra"] = mem.extra(b"hub/").items()
        hub = mem.agents("user_123")
        seen["hub"] = (hub.agent("analyst").get("q3"), hub.agent("writer").get("q3_revenue"),
                       [asdict(version) for version in hub.history(shared)], asdict(hub.info(shared)),
                       [asdict(n) for n in hub.agent("writer").notifications()])
        seen["search"] = {(name, query, mode): [(h.memory.id, h.score, h.dense_score, h.lexical_score)
                                                for h in mem.search(query, namespace=name, k=5, mode=mode)]
                          for name, query in QUERIES for mode in ("hybrid", "dense", "lexical")}
    return seen


def disk_bytes(path: Path) -> dict[str, bytes]:
    """The store's files, except LMDB's lock file (its reader table changes with every reader)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


# -- export and import: an exact copy ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["sealed", "decrypted"])
def test_export_then_import_is_an_exact_copy(built, tmp_path: Path, minilm, how: str) -> None:
    export, copy = tmp_path / "export.jsonl", tmp_path / "copy"
    keys = ["--key-file", built["key_file"]]
    before = disk_bytes(built["path"])
    if how == "sealed":  # no key at all: sealed memories travel as stored, and open with the key later
        assert run("export", built["path"], "-o", export) == 0
        assert run("import", copy, export) == 0
    else:
        assert run("export", built["path"], *keys, "--decrypt", "-o", export) == 0
        assert run("import", copy, export, *keys) == 0
    assert disk_bytes(built["path"]) == before, "export changed the store it read"

    original, copied = observed(built["path"], minilm, built["shared"]), observed(copy, minilm, built["shared"])
    assert copied["namespaces"] == original["namespaces"]
    assert set(original["namespaces"]) == {"user_123", "support", "vault", "user_123/analyst", "user_123/shared"}
    for name, memories in original["memories"].items():
        # Every field, statistics and versions included (repr: a NaN in metadata equals itself there).
        assert repr(copied["memories"][name]) == repr(memories), name
    assert any(m["version"] > 1 for m in original["memories"]["user_123"])
    assert any(m["access_count"] == 2 for m in original["memories"]["user_123"])
    assert any(m["sensitive"] for m in original["memories"]["user_123"])
    for key in ("records", "vectors", "tiers", "extra", "hub"):
        assert repr(copied[key]) == repr(original[key]), key
    assert original["hub"][0] == {"rows": 1200, "note": "OSPREY-55"}
    assert copied["search"] == original["search"]  # ids and scores, every mode, graphs included
    assert original["search"][("support", "customer cannot sign in", "dense")]
    assert run("verify", copy, "--key-file", built["key_file"]) == 0


def test_a_sealed_export_without_the_key_holds_no_secret(built, tmp_path: Path, capsys) -> None:
    plain, keyed, opened = tmp_path / "plain.jsonl", tmp_path / "keyed.jsonl", tmp_path / "opened.jsonl"
    assert run("export", built["path"], "-o", plain) == 0
    assert run("export", built["path"], "--key-file", built["key_file"], "-o", keyed) == 0  # key, no --decrypt
    for path in (plain, keyed):
        data = path.read_bytes()
        assert [secret for secret in SECRETS if secret.encode() in data] == [], path.name
        assert b"allergic to peanuts" in data  # the grep can find plaintext: unsealed memories are in clear
        lines = [json.loads(line) for line in data.splitlines()]
        assert lines[0]["type"] == "header" and lines[0]["decrypted"] is False and lines[-1]["type"] == "end"
        sealed = [line for line in lines if line["type"] == "memory" and line["sensitive"]]
        assert sealed and all(line["record"] and line["text"] is None for line in sealed)
    assert run("export", built["path"], "--key-file", built["key_file"], "--decrypt", "-o", opened) == 0
    data = opened.read_bytes()
    assert b"PELICAN-7731" in data and b"8812-secret" in data and b"ZEBRA-ACCOUNTANT" in data
    assert opened.stat().st_mode & 0o077 == 0  # a decrypted export is readable by its owner only
    capsys.readouterr()
    assert run("import", tmp_path / "c", opened) == 5  # clear sealed memories: sealed again, with the key only
    assert "import it with the key" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_import_refuses_a_used_directory_and_a_file_cut_short(built, tmp_path: Path, capsys) -> None:
    export = tmp_path / "export.jsonl"
    assert run("export", built["path"], "-o", export) == 0
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert run("import", used, export) == 2
    assert "not empty" in capsys.readouterr().err and os.listdir(used) == ["notes.txt"]

    lines = export.read_text().splitlines(keepends=True)
    short = tmp_path / "short.jsonl"
    short.write_text("".join(lines[: len(lines) // 2]))
    assert run("import", tmp_path / "fresh", short) == 1
    assert "cut short" in capsys.readouterr().err
    altered = tmp_path / "altered.jsonl"
    altered.write_text("".join(lines[:5] + [lines[5].replace('"code":"', '"code":"AAAA')] + lines[6:]))
    assert run("import", tmp_path / "fresh", altered) == 1
    assert "line 6" in capsys.readouterr().err
    assert run("import", tmp_path / "fresh", used / "notes.txt") == 1
    assert "export header" in capsys.readouterr().err
    # Nothing half-built is left behind, and an empty directory is a valid target.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["altered.jsonl", "export.jsonl", "short.jsonl", "used"]
    (tmp_path / "empty").mkdir()
    assert run("import", tmp_path / "empty", export, "-q") == 0
    assert run("verify", tmp_path / "empty") == 0


# -- verify -------------------------------------------------------------------------------------------


def test_verify_finds_no_damage_in_a_clean_store_and_changes_nothing(built, capsys) -> None:
    before = disk_bytes(built["path"])
    report = run_json(capsys, "verify", built["path"], "--key-file", built["key_file"])
    assert report["ok"] and report["damage"] == []
    with TieredMemory(built["path"], encoder=None, encryption_key=KEY, read_only=True) as mem:
        assert report["checked"]["memories"] == len(mem) == report["checked"]["records"]
    assert report["checked"]["warm_graphs"] == 1  # support is past exact_search_max, the others are not
    assert report["checked"]["codes"] == report["checked"]["originals"] == report["checked"]["memories"]
    keyless = run_json(capsys, "verify", built["path"])
    assert keyless["ok"]
    assert disk_bytes(built["path"]) == before


def ns_id(env: lmdb.Environment, name: str) -> int:
    with env.begin(db=env.open_db(b"namespaces")) as txn:
        return int.from_bytes(txn.get(b"n" + name.encode()), "big")


def test_verify_reports_each_damage_and_exits_1(built, tmp_path: Path, capsys) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(built["path"], damaged)
    no_record, no_code, no_original = built["ids"][1], built["support"][7], built["support"][8]
    env = lmdb.open(str(damaged / "cold"), max_dbs=16)
    support = ns_id(env, "support")
    records, codes, originals = (env.open_db(name) for name in (b"records", b"nscodes", b"originals"))
    with env.begin(write=True) as txn:
        assert txn.delete(no_record.encode(), db=records)
        assert txn.delete(row_key(support, no_code), db=codes)
        assert txn.delete(no_original.encode(), db=originals)
    env.close()
    graphs = sorted((damaged / "warm").glob("*.hnsw"))
    assert graphs
    graphs[0].write_bytes(graphs[0].read_bytes()[:1000])  # truncated
    before = disk_bytes(damaged)

    capsys.readouterr()
    assert run("verify", damaged, "--key-file", built["key_file"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED, 4 problems" in out
    report = run_json_code(capsys, 1, "verify", damaged, "--key-file", built["key_file"])
    damage = report["damage"]
    assert len(damage) == 4 and not report["ok"]
    assert any(no_record in line and "no record" in line for line in damage)
    assert any(no_code in line and "no int8 code" in line for line in damage)
    assert any(no_original in line and "no float original" in line for line in damage)
    assert any(graphs[0].name in line and "truncated or altered" in line for line in damage)
    assert disk_bytes(damaged) == before  # verify wrote nothing
    # A command that meets the damage says so and points to verify.
    assert run("export", damaged, "-o", tmp_path / "e.jsonl") == 1
    assert "tiered-memory verify" in capsys.readouterr().err


def run_json_code(capsys: pytest.CaptureFixture[str], code: int, *argv: str | Path) -> Any:
    capsys.readouterr()
    assert run(*argv, "--json") == code
    return json.loads(capsys.readouterr().out)


def test_verify_catches_swapped_codes_and_a_wrong_count(built, tmp_path: Path, capsys) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(built["path"], damaged)
    first, second = built["support"][0], built["support"][1]
    env = lmdb.open(str(damaged / "cold"), max_dbs=16)
    support = ns_id(env, "support")
    codes, rows = env.open_db(b"nscodes"), env.open_db(b"rows")  # opened outside the write: it would wait
    with env.begin(write=True) as txn:
        a, b = txn.get(row_key(support, first), db=codes), txn.get(row_key(support, second), db=codes)
        txn.put(row_key(support, first), b, db=codes)
        txn.put(row_key(support, second), a, db=codes)
        txn.delete(row_key(support, built["support"][2]), db=rows)  # a row gone: the count is off
    env.close()
    report = run_json_code(capsys, 1, "verify", damaged)
    damage = report["damage"]
    assert sum("points elsewhere than its original" in line for line in damage) == 2
    assert any("'support': counts 40 memories but holds 39" in line for line in damage)
    assert any(built["support"][2] in line and "without its catalog row" in line for line in damage)


# -- the reading commands ---------------------------------------------------------------------------------


def test_namespaces_stats_ls_and_get(built, capsys) -> None:
    store, keys = built["path"], ["--key-file", built["key_file"]]
    rows = {row["namespace"]: row for row in run_json(capsys, "namespaces", store)}  # no key needed
    assert rows["support"]["memories"] == 40 and not rows["support"]["sealed"]
    assert rows["vault"]["sealed"] and rows["vault"]["sealed_memories"] == 2
    assert rows["user_123"]["sealed_memories"] == 2 and rows["user_123"]["memories"] == len(USER_FACTS) + 2
    capsys.readouterr()
    assert run("namespaces", store) == 0
    assert "vault" in capsys.readouterr().out

    stats = run_json(capsys, "stats", store, *keys, "--load")
    assert stats["memories"] == sum(row["memories"] for row in rows.values())
    assert stats["namespaces"] == len(rows) and stats["cold"]["count"] == stats["memories"]
    assert stats["loaded"]["loaded"] == len(rows)

    with TieredMemory(store, encoder=None, encryption_key=KEY, read_only=True) as mem:
        expected = mem.list_memories("user_123", limit=3, offset=2)
        period = mem.list_memories("user_123", since=START + 2 * DAY, until=START + 4 * DAY)
    page = run_json(capsys, "ls", store, *keys, "-n", "user_123", "--limit", "3", "--offset", "2")
    assert [m["id"] for m in page["memories"]] == [m.id for m in expected]
    assert page["memories"][0]["access_count"] == expected[0].access_count and page["total"] == len(USER_FACTS) + 2
    listed = run_json(capsys, "ls", store, *keys, "-n", "user_123", "--since", "2023-11-16",
                      "--until", str(START + 4 * DAY))
    assert [m["id"] for m in listed["memories"]] == [m.id for m in period] and len(period) == 3
    capsys.readouterr()
    assert run("ls", store, *keys, "-n", "support", "--limit", "5", "--width", "20") == 0
    out = capsys.readouterr().out
    assert "next page: --offset 5" in out and "Ticket 0: the custo…" in out

    one = run_json(capsys, "get", store, built["ids"][0])
    assert one["text"] == USER_FACTS[0][0] and one["access_count"] == 2 and one["dedup"] is True
    assert one["metadata"] == {"confidence": 0.9} and "code" not in one
    sealed = run_json(capsys, "get", store, built["secret"])  # without the key: clear fields only
    assert sealed["sensitive"] and sealed["text"] is None and sealed["access_count"] == 1
    opened = run_json(capsys, "get", store, built["secret"], *keys, "--vectors")
    assert opened["text"] == "The launch code is PELICAN-7731" and len(opened["code"]) > 0
    capsys.readouterr()
    assert run("get", store, built["ids"][3]) == 0
    assert "b'\\x00\\x01binary'" in capsys.readouterr().out  # metadata shown as Python shows it


def test_search_embeds_the_query_with_the_bundled_model(built, capsys, minilm) -> None:
    store, keys = built["path"], ["--key-file", built["key_file"]]
    hits = run_json(capsys, "search", store, "Which foods must the user avoid?", *keys, "-n", "user_123", "-k", "3")
    assert hits[0]["memory"]["text"] == "User is allergic to peanuts and shellfish"
    with TieredMemory(store, encoder=minilm, encryption_key=KEY, read_only=True, **SETTINGS) as mem:
        expected = mem.search("Which foods must the user avoid?", namespace="user_123", k=3)
    # The CLI runs the default ONNX export of the same weights: the same ranking, scores within 1e-4.
    assert [hit["memory"]["id"] for hit in hits] == [hit.memory.id for hit in expected]
    assert all(abs(hit["score"] - want.score) < 1e-4 for hit, want in zip(hits, expected))
    everywhere = run_json(capsys, "search", store, "billing tax problem", *keys, "--mode", "dense", "-k", "2")
    assert everywhere[0]["memory"]["namespace"] == "support" and "VAT" in everywhere[0]["memory"]["text"]
    lexical = run_json(capsys, "search", store, "cello orchestra", *keys, "--mode", "lexical", "--kind", "fact")
    assert lexical[0]["memory"]["id"] == built["ids"][7] and lexical[0]["score"] == lexical[0]["lexical_score"]
    capsys.readouterr()
    assert run("search", store, "customer cannot sign in", *keys, "-n", "support", "-k", "2") == 0
    assert "Ticket" in capsys.readouterr().out


# -- usage, keys, exit codes ---------------------------------------------------------------------------------


def test_bad_usage_and_missing_things_are_explained(built, tmp_path: Path, capsys) -> None:
    store = built["path"]
    capsys.readouterr()
    assert run("ls", store, "--key-file", built["key_file"]) == 2
    err = capsys.readouterr().err
    assert "choose one with -n/--namespace" in err and "'support'" in err
    assert run("ls", store) == 5
    assert "--key-file PATH or --key-env NAME" in capsys.readouterr().err
    assert run("export", store, "--decrypt", "-o", tmp_path / "x.jsonl") == 2
    assert "--decrypt" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    assert run("get", store, built["secret"], "--key-file", bad_key) == 2
    assert "16, 24 or 32 bytes" in capsys.readouterr().err
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    assert run("verify", store, "--key-file", wrong) == 5
    assert "wrong encryption key" in capsys.readouterr().err
    assert run("ls", store, "--key-file", built["key_file"], "-n", "support", "--since", "last tuesday") == 2
    assert "neither an ISO date/time nor epoch seconds" in capsys.readouterr().err
    assert run("ls", store, "--key-file", built["key_file"], "-n", "nobody") == 4
    assert "no namespace 'nobody'" in capsys.readouterr().err
    assert run("get", store, "0" * 32) == 4
    os.environ["INSPECT_TEST_KEY"] = KEY.hex()
    try:
        assert run("get", store, built["secret"], "--key-env", "INSPECT_TEST_KEY") == 0
    finally:
        del os.environ["INSPECT_TEST_KEY"]
    assert run("get", store, built["secret"], "--key-env", "INSPECT_TEST_KEY") == 2
    assert "is not set" in capsys.readouterr().err
    for argv in (["ls", store, "--limit", "0"], ["get"], ["verify", store, "--key-file", "a", "--key-env", "B"],
                 ["search", store, "q", "--mode", "fuzzy"]):
        with pytest.raises(SystemExit) as stopped:
            run(*argv)
        assert stopped.value.code == 2
    assert "--limit: must be at least 1, got 0" in capsys.readouterr().err
    missing = tmp_path / "no_store_here"
    for command in (["stats"], ["namespaces"], ["verify"], ["export"]):
        assert run(command[0], missing) == 4
    assert "does not exist" in capsys.readouterr().err and not missing.exists()  # nothing was created
    (tmp_path / "plain_dir").mkdir()
    assert run("ls", tmp_path / "plain_dir") == 4
    assert "is not a tiered_memory store" in capsys.readouterr().err
    assert list((tmp_path / "plain_dir").iterdir()) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal_and_not_with_quiet(built, tmp_path: Path, capsys, monkeypatch) -> None:
    capsys.readouterr()
    assert run("export", built["path"], "-o", tmp_path / "e.jsonl") == 0
    assert run("verify", built["path"]) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run("export", built["path"], "-o", tmp_path / "e.jsonl") == 0
    assert run("verify", built["path"]) == 0
    assert "exporting:" in terminal.getvalue() and "verifying:" in terminal.getvalue()
    assert " memories/s" in terminal.getvalue()
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert run("export", built["path"], "-o", tmp_path / "e.jsonl", "--quiet") == 0
    assert run("verify", built["path"], "-q") == 0
    assert quiet.getvalue() == ""


def test_export_to_standard_output_and_import_from_standard_input(built, tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    capsys.readouterr()
    assert run("export", built["path"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith('{"type":"header"') and captured.out.endswith("}\n")
    assert "exported" in captured.err  # the summary goes beside the export, not into it
    monkeypatch.setattr(sys, "stdin", io.StringIO(captured.out))
    summary = run_json(capsys, "import", tmp_path / "copy", "-")
    assert summary["memories"] == sum(1 for line in captured.out.splitlines() if '"type":"memory"' in line)
    assert run("verify", tmp_path / "copy", "--key-file", built["key_file"]) == 0


def test_exit_codes_seen_from_a_shell(built, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

    def shell(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tiered_memory.cli", *map(str, argv)], env=env,
                              capture_output=True, text=True, timeout=300)

    damaged = tmp_path / "damaged"
    shutil.copytree(built["path"], damaged)
    graph = sorted((damaged / "warm").glob("*.hnsw"))[0]
    graph.write_bytes(graph.read_bytes()[:100])
    result = shell("verify", damaged)
    assert result.returncode == 1 and "truncated or altered" in result.stdout
    assert shell("ls", damaged, "--limit", "0").returncode == 2
    result = shell("stats", tmp_path / "nowhere")
    assert result.returncode == 4 and "does not exist" in result.stderr and not (tmp_path / "nowhere").exists()
    assert shell("ls", damaged, "-n", "support").returncode == 5
    with TieredMemory(damaged, encoder=None, encryption_key=KEY):  # a writer holds the store
        result = shell("export", damaged, "-o", tmp_path / "e.jsonl")
    assert result.returncode == 3 and "open for writing in process" in result.stderr
    digest = hashlib.sha256(b"".join(disk_bytes(damaged).values())).hexdigest()
    assert shell("verify", damaged).returncode == 1  # unchanged by the failed export: still damaged
    assert hashlib.sha256(b"".join(disk_bytes(damaged).values())).hexdigest() == digest
