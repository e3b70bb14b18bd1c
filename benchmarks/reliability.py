"""Reliability run: crash trials, concurrency, model-based fuzzing, injected faults, hostile input.

    .venv/bin/python benchmarks/reliability.py                    # the full run (25 minutes on 2 cores)
    .venv/bin/python benchmarks/reliability.py --update-readme    # ... and put its figures in README.md

Writes benchmarks/results/reliability.json. The same harnesses run, shorter, in the default test
suite (tests/test_crash.py, test_concurrency.py, test_stateful.py, test_corruption.py,
test_hostile_input.py); this script runs them longer and keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hnswlib  # noqa: E402
import lmdb  # noqa: E402

from tests import test_stateful  # noqa: E402
from tests.test_concurrency import run_concurrency  # noqa: E402
from tests.test_crash import run_crash_trials  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "reliability.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"
FAULT_SUITES = ["tests/test_corruption.py", "tests/test_persistence.py"]
INPUT_SUITES = ["tests/test_hostile_input.py", "tests/test_errors.py"]


def _suite(paths: list[str]) -> dict[str, int]:
    """Run test files in a fresh pytest process; count the outcomes of their test cases."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                        f"--junitxml={report}", *paths], cwd=ROOT, check=False, capture_output=True)
        cases = ElementTree.parse(report).getroot().iter("testcase")
        counts: dict[str, int] = {}
        for case in cases:
            kinds = {child.tag for child in case}
            outcome = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
            if outcome == "skipped" and any("xfail" in (child.get("type") or "") for child in case):
                outcome = "xfailed"
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts


def _machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "hnswlib": getattr(hnswlib, "__version__", "0.8.0"), "lmdb": lmdb.__version__}


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    out: dict[str, Any] = {"command": " ".join(["benchmarks/reliability.py", *sys.argv[1:]]),
                           "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": _machine()}
    with tempfile.TemporaryDirectory(prefix="tm-reliability-") as scratch:
        print(f"crash: {args.trials} kill-and-reopen trials ...", flush=True)
        out["crash"] = run_crash_trials(Path(scratch) / "crash" / "store", trials=args.trials, seed=args.seed,
                                        max_alive_s=1.5).as_dict()
        print(f"concurrency: 8 threads for {args.concurrency_seconds} s ...", flush=True)
        out["concurrency"] = run_concurrency(Path(scratch) / "threads", threads=8,
                                             seconds=args.concurrency_seconds, seed=args.seed).as_dict()
    print(f"fuzzing: {args.fuzz_examples} sequences of up to {args.fuzz_steps} steps, per machine ...", flush=True)
    out["fuzzing"] = {}
    machines = (("exact", test_stateful.StoreMachine), ("approximate", test_stateful.ApproximateStoreMachine))
    for name, machine in machines:
        test_stateful.FIGURES = test_stateful.FuzzFigures()  # the machines count into the module's FIGURES
        test_stateful.run_fuzz(machine, args.fuzz_examples, args.fuzz_steps)
        figures = asdict(test_stateful.FIGURES)
        figures["recall"] = round(figures["returned_expected"] / max(figures["expected_results"], 1), 4)
        out["fuzzing"][name] = figures
    print("injected faults and hostile input ...", flush=True)
    out["faults"] = _suite(FAULT_SUITES)
    out["inputs"] = _suite(INPUT_SUITES)
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def readme_block(figures: dict[str, Any]) -> str:
    crash, threads, fuzz = figures["crash"], figures["concurrency"], figures["fuzzing"]
    ops = threads["operations"]
    rows = [
        ("Crash (SIGKILL at random moments, reopen, check)",
         f"{crash['trials']} trials, {crash['writes_acknowledged']:,} acknowledged writes "
         f"({crash['operations_acknowledged']:,} operations), kills inside an operation: "
         f"{sum(crash['in_flight_at_kill'].values())}, warm index repaired at {crash['warm_repairs']} reopens",
         f"lost {crash['lost']}, phantoms {crash['phantoms']}, not found by their own vector "
         f"{crash['search_misses']} of {crash['searched']:,}, invariant violations {crash['invariant_violations']}, "
         f"logged errors {crash['logged_errors']}"),
        ("Concurrency (8 threads)",
         f"{threads['seconds']} s, " + ", ".join(f"{name} {count:,}" for name, count in sorted(ops.items())),
         f"errors {len(threads['unexpected_errors'])}, deleted returned {threads['deleted_returned']}, "
         f"content mismatches {threads['content_mismatches']}, base memories missed {threads['base_missed']}, "
         f"invariant violations {len(threads['invariant_violations'])}"),
        ("Model-based fuzzing, exact search",
         f"{fuzz['exact']['runs']} sequences, {fuzz['exact']['steps']:,} steps, {fuzz['exact']['searches']:,} searches",
         "every answer agreed with the model" if fuzz["exact"]["returned_expected"] ==
         fuzz["exact"]["expected_results"] else "DISAGREED with the model"),
        ("Model-based fuzzing, warm graph + cold scan",
         f"{fuzz['approximate']['runs']} sequences, {fuzz['approximate']['steps']:,} steps, "
         f"{fuzz['approximate']['searches']:,} searches",
         f"recall {fuzz['approximate']['recall']:.4f} of the model's results"),
        ("Injected faults (damaged files, stale state, second process, full map, full disk)",
         f"{sum(figures['faults'].values())} cases", _outcomes(figures["faults"])),
        ("Hostile and strange input", f"{sum(figures['inputs'].values())} cases", _outcomes(figures["inputs"])),
    ]
    lines = [BEGIN, "", f"Run `{figures['command']}` on {figures['date'][:10]} "
             f"({figures['machine']['cpus']} CPUs, Python {figures['machine']['python']}), "
             f"{figures['seconds']:.0f} s; figures from `benchmarks/results/reliability.json`:", "",
             "| test | tried | result |", "|---|---|---|"]
    lines += [f"| {name} | {tried} | {result} |" for name, tried, result in rows]
    return "\n".join(lines + ["", END])


def _outcomes(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def update_readme(figures: dict[str, Any]) -> None:
    text = README.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + readme_block(figures) + text[stop:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200, help="crash trials (kills)")
    parser.add_argument("--concurrency-seconds", type=float, default=60.0)
    parser.add_argument("--fuzz-examples", type=int, default=300, help="hypothesis sequences per machine")
    parser.add_argument("--fuzz-steps", type=int, default=60, help="steps per sequence at most")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--update-readme", action="store_true", help="put the figures in README.md")
    parser.add_argument("--readme-only", action="store_true", help="rewrite README.md from --out, run nothing")
    args = parser.parse_args()
    if args.readme_only:
        update_readme(json.loads(args.out.read_text()))
        return
    figures = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(readme_block(figures))
    if args.update_readme:
        update_readme(figures)


if __name__ == "__main__":
    main()
