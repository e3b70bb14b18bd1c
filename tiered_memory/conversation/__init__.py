"""Conversations: the token-bounded working memory (session), topic prefetch, token counting.

Names of the former ``tiered_memory.conversation`` module resolve here on first use, so that
importing the package (prefetch does) loads no tokenizer."""

from typing import Any

_SESSION = ("Conversation", "ConversationBuffer", "Message", "MessageTooLargeError")


def __getattr__(name: str) -> Any:
    if name not in _SESSION:
        raise AttributeError(f"module 'tiered_memory.conversation' has no attribute {name!r}")
    from tiered_memory.conversation import session

    return getattr(session, name)
