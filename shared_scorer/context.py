"""Who is asking and about what: the call's scope, its context, and the fingerprints that key the cache.

Both adapters build a :class:`CallContext` with :func:`build_context`; the cascade hands it to the answer
cache and the budget (their protocols are in :mod:`shared_scorer.protocols`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared_scorer.errors import ConfigurationError

__all__ = [
    "CallContext",
    "Scope",
    "TENANT_WIDE",
    "build_context",
    "check_max_tokens",
    "fingerprint_of",
    "input_tokens_bound",
    "render_profile",
    "split_conversation",
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


TENANT_WIDE = ""
"""The user of a tenant-wide cache scope (:attr:`CallContext.cache_scope`)."""


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

    What the scorer sees besides the query (see :class:`~shared_scorer.scoring.base.ScoreRequest`):
    ``system`` (the system prompt), ``history`` (earlier turns as ``"role: text"``), ``tool_results``
    (the tool outputs the answer is built on) and ``profile``, the caller's profile as text (a mapping
    given here is rendered with :func:`render_profile`).

    >>> CallContext(profile={"tier": "gold", "locale": "fr-FR"}).profile  # type: ignore[arg-type]
    'locale: fr-FR; tier: gold'
    """

    scope: Scope = field(default_factory=Scope)
    fingerprint: str = ""
    input_tokens_bound: int = 0
    max_output_tokens: int | None = None
    cacheable: bool = True
    strategy: str = ""
    """The fitted strategy the call runs under (cache entries are tagged with it for invalidation)."""
    tier: str = ""
    """The caller tier the call runs in (``""``: the model's own point; see :mod:`shared_scorer.adapters.tiers`)."""
    share_cache: bool = False
    """Whether the tenant's users share cached answers (its ``share_cache_within_tenant``): the cache then
    keys entries by :attr:`cache_scope`; budgets and costs still see :attr:`scope`, the user's own."""
    system: str = ""
    history: tuple[str, ...] = ()
    tool_results: tuple[str, ...] = ()
    profile: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.profile, str):
            object.__setattr__(self, "profile", render_profile(self.profile))
        check_max_tokens(self.max_output_tokens, "max_output_tokens (the call's max_tokens)")
        bound = self.input_tokens_bound
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 0:
            raise ConfigurationError(f"input_tokens_bound must be a whole number >= 0, got {bound!r}")

    @property
    def cache_scope(self) -> Scope:
        """The scope the answer cache keys this call's entries by: the call's own, or with ``share_cache``
        the tenant's (user :data:`TENANT_WIDE`, which no caller can name: the adapters and ``frugal serve``
        turn an empty user into ``"default"``). Entries never cross tenants either way.

        >>> CallContext(Scope("acme", "bob"), share_cache=True).cache_scope
        Scope(tenant='acme', user='')
        """
        return Scope(self.scope.tenant, TENANT_WIDE) if self.share_cache else self.scope


def render_profile(profile: object) -> str:
    """A caller profile as text: a string as given (stripped), a mapping as ``key: value`` pairs sorted by
    key and joined by ``"; "`` (values that are not strings as sorted-key JSON), ``None`` as ``""``.

    The same profile always gives the same text, whatever order its keys came in.

    >>> render_profile({"tier": "gold", "limits": {"words": 20}})
    'limits: {"words": 20}; tier: gold'
    """
    if profile is None:
        return ""
    if isinstance(profile, str):
        return profile.strip()
    if isinstance(profile, Mapping):
        items = sorted((str(k), v) for k, v in profile.items())
        return "; ".join(
            f"{k}: {v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)}"
            for k, v in items
        )
    raise ConfigurationError(f"profile must be a string or a mapping, got {type(profile).__name__}")


_SYSTEM_ROLES = frozenset({"system", "developer"})


def split_conversation(turns: Sequence[tuple[str, str]]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """``(system, history, tool_results)`` of a conversation given as ``(role, text)`` turns.

    The query is the last user turn (else the last turn). ``system`` joins the system (and developer)
    turns with newlines; ``tool_results`` are the texts of the tool turns after the query (what the
    answer is built on); ``history`` is every other non-empty turn as ``"role: text"``, in order.

    >>> split_conversation([("system", "Be brief."), ("user", "hi"), ("assistant", "hello"), ("user", "2+2?"),
    ...                     ("tool", "4")])
    ('Be brief.', ('user: hi', 'assistant: hello'), ('4',))
    """
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=len(turns) - 1)
    system = "\n".join(text for role, text in turns if role in _SYSTEM_ROLES and text)
    history: list[str] = []
    tool_results: list[str] = []
    for i, (role, text) in enumerate(turns):
        if i == last_user or role in _SYSTEM_ROLES or not text:
            continue
        if role == "tool" and i > last_user:
            tool_results.append(text)
        else:
            history.append(f"{role}: {text}")
    return system, tuple(history), tuple(tool_results)


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
    tier: str = "",
    share_cache: bool = False,
    profile: object = None,
) -> CallContext:
    """The :class:`CallContext` of a conversation given as ``(role, text)`` turns.

    Roles are normalised (``user``, ``assistant``, ``system``, ``tool``) so that both adapters give the
    same fingerprint for the same conversation. The last user turn is the query itself and is left out
    of the fingerprint (the cache matches it separately); every other turn, in order, is in it.

    The scorer's view of the conversation comes from :func:`split_conversation`; ``profile`` (a string
    or a mapping, see :func:`render_profile`) is the caller's profile. A profile joins the fingerprint
    (an answer accepted for one caller is not served to another); without one the fingerprint is unchanged.
    """
    last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=len(turns) - 1)
    others = [(role, "<query>" if i == last_user else text) for i, (role, text) in enumerate(turns)]
    tools_json = json.dumps(tools, sort_keys=True, default=str) if tools else ""
    profile_text = render_profile(profile)
    parts: list[Any] = [others, tools_json, output_schema, strategy]
    if profile_text:
        parts.append({"profile": profile_text})
    system, history, tool_results = split_conversation(turns)
    return CallContext(
        scope=scope,
        fingerprint=fingerprint_of(parts),
        input_tokens_bound=input_tokens_bound([*(t for _, t in turns), tools_json], len(turns)),
        max_output_tokens=max_output_tokens,
        cacheable=cacheable,
        strategy=strategy,
        tier=tier,
        share_cache=share_cache,
        system=system,
        history=history,
        tool_results=tool_results,
        profile=profile_text,
    )
