"""`import tiered_memory` stays light: no torch, no tiktoken until a feature needs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_import_loads_neither_torch_nor_tiktoken() -> None:
    result = _run("import tiered_memory, sys; "
                  "assert 'torch' not in sys.modules and 'tiktoken' not in sys.modules, "
                  "sorted(m for m in ('torch', 'tiktoken', 'onnxruntime') if m in sys.modules)")
    assert result.returncode == 0, result.stderr


def test_lazy_names_resolve_and_unknown_names_raise() -> None:
    result = _run("import tiered_memory, sys\n"
                  "from tiered_memory import Conversation, count_tokens\n"
                  "assert 'tiktoken' in sys.modules and count_tokens('hello world') == 2\n"
                  "assert tiered_memory.Conversation is Conversation\n"
                  "try:\n    tiered_memory.no_such_name\nexcept AttributeError as err:\n    print(err)\n")
    assert result.returncode == 0, result.stderr
    assert "has no attribute 'no_such_name'" in result.stdout
