"""Features (agents, conversations, prefetch) use only the store's public surface.

The engine's centre (its locks, tiers, catalog, sealer) may change shape at any time; the modules
built on the store reach it through ``TieredMemory``'s public methods and ``mem.extra(prefix)``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tiered_memory"
FEATURES = ("agents/hub.py", "agents/agent.py", "agents/store.py", "agents/notify.py", "conversation/session.py",
            "conversation/prefetch.py", "integrations/mem0.py", "aio.py")
# Names under which these modules hold the store.
STORE_NAMES = {"mem", "memory"}
INTERNALS = {"cold", "catalog", "warm", "hot", "topics"}


def _store_expression(node: ast.expr) -> bool:
    """`mem`, `memory`, `self.mem`, `self.memory`, `hub.mem`, `self.hub.mem`, ..."""
    if isinstance(node, ast.Name):
        return node.id in STORE_NAMES
    return isinstance(node, ast.Attribute) and node.attr in STORE_NAMES


def private_uses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and _store_expression(node.value):
            if node.attr.startswith("_") or node.attr in INTERNALS:
                found.append((node.lineno, node.col_offset, f"line {node.lineno}: .{node.attr}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("vars", "getattr",
                                                                                                  "setattr") \
                and node.args and _store_expression(node.args[0]):
            found.append((node.lineno, node.col_offset, f"line {node.lineno}: {node.func.id}()"))
    return [text for *_, text in sorted(found)]


@pytest.mark.parametrize("module", FEATURES)
def test_features_use_only_the_public_surface(module: str) -> None:
    assert private_uses((PACKAGE / module).read_text()) == []


def test_the_check_sees_what_it_looks_for() -> None:
    sample = ("with self.mem._rw.read:\n    found = mem.cold.vector(i)\nhub.mem._check_writable()\nmem.add(x)\n"
              "vars(mem).setdefault('x', 1)\n")
    assert private_uses(sample) == ["line 1: ._rw", "line 2: .cold", "line 3: ._check_writable", "line 5: vars()"]
