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


def test_former_module_paths_still_import() -> None:
    """Modules that moved into layer packages: the paths the README named keep working."""
    result = _run("import warnings, sys\n"
                  "with warnings.catch_warnings(record=True) as caught:\n"
                  "    warnings.simplefilter('always')\n"
                  "    from tiered_memory.cold_index import ColdIndex\n"
                  "from tiered_memory.tiers.cold_index import ColdIndex as Moved\n"
                  "assert ColdIndex is Moved\n"
                  "assert any(issubclass(w.category, DeprecationWarning) and 'tiers.cold_index' in str(w.message)\n"
                  "           for w in caught), [str(w.message) for w in caught]\n"
                  "import tiered_memory.conversation as conversation\n"
                  "assert 'tiktoken' not in sys.modules  # the package alone loads no tokenizer\n"
                  "from tiered_memory.conversation import Conversation\n"
                  "from tiered_memory.conversation.session import Conversation as Session\n"
                  "assert Conversation is Session\n"
                  "from tiered_memory.agents import AgentHub, hub_for\n"
                  "from tiered_memory.agents.hub import AgentHub as Hub\n"
                  "assert AgentHub is Hub\n")
    assert result.returncode == 0, result.stderr
