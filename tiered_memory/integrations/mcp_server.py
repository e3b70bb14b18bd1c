"""An MCP server over one store: ``tiered-memory mcp --path DIR --namespace NS``.

Six tools (``add_memory``, ``search_memories``, ``get_memory``, ``update_memory``,
``delete_memory``, ``list_memories``) over one :class:`~tiered_memory.TieredMemory`, opened when the
server starts and closed when it stops (stdin closed, SIGTERM or SIGINT). The namespaces the
server may touch are fixed by its command line; a client may pick one of them per call when several
were given, never another. Arguments are checked against each tool's JSON schema and then by the
engine; a bad call gets an MCP tool error (``isError``) with the reason and changes nothing.
Returned text is bounded by a token budget (cl100k_base, as :mod:`tiered_memory.conversation.tokens` counts).

Transports: stdio (the default, what desktop hosts and IDEs spawn) and streamable HTTP, bound to a
loopback address unless ``--allow-remote`` is given: the server has no authentication of its own.

Needs the ``mcp`` extra (``pip install 'tiered-memory[mcp]'``); this module imports the SDK only
when a server is built, so the ``tiered-memory`` command works without it.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered_memory.errors import ConfigError, MemoryNotFoundError, TieredMemoryError

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server

    from tiered_memory.engine import TieredMemory
    from tiered_memory.records import Hit, Memory

log = logging.getLogger(__name__)

READ_TOOLS = ("search_memories", "get_memory", "list_memories")
WRITE_TOOLS = ("add_memory", "update_memory", "delete_memory")
DEFAULT_PORT = 8765
MIN_SNIPPET_TOKENS = 32  # a later result cut shorter than this is left out instead: a stub misleads more than it tells


class ToolError(Exception):
    """A tool call the server refuses; its message goes back to the client as an ``isError`` result."""


@dataclass(frozen=True)
class ToolLimits:
    """Bounds on what one tool call may carry in and out."""

    # A memory's text in add/update: the engine takes up to 1M characters, but a tool call that long
    # carries a document, not a memory.
    max_text_chars: int = 20_000
    max_query_chars: int = 2_000
    max_k: int = 50  # search results per call
    max_page: int = 100  # list_memories page size
    default_result_tokens: int = 2_000  # returned memory text per call, unless the call asks for another budget
    max_result_tokens: int = 16_000
    max_listed_metadata_chars: int = 2_000  # longer metadata (as JSON) is left out of search/list; get_memory has it


# -- the tools, without the SDK ------------------------------------------------------------------


class MemoryTools:
    """The six tools over one open store, scoped to the namespaces the server was started with."""

    def __init__(self, memory: TieredMemory, namespaces: Sequence[str], *, read_only: bool = False,
                 limits: ToolLimits | None = None) -> None:
        if not namespaces:
            raise ConfigError("a server needs at least one namespace")
        self.memory = memory
        self.namespaces = list(dict.fromkeys(namespaces))
        self.read_only = read_only or memory.read_only
        self.limits = limits or ToolLimits()
        self._specs = {spec["name"]: spec for spec in self._build_specs()}
        from jsonschema import Draft202012Validator

        self._validators = {name: Draft202012Validator(spec["input_schema"]) for name, spec in self._specs.items()}
        from tiered_memory.conversation.tokens import get_encoding

        self._encoding = get_encoding("cl100k_base")

    # -- schemas ---------------------------------------------------------------------------------

    def specs(self) -> list[dict[str, Any]]:
        """What tools/list advertises: name, title, description, input_schema and hints, per tool."""
        return [spec for name, spec in self._specs.items() if not (self.read_only and name in WRITE_TOOLS)]

    def _namespace_property(self, what: str, default: str) -> dict[str, dict[str, Any]]:
        """The namespace argument: only when several were configured, and only those."""
        if len(self.namespaces) == 1:
            return {}
        return {"namespace": {"type": "string", "enum": list(self.namespaces),
                              "description": f"Namespace to {what}, one of this server's scope; default: {default}."}}

    def _build_specs(self) -> list[dict[str, Any]]:
        lim = self.limits
        scope = ", ".join(repr(ns) for ns in self.namespaces)
        first = repr(self.namespaces[0])
        memory_id = {"type": "string", "minLength": 1, "maxLength": 128,
                     "description": "A memory id, as add_memory, search_memories or list_memories return it."}
        text = {"type": "string", "minLength": 1, "maxLength": lim.max_text_chars,
                "description": f"The memory's text: one fact, preference or event, at most {lim.max_text_chars:,} "
                               "characters."}
        kind = {"type": "string", "minLength": 1, "maxLength": 64,
                "description": "A label for the kind of memory, e.g. fact, preference, event, conversation."}
        metadata = {"type": "object", "maxProperties": 64,
                    "description": "Key-value details stored with the memory (JSON values), searchable with `where`."}
        importance = {"type": "number", "minimum": 0, "maximum": 1,
                      "description": "0 to 1: how long the memory should stay fast to reach (decay starts from it)."}
        max_tokens = {"type": "integer", "minimum": 16, "maximum": lim.max_result_tokens,
                      "default": lim.default_result_tokens,
                      "description": "Budget for the memory text returned (tokens, cl100k_base); longer texts are "
                                     "cut and marked text_truncated."}
        period = "ISO 8601 date or date-time (UTC unless it has an offset), inclusive: memories created {} it."
        since = {"type": "string", "minLength": 4, "maxLength": 40, "description": period.format("at or after")}
        until = {"type": "string", "minLength": 4, "maxLength": 40, "description": period.format("at or before")}

        def schema(properties: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
            return {"type": "object", "properties": properties, "required": list(required),
                    "additionalProperties": False}

        return [
            {"name": "add_memory", "title": "Add a memory",
             "description": f"Store a memory durably (scope: {scope}). Returns its id. Adding a text the namespace "
                            "already holds returns the existing memory's id with duplicate=true.",
             "input_schema": schema({"text": text, "kind": kind | {"default": "fact"}, "metadata": metadata,
                                     "importance": importance | {"default": 0.5},
                                     **self._namespace_property("add it to", first)}, ["text"]),
             "hints": {"read_only_hint": False, "destructive_hint": False, "idempotent_hint": False}},
            {"name": "search_memories", "title": "Search memories",
             "description": f"The memories most relevant to a query, best first (scope: {scope}). Hybrid search "
                            "(meaning and keywords) by default; filter by kind, metadata or creation time.",
             "input_schema": schema({
                 "query": {"type": "string", "minLength": 1, "maxLength": lim.max_query_chars,
                           "description": "What to look for, in natural language."},
                 "k": {"type": "integer", "minimum": 1, "maximum": lim.max_k, "default": 5,
                       "description": f"How many memories to return, 1 to {lim.max_k}."},
                 "kinds": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 64},
                           "minItems": 1, "maxItems": 20, "description": "Keep only memories of these kinds."},
                 "where": {"type": "object", "description":
                           "Metadata filter, MongoDB style: {\"project\": \"rag\"}, {\"confidence\": {\"$gte\": 0.5}};"
                           " operators $eq $ne $in $nin $gt $gte $lt $lte $exists $and $or."},
                 "mode": {"type": "string", "enum": ["hybrid", "dense", "lexical"], "default": "hybrid",
                          "description": "hybrid: meaning and keywords; dense: meaning only; lexical: keywords only."},
                 "min_score": {"type": "number", "minimum": -1, "maximum": 1,
                               "description": "Drop memories whose cosine similarity to the query is below this."},
                 "since": since, "until": until, "max_tokens": max_tokens,
                 **self._namespace_property("search", "all of " + scope)}, ["query"]),
             "hints": {"read_only_hint": True}},
            {"name": "get_memory", "title": "Get a memory",
             "description": "One memory by id, with all its metadata. A text longer than max_tokens comes in parts: "
                            "call again with text_offset=next_text_offset for the next.",
             "input_schema": schema({
                 "id": memory_id, "max_tokens": max_tokens,
                 "text_offset": {"type": "integer", "minimum": 0, "default": 0,
                                 "description": "Character offset in the text to start from (paging a long text)."}},
                 ["id"]),
             "hints": {"read_only_hint": True}},
            {"name": "update_memory", "title": "Update a memory",
             "description": "Change a memory's text, kind, metadata (replaced whole) or importance; give at least "
                            "one. Returns the memory as it is now (its version goes up by one).",
             "input_schema": schema({"id": memory_id, "text": text, "kind": kind, "metadata": metadata,
                                     "importance": importance}, ["id"]),
             "hints": {"read_only_hint": False, "destructive_hint": True, "idempotent_hint": False}},
            {"name": "delete_memory", "title": "Delete a memory",
             "description": "Remove a memory for good.",
             "input_schema": schema({"id": memory_id}, ["id"]),
             "hints": {"read_only_hint": False, "destructive_hint": True, "idempotent_hint": True}},
            {"name": "list_memories", "title": "List memories",
             "description": f"A namespace's memories in creation order, a page at a time (scope: {scope}). Call "
                            "again with offset=next_offset for the next page; next_offset is null after the last.",
             "input_schema": schema({
                 "offset": {"type": "integer", "minimum": 0, "default": 0,
                            "description": "How many memories to skip (next_offset of the previous page)."},
                 "limit": {"type": "integer", "minimum": 1, "maximum": lim.max_page, "default": 20,
                           "description": f"Page size, 1 to {lim.max_page}."},
                 "newest_first": {"type": "boolean", "default": True,
                                  "description": "Newest first (default) or oldest first."},
                 "since": since, "until": until, "max_tokens": max_tokens,
                 **self._namespace_property("list", first)}),
             "hints": {"read_only_hint": True}},
        ]

    # -- calls -----------------------------------------------------------------------------------

    def call(self, name: str, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """Run one tool; the structured result, or ToolError with what to fix (nothing changed)."""
        if name not in self._specs:
            offered = ", ".join(spec["name"] for spec in self.specs())
            raise ToolError(f"unknown tool {name!r:.80}; this server has {offered}")
        if self.read_only and name in WRITE_TOOLS:
            raise ToolError(f"{name} is not available: this server is read-only (started with --read-only)")
        args = dict(arguments or {})
        self._check_arguments(name, args)
        try:
            return getattr(self, "_" + name)(args)
        except MemoryNotFoundError as err:
            raise ToolError(str(err)) from err
        except TieredMemoryError as err:
            raise ToolError(f"{type(err).__name__}: {err}") from err

    def _check_arguments(self, name: str, args: dict[str, Any]) -> None:
        if "namespace" in args and "namespace" not in self._specs[name]["input_schema"]["properties"]:
            where = ("its namespace is fixed" if len(self.namespaces) == 1 else "it takes no namespace argument")
            raise ToolError(f"namespace: {name} cannot choose a namespace here, {where} by the server's "
                            f"configuration (scope: {', '.join(self.namespaces)})")
        if "namespace" in args and args["namespace"] not in self.namespaces:
            raise ToolError(f"namespace: {args['namespace']!r:.80} is outside this server's scope; use one of "
                            f"{', '.join(self.namespaces)}")
        from jsonschema.exceptions import best_match

        error = best_match(self._validators[name].iter_errors(args))
        if error is not None:
            where = ".".join(str(part) for part in error.absolute_path) or "arguments"
            message = error.message
            if error.validator == "maxLength" and isinstance(error.instance, str):
                message = f"{len(error.instance):,} characters, more than the limit of {error.validator_value:,}"
            elif len(message) > 240:  # jsonschema quotes the value whole; keep the answer short
                message = f"fails {error.validator} {error.validator_value!r:.120}"
            raise ToolError(f"{where}: {message}")
        for key in ("k", "limit", "offset", "max_tokens", "text_offset"):
            if isinstance(args.get(key), float):  # JSON Schema counts 5.0 as an integer; the engine wants an int
                args[key] = int(args[key])

    def _in_scope(self, memory_id: str) -> str:
        """The namespace of a memory this server may see; not found otherwise (never "refused")."""
        namespace = self.namespaces[0] if len(self.namespaces) == 1 else self.memory.namespace_of(memory_id)
        if namespace not in self.namespaces:
            raise ToolError(f"no memory with id {memory_id!r}")
        return namespace

    def _add_memory(self, args: dict[str, Any]) -> dict[str, Any]:
        namespace = args.get("namespace", self.namespaces[0])
        ids = self.memory.add_many([args["text"]], namespace=namespace, kind=args.get("kind", "fact"),
                                   metadata=[args.get("metadata")], importance=args.get("importance", 0.5))
        return {"id": ids[0], "namespace": namespace, "duplicate": 0 in ids.duplicates}

    def _search_memories(self, args: dict[str, Any]) -> dict[str, Any]:
        hits = self.memory.search(
            args["query"], namespace=args.get("namespace", self.namespaces), k=args.get("k", 5),
            kinds=args.get("kinds"), where=args.get("where"), min_score=args.get("min_score"),
            mode=args.get("mode", "hybrid"), since=_moment(args, "since"), until=_moment(args, "until"))
        results, omitted = self._within_budget([hit.memory for hit in hits], args, [_hit_fields(h) for h in hits])
        answer: dict[str, Any] = {"results": results}
        if omitted:
            answer["omitted"] = omitted
            answer["note"] = f"{omitted} more results did not fit max_tokens; raise it or lower k"
        return answer

    def _get_memory(self, args: dict[str, Any]) -> dict[str, Any]:
        memory = self.memory.get(args["id"], namespace=self._in_scope(args["id"]))
        offset = args.get("text_offset", 0)
        if offset > len(memory.text):
            raise ToolError(f"text_offset: {offset} is past the end of the text ({len(memory.text)} characters)")
        chunk, _, cut = self._cut(memory.text[offset:], args.get("max_tokens", self.limits.default_result_tokens))
        item = _memory_fields(memory, chunk, _jsonable(memory.metadata))
        if offset or cut:
            item |= {"text_offset": offset, "text_chars": len(memory.text)}
        if cut:
            item |= {"text_truncated": True, "next_text_offset": offset + len(chunk)}
        return item

    def _update_memory(self, args: dict[str, Any]) -> dict[str, Any]:
        changes = {key: args[key] for key in ("text", "kind", "metadata", "importance") if key in args}
        if not changes:
            raise ToolError("give at least one of text, kind, metadata, importance to change")
        memory = self.memory.update(args["id"], namespace=self._in_scope(args["id"]), **changes)
        return self._bounded(memory, self.limits.default_result_tokens)[0]

    def _delete_memory(self, args: dict[str, Any]) -> dict[str, Any]:
        self.memory.delete(args["id"], namespace=self._in_scope(args["id"]))
        return {"deleted": args["id"]}

    def _list_memories(self, args: dict[str, Any]) -> dict[str, Any]:
        namespace = args.get("namespace", self.namespaces[0])
        offset, limit = args.get("offset", 0), args.get("limit", 20)
        # One more than the page tells whether another page follows, without counting the period.
        page = self.memory.list_memories(namespace, since=_moment(args, "since"), until=_moment(args, "until"),
                                         limit=limit + 1, offset=offset, newest_first=args.get("newest_first", True))
        more = len(page) > limit
        results, omitted = self._within_budget(page[:limit], args, [{} for _ in page[:limit]])
        return {"namespace": namespace, "memories": results, "total": self.memory.count(namespace),
                "next_offset": offset + len(results) if more or omitted else None}

    # -- bounding what goes back -----------------------------------------------------------------

    def _within_budget(self, memories: Sequence[Memory], args: Mapping[str, Any],
                       extras: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Memories in order while their texts fit the token budget; the one that overflows it is cut
        (unless what is left is a stub and others came before). Returns (items, how many left out)."""
        remaining = args.get("max_tokens", self.limits.default_result_tokens)
        items: list[dict[str, Any]] = []
        for memory, extra in zip(memories, extras):
            if items and remaining < MIN_SNIPPET_TOKENS:
                break
            item, used, cut = self._bounded(memory, remaining)
            items.append(item | extra)
            remaining -= used
            if cut:
                break
        return items, len(memories) - len(items)

    def _bounded(self, memory: Memory, budget: int) -> tuple[dict[str, Any], int, bool]:
        """A memory as search and list return it: text within `budget` tokens, metadata only if
        short (get_memory returns it whole). Returns (item, tokens used, whether the text was cut)."""
        chunk, used, cut = self._cut(memory.text, budget)
        metadata = _jsonable(memory.metadata)
        long_metadata = len(json.dumps(metadata, ensure_ascii=False)) > self.limits.max_listed_metadata_chars
        item = _memory_fields(memory, chunk, None if long_metadata else metadata)
        if long_metadata:
            item["metadata_omitted"] = True
        if cut:
            item |= {"text_truncated": True, "text_chars": len(memory.text)}
        return item, used, cut

    def _cut(self, text: str, budget: int) -> tuple[str, int, bool]:
        """(the longest prefix of `text` within `budget` tokens, its tokens, whether it was cut)."""
        # Tokenize a window, not a 1M-character text: a cl100k token spans about 4 characters of
        # prose and rarely over 64, so the window nearly always holds more than `budget` tokens.
        window = text[:(budget + 1) * 64]
        tokens = self._encoding.encode_ordinary(window)
        if len(tokens) <= budget and len(window) < len(text):
            tokens = self._encoding.encode_ordinary(text)  # it did not (long runs of white space): count it all
        if len(tokens) <= budget:
            return text, len(tokens), False
        # A prefix of the tokens decodes to a prefix of the text; "ignore" drops a character split
        # between the last kept token and the next. At least one character, so paging always advances.
        chunk = self._encoding.decode(tokens[:budget], errors="ignore") or text[:1]
        return chunk, budget, True


def _moment(args: Mapping[str, Any], key: str) -> datetime | None:
    value = args.get(key)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as err:
        raise ToolError(f"{key}: {value!r:.60} is not an ISO 8601 date or date-time, e.g. 2024-03-15 or "
                        "2024-03-15T14:30:00Z") from err
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def _memory_fields(memory: Memory, text: str, metadata: Any) -> dict[str, Any]:
    return {"id": memory.id, "namespace": memory.namespace, "text": text, "kind": memory.kind,
            "metadata": metadata, "importance": memory.importance, "created_at": _iso(memory.created_at),
            "updated_at": _iso(memory.updated_at), "version": memory.version}


def _hit_fields(hit: Hit) -> dict[str, Any]:
    """The score that ranked the hit (fused in hybrid mode, so 0 can be a good one) and, in the
    text modes, its cosine similarity, which reads the same in every result list."""
    fields = {"score": round(float(hit.score), 4), "tier": str(hit.tier)}
    if hit.dense_score is not None:
        fields["similarity"] = round(float(hit.dense_score), 4)
    return fields


def _jsonable(value: Any) -> Any:
    """Metadata as JSON: msgpack also stores bytes and non-finite floats, which JSON has not."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


# -- the MCP server ------------------------------------------------------------------------------


def _require_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError as err:
        raise ConfigError("the MCP server needs the MCP SDK: pip install 'tiered-memory[mcp]'") from err


def build_server(tools: MemoryTools) -> Server:
    """An MCP low-level server whose tools/list and tools/call are `tools`."""
    _require_sdk()
    import anyio
    import mcp_types as types
    from mcp.server.lowlevel import Server

    from tiered_memory import __version__

    listing = types.ListToolsResult(tools=[
        types.Tool(name=spec["name"], title=spec["title"], description=spec["description"],
                   input_schema=spec["input_schema"],
                   annotations=types.ToolAnnotations(title=spec["title"], open_world_hint=False, **spec["hints"]))
        for spec in tools.specs()])

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return listing

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            # Engine calls block (LMDB, the encoder): off the event loop, so pings and other
            # sessions are served meanwhile. The engine is thread-safe.
            result = await anyio.to_thread.run_sync(tools.call, params.name, params.arguments)
        except ToolError as err:
            return types.CallToolResult(content=[types.TextContent(text=str(err))], is_error=True)
        except Exception as err:  # a bug or a failing disk: say so, keep serving
            log.exception("tool %s failed", params.name)
            return types.CallToolResult(content=[types.TextContent(text=f"internal error: {type(err).__name__}: "
                                                                        f"{err}")], is_error=True)
        return types.CallToolResult(content=[types.TextContent(text=json.dumps(result, ensure_ascii=False))],
                                    structured_content=result)

    scope = ", ".join(tools.namespaces)
    instructions = (f"Long-term memory (namespaces: {scope}). Search it before answering questions that may depend "
                    "on what was said or learnt before; add durable facts, preferences and decisions as they come "
                    "up, one per memory." + (" This server is read-only." if tools.read_only else ""))
    return Server("tiered-memory", version=__version__, instructions=instructions,
                  on_list_tools=list_tools, on_call_tool=call_tool)


class _StdinLines:
    """Lines of stdin for ``stdio_server``, read by a daemon thread.

    The SDK reads stdin in an anyio worker thread whose blocking read cannot be cancelled: on
    SIGTERM with the pipe still open, the shutdown would wait for the next line, and interpreter
    exit would wait for the thread (anyio's workers are not daemons). A daemon thread's read ends
    with the process; the event loop side is a memory stream, which cancels at once. The thread
    reads a duplicate of fd 0 with os.read, not sys.stdin: a daemon thread blocked inside a
    buffered reader holds its lock, and the interpreter aborts when it finalizes sys.stdin.
    """

    def __init__(self, fd: int) -> None:
        import anyio
        import anyio.lowlevel

        self._send, self._receive = anyio.create_memory_object_stream[str](0)
        self._token = anyio.lowlevel.current_token()
        self._fd = os.dup(fd)  # never closed: the blocked thread would read a recycled descriptor
        threading.Thread(target=self._pump, name="mcp-stdin", daemon=True).start()

    def _pump(self) -> None:
        import anyio.from_thread

        pending = b""
        try:
            while chunk := os.read(self._fd, 1 << 16):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    anyio.from_thread.run(self._send.send, line.decode("utf-8", "replace"), token=self._token)
            if pending.strip():
                anyio.from_thread.run(self._send.send, pending.decode("utf-8", "replace"), token=self._token)
            anyio.from_thread.run_sync(self._send.close, token=self._token)  # EOF: the session ends
        except Exception:  # the loop finished or the descriptor failed: nobody is listening any more
            return

    def __aiter__(self) -> _StdinLines:
        return self

    async def __anext__(self) -> str:
        import anyio

        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None


def _owns_signals() -> bool:
    """Signal handlers can be set only from the main thread, and anyio has no SIGTERM on Windows;
    elsewhere the caller that runs serve() decides when it stops."""
    return threading.current_thread() is threading.main_thread() and sys.platform != "win32"


async def _serve_stdio(server: Server) -> None:
    import anyio
    from mcp.server.stdio import stdio_server

    async with anyio.create_task_group() as group:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("%s: closing the store", signal.Signals(signum).name)
                    group.cancel_scope.cancel()
                    return

        if _owns_signals():
            group.start_soon(stop_on_signal)
        # stdio_server only iterates over `stdin`; stdout stays the SDK's (fd 1 diverted to stderr
        # while serving, so a stray print cannot corrupt the wire).
        async with stdio_server(stdin=_StdinLines(0)) as (read, write):  # type: ignore[arg-type]
            await server.run(read, write, server.create_initialization_options())
        group.cancel_scope.cancel()


async def _serve_http(server: Server, host: str, port: int) -> None:
    import uvicorn

    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(128)
    bound = listener.getsockname()[1]
    # For a loopback host the SDK also turns on DNS-rebinding protection (Host and Origin checks).
    app = server.streamable_http_app(host=host)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    # uvicorn stops on SIGTERM/SIGINT, then re-raises the signal to the handler it found: ignored
    # here, so the process goes on to close the store instead of dying with the default action.
    if _owns_signals():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
    shown = f"[{host}]" if ":" in host else host
    print(f"tiered-memory MCP server listening on http://{shown}:{bound}/mcp", file=sys.stderr, flush=True)
    await uvicorn.Server(config).serve(sockets=[listener])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(path: str | Path, namespaces: Sequence[str], *, read_only: bool = False, transport: str = "stdio",
          host: str = "127.0.0.1", port: int = DEFAULT_PORT, allow_remote: bool = False,
          encoder: str = "default", limits: ToolLimits | None = None) -> None:
    """Open the store, serve it until the client or a signal ends the session, close it."""
    if transport not in ("stdio", "http"):
        raise ConfigError(f"transport must be 'stdio' or 'http', got {transport!r:.40}")
    if transport == "http" and not is_loopback(host) and not allow_remote:
        raise ConfigError(f"refusing to listen on {host}: the server has no authentication, so anyone who reaches "
                          "the port could read and change these memories. Use 127.0.0.1 (the default), or pass "
                          "--allow-remote behind a proxy that authenticates")
    if not namespaces:
        raise ConfigError("give the server at least one namespace (--namespace NS)")
    _require_sdk()
    import anyio

    from tiered_memory.engine import TieredMemory

    memory = TieredMemory(path, read_only=read_only, encoder=encoder)
    try:
        for namespace in namespaces:
            memory.count(namespace)  # checks the name (InvalidInputError) before any client sees it
        memory.preload(list(namespaces))  # so the first call does not pay the namespace's load
        server = build_server(MemoryTools(memory, namespaces, read_only=read_only, limits=limits))
        if transport == "stdio":
            anyio.run(_serve_stdio, server)
        else:
            anyio.run(_serve_http, server, host, port)
    finally:
        memory.close()
        log.info("store %s closed", path)


# -- the `tiered-memory mcp` command -------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    try:
        serve(args.path, args.namespaces or ["default"], read_only=args.read_only, transport=args.transport,
              host=args.host, port=args.port, allow_remote=args.allow_remote, encoder=args.encoder)
    except TieredMemoryError as err:
        print(f"tiered-memory mcp: {err}", file=sys.stderr)
        return 1
    return 0


def add_mcp_parser(commands: Any) -> None:
    """Add the ``mcp`` subcommand to the ``tiered-memory`` command's subparsers."""
    parser = commands.add_parser(
        "mcp", help="serve a store to MCP hosts (desktop assistants, IDEs, agent frameworks)",
        description="Serve a store's memories as MCP tools (add_memory, search_memories, get_memory, update_memory, "
                    "delete_memory, list_memories), over stdio by default.")
    parser.add_argument("--path", required=True, help="store directory (created if missing, unless --read-only)")
    parser.add_argument("--namespace", dest="namespaces", action="extend", nargs="+", metavar="NS",
                        help="namespace(s) the server may use; clients pick among them only if several are given "
                             "(default: default)")
    parser.add_argument("--read-only", action="store_true",
                        help="open the store read-only and offer only search_memories, get_memory, list_memories")
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                        help="stdio (default) or streamable HTTP")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address to bind (default 127.0.0.1; loopback only "
                                                            "unless --allow-remote)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT}; 0 picks "
                                                                       "a free one)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host: the server has no authentication of its own")
    parser.add_argument("--encoder", default="default",
                        help="the encoder the store was built with: minilm-onnx (default), minilm-onnx-int8, "
                             "minilm-torch")
    parser.set_defaults(run=_run)
