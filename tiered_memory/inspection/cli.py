"""The subcommands that look inside a store: stats, namespaces, ls, get, search, export, import, verify.

Each takes the store directory as its first argument and opens it read-only (``import`` builds a
new one): a missing directory is an error, never a new store. Tables by default, ``--json`` for
machines; progress bars on stderr for long work, off with ``--quiet`` or when stderr is not a
terminal. A store with sealed memories takes its key with ``--key-file PATH`` or ``--key-env NAME``
(16, 24 or 32 bytes: raw in a file, or hex or base64 text).

Exit codes (also in the README):
  0  done
  1  damage: verify found some, or a command met a damaged store or export file
  2  bad usage: a wrong argument or option (the message says which and what to give)
  3  the store is open for writing in another process
  4  not found: no store at that path, no such memory or namespace
  5  key: the store needs its encryption key, or the key given is not its key
  6  could not finish for another reason: an unreadable or unwritable file, a store too new or too old
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tiered_memory.errors import (
    DecryptionError,
    EncoderError,
    EncryptionRequiredError,
    InvalidInputError,
    MemoryNotFoundError,
    SchemaVersionError,
    StorageError,
    StoreClosedError,
    StoreLockedError,
    TieredMemoryError,
)
from tiered_memory.inspection.jsonvalues import to_json

EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_NOT_FOUND = 4
EXIT_KEY = 5
EXIT_FAILED = 6

KEY_HINT = "give the store's key with --key-file PATH or --key-env NAME"


class CommandError(Exception):
    """A failure the command explains itself: message, exit code, and what to do."""

    def __init__(self, message: str, code: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


# -- the parsers -----------------------------------------------------------------------------------


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def add_inspect_parsers(commands: Any) -> None:
    """Register the store inspection subcommands on the main parser's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("store", metavar="STORE", help="the store directory")
    common.add_argument("--json", action="store_true", help="print JSON for machines instead of tables")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    keys = common.add_mutually_exclusive_group()
    keys.add_argument("--key-file", metavar="PATH",
                      help="file holding the store's encryption key (16, 24 or 32 bytes; raw, hex or base64)")
    keys.add_argument("--key-env", metavar="NAME", help="environment variable holding the key (hex or base64)")

    def add(name: str, run: Callable[[argparse.Namespace], int], summary: str, description: str
            ) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=[common], help=summary, description=description)
        parser.set_defaults(run=_guarded(run))
        return parser

    stats = add("stats", _stats, "counts, bytes and traffic per tier of a store",
                "TieredMemory.stats() of a store opened read-only. Namespaces load on demand, so warm and "
                "hot counts cover loaded namespaces only: --load loads every one first.")
    stats.add_argument("--load", action="store_true", help="load every namespace first (tiers as stored)")

    add("namespaces", _namespaces, "namespaces with their memory counts and sealing",
        "Every namespace that holds memories: count, whether it is sealed (or how many of its memories are), "
        "oldest and newest memory. Needs no key: counts and timestamps are stored in clear.")

    ls = add("ls", _ls, "a namespace's memories, a page at a time",
             "A namespace's memories in created_at order (TieredMemory.list_memories; not counted as accesses).")
    ls.add_argument("-n", "--namespace", help="the namespace (default: the store's only one)")
    ls.add_argument("--limit", type=_at_least(1), default=20, help="memories per page (default 20)")
    ls.add_argument("--offset", type=_at_least(0), default=0, help="memories to skip (default 0)")
    ls.add_argument("--since", help="created at or after: ISO date/time (UTC unless it says) or epoch seconds")
    ls.add_argument("--until", help="created at or before (same forms as --since)")
    ls.add_argument("--newest-first", action="store_true", help="newest first")
    ls.add_argument("--width", type=_at_least(10), default=60, help="characters of text shown (default 60)")

    get = add("get", _get, "one memory, every field as stored",
              "One memory with every field as stored (its catalog row and its record), as `export` writes it. "
              "Not counted as an access. A sealed memory shows its content only with the key.")
    get.add_argument("id", help="the memory id")
    get.add_argument("--vectors", action="store_true", help="also the int8 code and float original (base64)")

    search = add("search", _search, "search a store by text (the bundled model) or lexically",
                 "TieredMemory.search() on a store opened read-only; dense and hybrid modes embed the query "
                 "with the store's encoder (the bundled all-MiniLM-L6-v2 by default).")
    search.add_argument("query", help="the query text")
    search.add_argument("-n", "--namespace", action="append",
                        help="a namespace to search (repeat the flag; default: every namespace)")
    search.add_argument("-k", type=_at_least(1), default=10, help="results (default 10)")
    search.add_argument("--mode", choices=("hybrid", "dense", "lexical"), default="hybrid",
                        help="hybrid (default), dense (cosine) or lexical (BM25)")
    search.add_argument("--kind", action="append", help="only memories of this kind (repeat the flag)")
    search.add_argument("--encoder", default="default",
                        help="the query encoder: minilm-onnx, minilm-onnx-int8 or minilm-torch (default: the "
                             "default one, which opens stores built with either float MiniLM)")
    search.add_argument("--width", type=_at_least(10), default=60, help="characters of text shown (default 60)")

    export = add("export", _export, "write a store to JSON Lines (an exact copy's contents)",
                 "Every memory (all fields, statistics, the int8 code and float original as stored), the store's "
                 "state, agent hub records and saved warm graphs, as JSON Lines. Sealed memories stay sealed "
                 "unless --decrypt is given with the key.")
    export.add_argument("-o", "--output", default="-", help="the file to write (default: standard output)")
    export.add_argument("--decrypt", action="store_true",
                        help="write sealed memories' text, metadata and vectors in clear (needs the key); the "
                             "file is then created readable by its owner only")

    imp = add("import", _import, "build a new store from an export (an exact copy)",
              "Build the store an export describes in STORE, a new or empty directory; it is built beside it, "
              "verified, and moved into place only once complete.")
    imp.add_argument("file", metavar="FILE", help="the export to read (- for standard input)")

    sync = add("sync", _sync, "exchange changes with another store (a directory or a PostgreSQL DSN)",
               "Push STORE's changes since the last sync with REMOTE and pull REMOTE's (TieredMemory.sync): "
               "per namespace, in batches that each commit with the receiver's cursor, so an interrupted sync "
               "resumes. Conflicts (both changed a memory) end the same on both sides, the newest change "
               "winning; the other version is kept in the memory's sync history. Sealed memories need the key "
               "(--key-file/--key-env; it opens both stores) and travel sealed.")
    sync.add_argument("remote", metavar="REMOTE", help="another store directory (created if new) or postgresql://...")
    sync.add_argument("-n", "--namespace", action="append",
                      help="sync only this namespace (repeat the flag; default: every namespace)")
    sync.add_argument("--batch-size", type=_at_least(1), default=1_000, help="memories per batch (default 1000)")

    add("verify", _verify, "check a store's invariants and report damage (changes nothing)",
        "Check every catalog row against its record, code and original, namespace counts, the dedup index, "
        "topic models and the warm graph files (checksums). Sealed values are opened when the key is given. "
        "Exit 1 with the list when damage is found.")


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command; turn what it raises into a message on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except CommandError as err:
            return _fail(args, str(err), err.code, err.hint)
        except (TieredMemoryError, OSError) as err:
            code, hint = _classify(err)
            return _fail(args, str(err), code, hint)

    return run


def _classify(err: BaseException) -> tuple[int, str | None]:
    from tiered_memory.inspection.transfer import ExportFileError

    if isinstance(err, StoreLockedError):
        return EXIT_LOCKED, None
    if isinstance(err, EncryptionRequiredError):
        return EXIT_KEY, KEY_HINT
    if isinstance(err, DecryptionError):
        return EXIT_KEY, "check that the key is this store's (nothing was changed)"
    if isinstance(err, (MemoryNotFoundError, StoreClosedError, FileNotFoundError)):
        return EXIT_NOT_FOUND, None
    if isinstance(err, SchemaVersionError):
        return EXIT_FAILED, None
    if isinstance(err, ExportFileError):
        return EXIT_DAMAGED, None
    if isinstance(err, StorageError):
        return EXIT_DAMAGED, "`tiered-memory verify STORE` lists every problem"
    if isinstance(err, (InvalidInputError, EncoderError)):
        return EXIT_USAGE, None
    return EXIT_FAILED, None


def _fail(args: argparse.Namespace, message: str, code: int, hint: str | None) -> int:
    print(f"tiered-memory {args.command}: error: {message}", file=sys.stderr)
    if hint:
        print(f"  {hint}", file=sys.stderr)
    if getattr(args, "json", False):
        _print_json({"error": message, "hint": hint, "exit_code": code})
    return code


# -- shared pieces ------------------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> Path:
    """The store directory of a reading command: it must exist and hold a store."""
    path = Path(args.store)
    if not path.exists():
        raise CommandError(f"{path} does not exist", EXIT_NOT_FOUND, "give the directory of an existing store")
    if not (path / "cold" / "data.mdb").is_file():
        raise CommandError(f"{path} is not a tiered_memory store (it has no cold/data.mdb)", EXIT_NOT_FOUND,
                           "give the directory a TieredMemory was opened on")
    return path


def parse_key(data: bytes, source: str) -> bytes:
    """A 16, 24 or 32-byte key from raw bytes, or from hex or base64 text."""
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    decoders: tuple[Callable[[str], bytes], ...] = (bytes.fromhex, lambda t: base64.b64decode(t, validate=True))
    for decode in decoders if text else ():
        try:
            key = decode(text)
        except ValueError:
            continue
        if len(key) in (16, 24, 32):
            return key
    if len(data) in (16, 24, 32):
        return data
    raise CommandError(f"{source} does not hold a key of 16, 24 or 32 bytes", EXIT_USAGE,
                       "give the raw bytes, or the key as hex or base64 text")


def _key(args: argparse.Namespace) -> bytes | None:
    if args.key_file:
        try:
            data = Path(args.key_file).read_bytes()
        except OSError as err:
            raise CommandError(f"cannot read the key file {args.key_file}: {err.strerror}", EXIT_USAGE) from err
        return parse_key(data, f"the key file {args.key_file}")
    if args.key_env:
        value = os.environ.get(args.key_env)
        if not value:
            raise CommandError(f"the environment variable {args.key_env} is not set", EXIT_USAGE,
                               "export it with the key as hex or base64, or use --key-file")
        return parse_key(value.encode("utf-8"), f"the environment variable {args.key_env}")
    return None


def _engine(args: argparse.Namespace, encoder: Any = None) -> Any:
    from tiered_memory.engine import TieredMemory

    return TieredMemory(_store(args), read_only=True, encoder=encoder, encryption_key=_key(args))


@contextmanager
def _progress(args: argparse.Namespace, total: int | None, desc: str, unit: str) -> Iterator[Any]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
               disable=args.quiet or not sys.stderr.isatty())
    try:
        yield bar
    finally:
        bar.close()


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, allow_nan=False))


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _moment(text: str | None, option: str) -> float | datetime | None:
    if text is None:
        return None
    try:
        value = float(text)
        if math.isfinite(value):
            return value
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option} {text!r} is neither an ISO date/time nor epoch seconds", EXIT_USAGE,
                           f"e.g. {option} 2024-03-15 or {option} 2024-03-15T09:30:00+02:00") from None


def _clip(text: str | None, width: int) -> str:
    if text is None:
        return "(sealed)"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[str] = ()) -> str:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.rjust(width) if header in right else value.ljust(width)
                         for value, width, header in zip(values, widths, headers)).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths]), *(line(row) for row in cells)])


def _memory_json(memory: Any) -> dict[str, Any]:
    out = dict(memory._asdict())
    out["tier"] = str(memory.tier)
    out["metadata"] = to_json(memory.metadata)
    return out


# -- the commands ---------------------------------------------------------------------------------------


def _stats(args: argparse.Namespace) -> int:
    with _engine(args) as mem:
        if args.load:
            names = mem.namespaces()
            with _progress(args, len(names), "loading", " namespaces") as bar:
                for name in names:
                    mem.preload(name)
                    bar.update(1)
        stats = mem.stats()
    if args.json:
        _print_json(stats.as_dict())
        return EXIT_OK
    quantizer = stats.quantizer
    calibrated = f"calibrated on {quantizer['calibrated_on']:,} memories" if quantizer.get("calibrated") \
        else "not calibrated yet"
    loaded = stats.loaded
    print(f"store       {args.store}")
    print(f"memories    {stats.memories:,} in {stats.namespaces:,} namespaces")
    print(f"quantizer   {quantizer.get('scheme')}, {calibrated}")
    print(f"loaded      {loaded['loaded']:,} namespaces, {_size(loaded['bytes'])} of a {_size(loaded['budget_bytes'])} "
          "budget" + ("" if args.load else " (--load loads every namespace)"))
    print()
    rows = []
    for name in ("hot", "warm", "cold"):
        tier = getattr(stats, name)
        rows.append([name, f"{tier.count:,}", "-" if tier.capacity is None else f"{tier.capacity:,}",
                     _size(tier.bytes), _size(tier.disk_bytes), f"{tier.hits:,}", f"{tier.misses:,}"])
    print(_table(["tier", "memories", "capacity", "RAM", "disk", "hits", "misses"], rows,
                 right=["memories", "capacity", "RAM", "disk", "hits", "misses"]))
    return EXIT_OK


def _namespaces(args: argparse.Namespace) -> int:
    from tiered_memory.inspection.snapshot import StoreSnapshot

    rows = []
    with StoreSnapshot(_store(args), _key(args)) as snapshot:
        sealed_namespaces = snapshot.sealed_namespaces()
        namespaces = [ns for ns in snapshot.namespaces() if ns.count]
        with _progress(args, sum(ns.count for ns in namespaces), "reading", " memories") as bar:
            for ns in namespaces:
                sealed, oldest, newest = 0, math.inf, -math.inf
                for _, row in snapshot.rows(ns):
                    created, sensitive = row[2], row[9]
                    sealed += sensitive
                    oldest, newest = min(oldest, created), max(newest, created)
                    bar.update(1)
                rows.append({"namespace": ns.name, "memories": ns.count, "sealed": ns.name in sealed_namespaces,
                             "sealed_memories": sealed, "oldest": oldest if ns.count else None,
                             "newest": newest if ns.count else None})
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"{args.store} holds no memories")
        return EXIT_OK
    table = [[row["namespace"], f"{row['memories']:,}",
              "namespace" if row["sealed"] else (f"{row['sealed_memories']:,}" if row["sealed_memories"] else "-"),
              _when(row["oldest"]), _when(row["newest"])] for row in rows]
    print(_table(["namespace", "memories", "sealed", "oldest", "newest"], table, right=["memories", "sealed"]))
    return EXIT_OK


def _pick_namespace(mem: Any, wanted: str | None, store: str) -> str:
    names = mem.namespaces()
    listed = ", ".join(repr(name) for name in names[:10]) + (", ..." if len(names) > 10 else "")
    if wanted is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise CommandError(f"{store} holds no memories", EXIT_NOT_FOUND)
        raise CommandError(f"{store} holds {len(names)} namespaces; choose one with -n/--namespace", EXIT_USAGE,
                           f"its namespaces: {listed} (all: `tiered-memory namespaces {store}`)")
    if wanted not in names:
        raise CommandError(f"{store} has no namespace {wanted!r} holding memories", EXIT_NOT_FOUND,
                           f"its namespaces: {listed}" if names else None)
    return wanted


def _ls(args: argparse.Namespace) -> int:
    since, until = _moment(args.since, "--since"), _moment(args.until, "--until")
    with _engine(args) as mem:
        namespace = _pick_namespace(mem, args.namespace, args.store)
        memories = mem.list_memories(namespace, since=since, until=until, limit=args.limit, offset=args.offset,
                                     newest_first=args.newest_first)
        total = mem.count(namespace)
    if args.json:
        _print_json({"namespace": namespace, "total": total, "offset": args.offset,
                     "memories": [_memory_json(memory) for memory in memories]})
        return EXIT_OK
    if not memories:
        print(f"no memories in {namespace!r} at offset {args.offset:,}" +
              (" within --since/--until" if since is not None or until is not None else "") +
              f" (it holds {total:,})")
        return EXIT_OK
    rows = [[memory.id, _when(memory.created_at), memory.kind, f"{memory.importance:.2f}",
             f"{memory.access_count:,}", memory.tier.value, _clip(memory.text, args.width)] for memory in memories]
    print(_table(["id", "created", "kind", "importance", "access_count", "tier", "text"], rows,
                 right=["importance", "access_count"]))
    last = args.offset + len(memories)
    more = f"; next page: --offset {last}" if len(memories) == args.limit else ""
    print(f"\n{namespace!r}: {args.offset + 1:,}-{last:,}" +
          (" of the period" if since is not None or until is not None else f" of {total:,}") + more)
    return EXIT_OK


def _get(args: argparse.Namespace) -> int:
    from tiered_memory.inspection.snapshot import StoreSnapshot
    from tiered_memory.inspection.transfer import memory_line
    from tiered_memory.records import check_id

    memory_id = check_id(args.id)
    with StoreSnapshot(_store(args), _key(args)) as snapshot:
        memory = snapshot.memory(memory_id, open_sealed=snapshot.has_key)
        precision = snapshot.originals
    if memory is None:
        raise CommandError(f"{args.store} has no memory with id {memory_id!r}", EXIT_NOT_FOUND,
                           "ids are listed by `tiered-memory ls STORE -n NAMESPACE`")
    line = memory_line(memory, vectors=args.vectors)
    line.pop("type")
    if args.json:
        _print_json(line)
        return EXIT_OK
    width = max(map(len, line)) + 2
    for name, value in line.items():
        if name in ("created_at", "updated_at", "last_accessed"):
            value = f"{_when(value)} UTC ({value})"
        elif name == "metadata":  # as Python shows it: bytes and odd keys stay readable
            value = "(sealed)" if memory.metadata is None else repr(memory.metadata)
        elif name == "text" and value is None:
            value = f"(sealed: {KEY_HINT} to show it)"
        elif name in ("code", "original", "record") and value is None:
            continue
        print(f"{name.ljust(width)}{value}")
    if not args.vectors:
        sealed = " sealed" if memory.sealed else ""
        original = "none" if memory.original is None else f"{precision}, {len(memory.original)} bytes{sealed}"
        print(f"{'code'.ljust(width)}int8, {len(memory.code)} bytes{sealed} (--vectors shows it)")
        print(f"{'original'.ljust(width)}{original}")
    return EXIT_OK


def _search(args: argparse.Namespace) -> int:
    with _engine(args, encoder=args.encoder) as mem:  # every mode embeds the query (min_score, fusion)
        names = args.namespace or mem.namespaces()
        if not names:
            raise CommandError(f"{args.store} holds no memories", EXIT_NOT_FOUND)
        hits = mem.search(args.query, namespace=names, k=args.k, kinds=args.kind, mode=args.mode)
    if args.json:
        _print_json([{"rank": rank, "score": hit.score, "dense_score": hit.dense_score,
                      "lexical_score": hit.lexical_score, "tier": str(hit.tier), "memory": _memory_json(hit.memory)}
                     for rank, hit in enumerate(hits, 1)])
        return EXIT_OK
    if not hits:
        print("no memory matches")
        return EXIT_OK

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [[rank, score(hit.score), score(hit.dense_score), score(hit.lexical_score), hit.tier.value,
             hit.memory.namespace, hit.memory.id, _clip(hit.memory.text, args.width)]
            for rank, hit in enumerate(hits, 1)]
    print(_table(["#", "score", "dense", "lexical", "tier", "namespace", "id", "text"], rows,
                 right=["#", "score", "dense", "lexical"]))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from tiered_memory.inspection.snapshot import StoreSnapshot
    from tiered_memory.inspection.transfer import export_store

    key = _key(args)
    if args.decrypt and key is None:
        raise CommandError("--decrypt opens sealed memories and needs the store's key", EXIT_USAGE, KEY_HINT)
    path = _store(args)
    to_stdout = args.output == "-"
    with StoreSnapshot(path, key, hold=True) as snapshot:
        total = sum(ns.count for ns in snapshot.namespaces())
        with _progress(args, total, "exporting", " memories") as bar:
            if to_stdout:
                summary = export_store(snapshot, sys.stdout, decrypt=args.decrypt, on_progress=bar.update)
                sys.stdout.flush()
            else:
                summary = _export_to_file(Path(args.output), snapshot, args.decrypt, bar.update)
    report = {"output": args.output, **summary.as_dict()}
    if args.json and not to_stdout:
        _print_json(report)
    elif not args.quiet:
        # Beside an export written to standard output, the summary goes to stderr.
        print(f"exported {summary.memories:,} memories in {summary.namespaces:,} namespaces"
              f"{f' ({summary.sealed:,} sealed)' if summary.sealed else ''}, {summary.extra:,} hub records and "
              f"{summary.files:,} graph files to {'standard output' if to_stdout else args.output}",
              file=sys.stderr if to_stdout else sys.stdout)
    return EXIT_OK


def _export_to_file(output: Path, snapshot: Any, decrypt: bool, on_progress: Callable[[int], None]) -> Any:
    """Write beside `output`, then move it into place: a failed export leaves no partial file."""
    from tiered_memory.inspection.transfer import export_store

    fd, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        if not decrypt:  # mkstemp makes it owner-only: a decrypted export stays so
            os.fchmod(fd, 0o666 & ~_umask())
        with open(fd, "w", encoding="ascii") as out:
            summary = export_store(snapshot, out, decrypt=decrypt, on_progress=on_progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return summary


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _import(args: argparse.Namespace) -> int:
    from tiered_memory.inspection.transfer import import_store

    key = _key(args)
    source = None
    if args.file != "-":
        try:
            source = open(args.file, encoding="utf-8")  # closed below
        except OSError as err:
            code = EXIT_NOT_FOUND if isinstance(err, FileNotFoundError) else EXIT_FAILED
            raise CommandError(f"cannot read {args.file}: {err.strerror}", code) from err
    try:
        with _progress(args, None, "importing", " memories") as bar:
            def header_seen(header: dict[str, Any]) -> None:
                bar.total = header["counts"].get("memories")
                bar.refresh()

            summary = import_store(args.store, source if source is not None else sys.stdin, key=key,
                                   on_progress=bar.update, on_header=header_seen)
    finally:
        if source is not None:
            source.close()
    if args.json:
        _print_json({"store": args.store, **summary.as_dict()})
    elif not args.quiet:
        print(f"imported {summary.memories:,} memories in {summary.namespaces:,} namespaces"
              f"{f' ({summary.sealed:,} kept sealed)' if summary.sealed else ''}, {summary.extra:,} hub records and "
              f"{summary.files:,} graph files into {args.store} (verified)")
    return EXIT_OK


def _sync(args: argparse.Namespace) -> int:
    from tiered_memory.engine import TieredMemory

    path = _store(args)
    key = _key(args)
    with TieredMemory(path, encoder=None, encryption_key=key) as mem:
        report = mem.sync(args.remote, namespaces=args.namespace, batch_size=args.batch_size, encryption_key=key)
    if args.json:
        _print_json({"store": args.store, "remote": _shown_remote(args.remote), **report.as_dict()})
    elif not args.quiet:
        print(f"synced {args.store} with {_shown_remote(args.remote)} in {report.seconds:.2f} s: pushed "
              f"{report.pushed:,}, pulled {report.pulled:,}, {len(report.conflicts):,} conflicts, "
              f"{report.bytes_sent + report.bytes_received:,} bytes, namespaces: "
              f"{', '.join(report.namespaces) or 'none'}")
        for conflict in report.conflicts:
            print(f"  conflict: {conflict.namespace}/{conflict.memory_id}: the {conflict.winner} version won"
                  f"{' (a delete)' if conflict.winner_deleted else ''}")
        for memory_id in report.refused:
            print(f"  refused: {memory_id} (the receiving store holds that id in another namespace)")
    return EXIT_OK


def _shown_remote(remote: str) -> str:
    """A DSN without its password, for output."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", remote)


def _verify(args: argparse.Namespace) -> int:
    from tiered_memory.inspection.snapshot import StoreSnapshot
    from tiered_memory.inspection.verify import verify_store

    path = _store(args)
    key = _key(args)
    try:  # the total, for the progress bar; a store too damaged to open is verify's to report
        with StoreSnapshot(path, key) as snapshot:
            total: int | None = sum(ns.count for ns in snapshot.namespaces())
    except (StoreLockedError, SchemaVersionError, DecryptionError):
        raise
    except StorageError:
        total = None
    with _progress(args, total, "verifying", " memories") as bar:
        report = verify_store(path, key, on_progress=bar.update)
    if args.json:
        _print_json(report.as_dict())
    else:
        checked = ", ".join(f"{count:,} {name.replace('_', ' ')}" for name, count in report.checked.items())
        if report.ok:
            print(f"{args.store}: no damage found ({checked or 'nothing'} checked"
                  f"{'' if key is not None else '; sealed values checked for size only, without the key'})")
        else:
            print(f"{args.store}: DAMAGED, {report.damage_count:,} problems ({checked} checked):")
            for problem in report.damage:
                print(f"  - {problem}")
            if report.damage_count > len(report.damage):
                print(f"  ... and {report.damage_count - len(report.damage):,} more")
            print("Restore the store from a backup; the engine rebuilds damaged warm graphs from cold by itself.")
        for note in report.notes:
            print(f"  note: {note}")
    return EXIT_OK if report.ok else EXIT_DAMAGED
