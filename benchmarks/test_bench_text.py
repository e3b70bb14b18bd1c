"""search(text) with encoding: the encoder alone, ours, and the article's design (Chroma + ST)."""

from __future__ import annotations

import pytest

from tiered_memory.bench.runner import NAMESPACE
from tiered_memory.bench.workload import K

from .conftest import peer_or_skip

pytestmark = [pytest.mark.benchmark(group="search(text) k=10", warmup=False), pytest.mark.model]


@pytest.fixture(scope="module")
def texts(bench) -> list[str]:
    if bench.workload.query_texts is None:
        pytest.skip("the workload has no texts")
    return list(bench.workload.query_texts)


def test_encoder_alone(benchmark, texts) -> None:
    from tiered_memory import MiniLMEncoder

    encoder = MiniLMEncoder()
    encoder.encode(["load the model"])
    stream = iter(texts)
    benchmark.pedantic(lambda: encoder.encode([next(stream)]), rounds=min(200, len(texts)))


def test_ours_text_search_uncached(benchmark, bench, texts) -> None:
    mem = bench.engine()  # opened with the bundled encoder: the workload has texts
    mem.search("load the model", k=K, namespace=NAMESPACE)
    stream = iter(texts)  # every text is new, so each search encodes its query
    benchmark.pedantic(lambda: mem.search(next(stream), k=K, namespace=NAMESPACE), rounds=min(200, len(texts)))


def test_chroma_design(benchmark, bench, texts) -> None:
    chroma = peer_or_skip(bench, "chromadb")
    if chroma.model_path is None:
        pytest.skip("Chroma was built without texts")
    chroma.search_text("load the model", K)
    stream = iter(texts)
    benchmark.pedantic(lambda: chroma.search_text(next(stream), K), rounds=min(200, len(texts)))
