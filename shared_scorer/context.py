"""Who is asking and about what: the call's scope, its context, and the fingerprints that key the cache.

Both adapters build a :class:`CallContext` with :func:`build_context`; the cascade hands it to the answer
cache and the budget (their protocols are in :mod:`shared_scorer.protocols`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared_scorer.errors import ConfigurationError

__all__ = [
    "CallContext",
    "Scope",
    "build_context",
    "check_max_tokens",
    "fingerprint_of",
    "input_tokens_bound",
]


def check_max_tokens(value: object, name: str = "max_tokens") -> int | None:
    """``value`` as a number of output tokens: ``None`` or a positive ``int``, else a
    :class:`~shared_scorer.errors.ConfigurationError` naming ``name`` and the value.

    A negative, zero, boolean, fractional or textual ``max_tokens`` would make a budget reserve a
    negative or meaningless worst case; it is refused before any provider is called.

    >>> check_max_tokens(256), check_max_tokens(None)
    (256, None)
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive whole number of tokens, got {value!r}")
    return value


@dataclass(frozen=True)
class Scope:
    """Who a call is for. Cache entries and budgets never cross scopes."""

    tenant: str = "default"
    user: str = "default"


@dataclass(frozen=True)
class CallContext:
    """What the core knows about one call beyond the query text.

    ``fingerprint`` digests everything besides the question that makes an answer valid (system prompt,
    earlier turns, tool set, output schema, strategy): a cached answer is served only to a call with the
    same scope and fingerprint. ``input_tokens_bound`` is an upper bound of any stage's input tokens (the
    prompt's UTF-8 byte count: a BPE token is never shorter than a byte). ``max_output_tokens`` is the
    call's own ``max_tokens`` (``None`` when it sets none): a positive int, else a
    :class:`~shared_scorer.errors.ConfigurationError`. ``cacheable`` is false for calls whose answer
    must not be reused (tool calling, for example).
    """

    scope: Scope = field(default_factory=Scope)
    fingerprint: str = ""
    input_tokens_bound: int = 0
    max_output_tokens: int | None = None
    cacheable: bool = True
    strategy: str = ""
    """The fitted strategy the call runs under (cache entries are tagged with it for invalidation)."""

    def __post_init__(self) -> None:
        check_max_tokens(self.max_output_tokens, "max_output_tokens (the call's max_tokens)")
        bound = self.input_tokens_bound
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
            raise ConfigurationError(f"input_tokens_bound must be a whole number >= 0, got {bound!r}")


def fingerprint_of(parts: Iterable[Any]) -> str:
    """A stable SHA-256 of JSON-serialisable parts (sorted keys; non-JSON values by ``str``)."""
    text = json.dumps(list(parts), sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def input_tokens_bound(texts: Iterable[str], messages: int) -> int:
    """An upper bound of the input tokens of a prompt: its UTF-8 bytes (a BPE token is at least one
    byte), plus 16 per message and 64 overall for role and formatting tokens."""
    return sum(len(t.encode("utf-8")) for t in texts) + 16 * messages + 64


def build_context(
    turns: Sequence[tuple[str, str]],
    *,
    scope: Scope,
    tools: Any = None,
    output_schema: Any = None,
    strategy: str = "",
    max_output_tokens: int | None = None,
    cacheable: bool = True,
) -> CallContext:
    """The :class:`CallContext` of a conversation given as ``(role, text)`` turns.

    Roles are normalised (``user``, ``assistant``, ``system``, ``tool``) so that both adapters give the
    same fingerprint for the same conversation. The last user turn is the query itself and is left out
    of the fingerprint (the cache matches it separately); every other turn, in order, is in it.
    """
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=len(turns) - 1)
    others = [(role, "<query>" if i == last_user else text) for i, (role, text) in enumerate(turns)]
    tools_json = json.dumps(tools, sort_keys=True, default=str) if tools else ""
    return CallContext(
        scope=scope,
        fingerprint=fingerprint_of([others, tools_json, output_schema, strategy]),
        input_tokens_bound=input_tokens_bound([*(t for _, t in turns), tools_json], len(turns)),
        max_output_tokens=max_output_tokens,
        cacheable=cacheable,
        strategy=strategy,
    )
