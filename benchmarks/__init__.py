"""pytest-benchmark suite (run: pytest benchmarks/ --benchmark-only)."""
