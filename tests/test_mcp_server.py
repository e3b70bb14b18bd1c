"""The MCP server, driven by the SDK's own clients: `tiered-memory mcp` spawned over stdio (and once
over streamable HTTP), its answers checked against the store as another process reads it."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mcp", reason="the MCP SDK is in the mcp and dev extras: pip install -e '.[dev]'")

from anyio.from_thread import start_blocking_portal  # noqa: E402
from mcp import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from tiered_memory import MemoryNotFoundError, TieredMemory, count_tokens  # noqa: E402
from tiered_memory.cli import main  # noqa: E402
from tiered_memory.integrations.mcp_server import ToolLimits  # noqa: E402

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parent.parent
ALL_TOOLS = {"add_memory", "search_memories", "get_memory", "update_memory", "delete_memory", "list_memories"}
READ_TOOLS = {"search_memories", "get_memory", "list_memories"}
LIMITS = ToolLimits()
LONG_TEXT = " ".join(f"Step {i}: the deployment checklist item number {i} was verified by the release team."
                     for i in range(200))  # about 3,600 tokens: over the default budget of 2,000
U1 = {
    "peanuts": ("The user is allergic to peanuts and avoids satay sauce", "preference", {"source": "intake"}),
    "daughter": ("The user's daughter is called Maya and plays the cello", "fact", {}),
    "falcon": ("Project Falcon launches on March 3rd in Lisbon", "event", {"project": "falcon"}),
    "long": (LONG_TEXT, "document", {"pages": 12}),
}
U2 = {
    "vault": ("The vault code of the second tenant is 4417", "fact", {"secret": True}),
    "cat": ("The second tenant's cat is called Biscuit", "fact", {}),
}


def server_env() -> dict[str, str]:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for key, value in os.environ.items():  # the model cache the test process uses, wherever it is
        if key.startswith("TIERED_MEMORY_") or key in ("XDG_CACHE_HOME", "HF_HOME"):
            env[key] = value
    return env


def server_command(path: Path, *options: str) -> list[str]:
    return ["-m", "tiered_memory.cli", "mcp", "--path", str(path), *options]


class Client:
    """Synchronous calls into an SDK ClientSession that runs in a blocking portal's event loop."""

    def __init__(self, portal: Any, session: ClientSession) -> None:
        self.portal, self.session = portal, session

    def tools(self) -> dict[str, Any]:
        return {tool.name: tool for tool in self.portal.call(self.session.list_tools).tools}

    def call(self, name: str, arguments: dict[str, Any]) -> Any:
        return self.portal.call(self.session.call_tool, name, arguments)

    def ok(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = self.call(name, arguments)
        assert not result.is_error, result.content[0].text
        assert json.loads(result.content[0].text) == result.structured_content  # the text block says the same
        return result.structured_content

    def error(self, name: str, arguments: dict[str, Any]) -> str:
        result = self.call(name, arguments)
        assert result.is_error, f"{name}({arguments!r:.200}) should have failed: {result.structured_content!r:.300}"
        return result.content[0].text


@asynccontextmanager
async def stdio_session(path: Path, *options: str):
    params = StdioServerParameters(command=sys.executable, args=server_command(path, *options), env=server_env())
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=120) as session:
            await session.initialize()
            yield session


@asynccontextmanager
async def http_session(url: str):
    async with streamable_http_client(url) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=120) as session:
            await session.initialize()
            yield session


@contextmanager
def connected(session_factory: Any, *args: Any) -> Iterator[Client]:
    with start_blocking_portal() as portal:
        with portal.wrap_async_context_manager(session_factory(*args)) as session:
            yield Client(portal, session)


@contextmanager
def reader(path: Path) -> Iterator[TieredMemory]:
    """The store as another process sees it while the server runs (read-only, no model)."""
    with TieredMemory(path, read_only=True, encoder=None) as mem:
        yield mem


def fill(path: Path, namespace: str, memories: dict[str, tuple[str, str, dict]]) -> dict[str, str]:
    with TieredMemory(path) as mem:
        return {key: mem.add(text, namespace=namespace, kind=kind, metadata=meta)
                for key, (text, kind, meta) in memories.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A store holding u1's and u2's memories, written directly before any server starts."""
    path = tmp_path_factory.mktemp("mcp") / "store"
    return path, fill(path, "u1", U1), fill(path, "u2", U2)


@pytest.fixture(scope="module")
def server(store: tuple[Path, dict, dict]) -> Iterator[Client]:
    """One writable server scoped to u1 for the module."""
    with connected(stdio_session, store[0], "--namespace", "u1") as client:
        yield client


def snapshot(path: Path) -> dict[str, Any]:
    with reader(path) as mem:
        return {ns: sorted((m.id, m.text, m.kind, m.metadata, m.importance, m.version)
                           for m in mem.list_memories(ns, limit=1000)) for ns in ("u1", "u2")}


def test_tools_are_listed_with_typed_bounded_schemas(server: Client) -> None:
    tools = server.tools()
    assert set(tools) == ALL_TOOLS
    for tool in tools.values():
        schema = tool.input_schema
        assert tool.description and schema["type"] == "object" and schema["additionalProperties"] is False
        assert "namespace" not in schema["properties"]  # one namespace configured: the client picks none
        for name, prop in schema["properties"].items():
            assert prop.get("description") and prop.get("type"), (tool.name, name)
    assert tools["add_memory"].input_schema["properties"]["text"]["maxLength"] == LIMITS.max_text_chars
    assert tools["add_memory"].input_schema["required"] == ["text"]
    k = tools["search_memories"].input_schema["properties"]["k"]
    assert (k["type"], k["minimum"], k["maximum"]) == ("integer", 1, LIMITS.max_k)
    assert tools["list_memories"].input_schema["properties"]["limit"]["maximum"] == LIMITS.max_page
    assert tools["get_memory"].input_schema["properties"]["max_tokens"]["maximum"] == LIMITS.max_result_tokens
    assert all(tools[name].annotations.read_only_hint for name in READ_TOOLS)
    assert tools["delete_memory"].annotations.destructive_hint and not tools["add_memory"].annotations.read_only_hint


def test_add_get_update_delete_reach_the_store(server: Client, store: tuple[Path, dict, dict]) -> None:
    path = store[0]
    added = server.ok("add_memory", {"text": "The user's favourite editor is Helix", "kind": "preference",
                                     "metadata": {"confidence": 0.9}, "importance": 0.8})
    assert added["namespace"] == "u1" and added["duplicate"] is False
    memory_id = added["id"]
    with reader(path) as mem:
        stored = mem.get(memory_id)
    assert (stored.namespace, stored.text, stored.kind, stored.metadata, stored.importance) == \
        ("u1", "The user's favourite editor is Helix", "preference", {"confidence": 0.9}, 0.8)

    got = server.ok("get_memory", {"id": memory_id})
    assert (got["id"], got["text"], got["kind"], got["metadata"], got["version"]) == \
        (memory_id, stored.text, "preference", {"confidence": 0.9}, 1)
    assert "text_truncated" not in got

    again = server.ok("add_memory", {"text": "the user's favourite  editor is helix"})  # case and spaces folded
    assert (again["id"], again["duplicate"]) == (memory_id, True)

    updated = server.ok("update_memory", {"id": memory_id, "text": "The user's favourite editor is Zed",
                                          "metadata": {"confidence": 0.6}})
    assert (updated["text"], updated["metadata"], updated["version"]) == \
        ("The user's favourite editor is Zed", {"confidence": 0.6}, 2)
    with reader(path) as mem:
        stored = mem.get(memory_id)
    assert (stored.text, stored.metadata, stored.version, stored.kind) == \
        ("The user's favourite editor is Zed", {"confidence": 0.6}, 2, "preference")
    assert server.ok("search_memories", {"query": "which code editor does the user like?", "k": 1}
                     )["results"][0]["id"] == memory_id

    assert server.ok("delete_memory", {"id": memory_id}) == {"deleted": memory_id}
    with reader(path) as mem, pytest.raises(MemoryNotFoundError):
        mem.get(memory_id)
    assert memory_id in server.error("get_memory", {"id": memory_id})


def test_search_ranks_by_meaning_and_filters(server: Client, store: tuple[Path, dict, dict]) -> None:
    u1 = store[1]
    results = server.ok("search_memories", {"query": "what foods must the user stay away from?"})["results"]
    assert results[0]["id"] == u1["peanuts"]
    assert all(r["namespace"] == "u1" and {"score", "similarity", "tier"} <= set(r) for r in results)
    assert len(results) <= 5  # the default k

    falcon = server.ok("search_memories", {"query": "launch", "where": {"project": "falcon"}})["results"]
    assert [r["id"] for r in falcon] == [u1["falcon"]]
    kinds = server.ok("search_memories", {"query": "family", "kinds": ["fact"], "k": 10})["results"]
    assert kinds and all(r["kind"] == "fact" for r in kinds)
    lexical = server.ok("search_memories", {"query": "Maya cello", "mode": "lexical", "k": 1})["results"]
    assert lexical[0]["id"] == u1["daughter"]
    assert server.ok("search_memories", {"query": "peanuts", "until": "2000-01-01"})["results"] == []


def test_scope_is_the_servers_namespace_only(server: Client, store: tuple[Path, dict, dict]) -> None:
    """u2's memories were in the store before the u1 server started; it never shows or touches them."""
    path, _, u2 = store
    before = snapshot(path)
    for text, _, _ in U2.values():
        for mode in ("hybrid", "dense", "lexical"):
            found = server.ok("search_memories", {"query": text, "k": LIMITS.max_k, "mode": mode})["results"]
            assert all(r["namespace"] == "u1" and r["id"] not in u2.values() for r in found)
            assert not any("4417" in r["text"] for r in found)
    listed = server.ok("list_memories", {"limit": LIMITS.max_page, "max_tokens": LIMITS.max_result_tokens})
    assert listed["total"] == len(before["u1"])
    assert not {m["id"] for m in listed["memories"]} & set(u2.values())
    for memory_id in u2.values():
        assert "no memory" in server.error("get_memory", {"id": memory_id})
        assert "no memory" in server.error("update_memory", {"id": memory_id, "text": "overwritten"})
        assert "no memory" in server.error("delete_memory", {"id": memory_id})
    assert "namespace" in server.error("search_memories", {"query": "vault code", "namespace": "u2"})
    assert "namespace" in server.error("add_memory", {"text": "planted", "namespace": "u2"})
    assert "namespace" in server.error("list_memories", {"namespace": "u2"})
    assert snapshot(path) == before


def test_list_pages_through_the_namespace(server: Client, store: tuple[Path, dict, dict]) -> None:
    path = store[0]
    with reader(path) as mem:
        expected = [m.id for m in mem.list_memories("u1", limit=1000, newest_first=True)]
    pages, offset, truncated = [], 0, 0
    while offset is not None:
        page = server.ok("list_memories", {"offset": offset, "limit": 2})
        assert page["total"] == len(expected) and len(page["memories"]) <= 2
        pages += [m["id"] for m in page["memories"]]
        truncated += sum(1 for m in page["memories"] if m.get("text_truncated"))
        offset = page["next_offset"]
    assert pages == expected
    assert truncated == 1  # the long memory, over the default token budget, comes cut but comes
    oldest = server.ok("list_memories", {"limit": 1, "newest_first": False})
    assert oldest["memories"][0]["id"] == expected[-1] and oldest["next_offset"] == 1


def test_returned_text_stays_within_the_token_budget(server: Client, store: tuple[Path, dict, dict]) -> None:
    long_id = store[1]["long"]
    pieces, offset = [], 0
    while True:
        part = server.ok("get_memory", {"id": long_id, "max_tokens": 300, "text_offset": offset})
        assert count_tokens(part["text"]) <= 300 + 1  # a word split at the cut may tokenize one longer
        assert part["text_chars"] == len(LONG_TEXT) and part["metadata"] == {"pages": 12}
        pieces.append(part["text"])
        if not part.get("text_truncated"):
            break
        offset = part["next_text_offset"]
    assert "".join(pieces) == LONG_TEXT and len(pieces) >= 10

    hits = server.ok("search_memories", {"query": "deployment checklist verified", "k": 4, "max_tokens": 60})
    first = hits["results"][0]
    assert first["id"] == long_id and first["text_truncated"] and LONG_TEXT.startswith(first["text"])
    assert count_tokens(first["text"]) <= 61
    assert len(hits["results"]) == 1 and hits["omitted"] == 3  # the budget is spent: the rest say so


def nested(depth: int) -> Any:
    return [nested(depth - 1)] if depth else 1


BAD_CALLS = [
    ("get_memory", {"id": "f" * 32}, "no memory"),
    ("get_memory", {}, "'id' is a required property"),
    ("get_memory", {"id": 42}, "not of type 'string'"),
    ("add_memory", {"text": ""}, "text:"),
    ("add_memory", {"text": "   "}, "EmptyTextError"),
    ("add_memory", {"text": "x" * (LIMITS.max_text_chars + 1)}, "more than the limit"),
    ("add_memory", {"text": ["a", "list"]}, "not of type 'string'"),
    ("add_memory", {"text": "fine", "importance": 2}, "importance"),
    ("add_memory", {"text": "fine", "metadata": "not an object"}, "metadata"),
    ("add_memory", {"text": "fine", "metadata": {"deep": nested(20)}}, "MetadataError"),
    ("search_memories", {"query": "x", "k": 0}, "k:"),
    ("search_memories", {"query": "x", "k": LIMITS.max_k + 1}, "k:"),
    ("search_memories", {"query": "x", "k": "five"}, "k:"),
    ("search_memories", {"query": "x", "k": True}, "k:"),
    ("search_memories", {"query": "x", "where": {"$bogus": 1}}, "InvalidFilterError"),
    ("search_memories", {"query": "x", "since": "last tuesday"}, "ISO 8601"),
    ("search_memories", {"query": "x", "bogus": 1}, "bogus"),
    ("search_memories", {}, "'query' is a required property"),
    ("update_memory", {"id": "PLACEHOLDER"}, "at least one"),
    ("update_memory", {"id": "PLACEHOLDER", "importance": -1}, "importance"),
    ("update_memory", {"id": "PLACEHOLDER", "text": ""}, "text:"),
    ("get_memory", {"id": "PLACEHOLDER", "text_offset": 10**9}, "past the end"),
    ("list_memories", {"limit": 1000}, "limit:"),
    ("list_memories", {"offset": -1}, "offset:"),
    ("drop_everything", {}, "unknown tool"),
]


def test_bad_arguments_are_tool_errors_and_change_nothing(server: Client, store: tuple[Path, dict, dict]) -> None:
    path, u1, _ = store
    before = snapshot(path)
    for name, arguments, expected in BAD_CALLS:
        arguments = {key: u1["falcon"] if value == "PLACEHOLDER" else value for key, value in arguments.items()}
        message = server.error(name, arguments)
        assert expected.lower() in message.lower(), (name, message)
        assert len(message) < 1_000  # a 20k-character argument is not echoed back
    assert snapshot(path) == before
    assert server.ok("get_memory", {"id": u1["falcon"]})["version"] == 1  # and the server is still serving


def test_read_only_server_refuses_writes_and_offers_its_namespaces(store: tuple[Path, dict, dict]) -> None:
    path, u1, u2 = store
    before = snapshot(path)
    with connected(stdio_session, path, "--namespace", "u1", "u2", "--read-only") as client:
        tools = client.tools()
        assert set(tools) == READ_TOOLS
        for name in ("search_memories", "list_memories"):
            assert tools[name].input_schema["properties"]["namespace"]["enum"] == ["u1", "u2"]
        for name, arguments in [("add_memory", {"text": "new"}), ("update_memory", {"id": u1["falcon"], "kind": "x"}),
                                ("delete_memory", {"id": u2["cat"]})]:
            assert "read-only" in client.error(name, arguments)
        assert client.ok("get_memory", {"id": u2["cat"]})["namespace"] == "u2"  # in this server's scope
        only_u2 = client.ok("search_memories", {"query": "pet cat name", "namespace": "u2"})["results"]
        assert only_u2[0]["id"] == u2["cat"] and {r["namespace"] for r in only_u2} == {"u2"}
        both = client.ok("search_memories", {"query": "The user is allergic to peanuts; the tenant's cat", "k": 10})
        assert {r["namespace"] for r in both["results"]} == {"u1", "u2"}
        assert client.ok("list_memories", {"namespace": "u2"})["total"] == len(U2)
        assert "outside this server's scope" in client.error("search_memories", {"query": "x", "namespace": "u3"})
    assert snapshot(path) == before


class RawServer:
    """`tiered-memory mcp` over stdio with newline-delimited JSON-RPC by hand: the test owns the
    process, so it can close stdin or send SIGTERM itself and read the exit status."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen([sys.executable, *server_command(path, "--namespace", "u1")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=dict(os.environ, **server_env()))
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.request(1, "initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                       "clientInfo": {"name": "test", "version": "0"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read(self) -> None:
        for line in iter(self.process.stdout.readline, b""):
            self.lines.put(line)

    def send(self, message: dict[str, Any]) -> None:
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()

    def request(self, request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        answer = json.loads(self.lines.get(timeout=120))
        assert answer.get("id") == request_id and "result" in answer, answer
        return answer["result"]

    def tool(self, request_id: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = self.request(request_id, "tools/call", {"name": name, "arguments": arguments})
        assert not result.get("isError"), result
        return result["structuredContent"]

    def finish(self) -> tuple[int, str]:
        returncode = self.process.wait(timeout=60)
        self.reader.join(timeout=30)  # it reads to EOF; closing stdout under it would raise in the thread
        stderr = self.process.stderr.read().decode(errors="replace")
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if not stream.closed:
                stream.close()
        return returncode, stderr


@pytest.mark.parametrize("stop", ["stdin closed", "SIGTERM"])
def test_the_store_is_closed_cleanly_when_the_server_stops(tmp_path: Path, stop: str) -> None:
    """Access statistics reach the disk only when the store closes: finding them after the server
    exits shows it closed the store, and reopening for writing shows it released the lock."""
    path = tmp_path / "store"
    raw = RawServer(path)
    memory_id = raw.tool(2, "add_memory", {"text": "The user runs marathons in spring"})["id"]
    raw.tool(3, "get_memory", {"id": memory_id})
    raw.tool(4, "get_memory", {"id": memory_id})
    if stop == "SIGTERM":
        raw.process.send_signal(signal.SIGTERM)  # stdin still open
    else:
        raw.process.stdin.close()
    returncode, stderr = raw.finish()
    assert returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    with TieredMemory(path, encoder=None) as mem:
        [memory] = mem.list_memories("u1")  # listing is not counted as an access
    assert (memory.id, memory.access_count) == (memory_id, 2)


def test_streamable_http_on_localhost(tmp_path: Path) -> None:
    path = tmp_path / "store"
    process = subprocess.Popen([sys.executable, *server_command(path, "--namespace", "u1", "--transport", "http",
                                                                "--port", "0")],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=dict(os.environ, **server_env()))
    try:
        banner = process.stderr.readline().decode()
        url = re.search(r"listening on (http://127\.0\.0\.1:\d+/mcp)", banner)
        assert url, banner
        with connected(http_session, url.group(1)) as client:
            assert set(client.tools()) == ALL_TOOLS
            memory_id = client.ok("add_memory", {"text": "The user's flight to Oslo leaves at 7am"})["id"]
            assert client.ok("search_memories", {"query": "when is the flight?"})["results"][0]["id"] == memory_id
            assert "no memory" in client.error("get_memory", {"id": "0" * 32})
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    with TieredMemory(path, encoder=None) as mem:
        assert mem.get(memory_id).text == "The user's flight to Oslo leaves at 7am"


def test_http_refuses_a_non_loopback_host_unless_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "never"
    assert main(["mcp", "--path", str(path), "--transport", "http", "--host", "0.0.0.0"]) == 1
    assert "--allow-remote" in capsys.readouterr().err
    assert not path.exists()  # refused before the store was opened
