"""Replay scenarios: scripted answers (usually tool calls) that the replay server gives before its records,
and the faults it can inject."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared_scorer.errors import ConfigurationError
from shared_scorer.server.wire import Reply, ToolCall

FAULT_KINDS: tuple[str, ...] = ("429", "500", "hang", "malformed", "garbage")
"""The faults :meth:`~shared_scorer.server.replay.ReplayServer.set_fault` can inject (see that module's docstring)."""

MALFORMED_BODY = '{"id": "chatcmpl-replay-malformed", "choices": ['
"""The body of a ``malformed`` fault: declared ``application/json``, but cut off mid-way."""


@dataclass(frozen=True)
class Scenario:
    """A scripted answer (usually tool calls) that takes precedence over the recorded answers.

    It applies to a request whose model is ``model`` (or any model when ``model`` is ``"*"``), whose last
    user message contains ``match``, and whose last message is a ``tool`` message exactly when
    ``after_tool`` is true (so an agent's second turn, after running the tool, gets the final answer).
    """

    model: str
    match: str
    reply: Reply
    after_tool: bool = False

    @classmethod
    def from_dict(cls, raw: object, where: str = "scenario") -> Scenario:
        """Validate ``{"model", "match", "tool_calls"?, "content"?, "usage"?, "after_tool"?}``."""
        if not isinstance(raw, Mapping):
            raise ConfigurationError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        for name in ("model", "match"):
            if not isinstance(raw.get(name), str):
                raise ConfigurationError(f"{where}: field {name!r} must be a string, got {raw.get(name)!r}")
        content = raw.get("content")
        if content is not None and not isinstance(content, str):
            raise ConfigurationError(f"{where}: field 'content' must be a string or null, got {content!r}")
        after_tool = raw.get("after_tool", False)
        if not isinstance(after_tool, bool):
            raise ConfigurationError(f"{where}: field 'after_tool' must be a boolean, got {after_tool!r}")
        calls = tuple(_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in _items(raw, where))
        if content is None and not calls:
            raise ConfigurationError(f"{where}: needs 'content' or a non-empty 'tool_calls'")
        reply = Reply(content=content, tool_calls=calls, usage=_usage(raw.get("usage"), where))
        return cls(model=raw["model"], match=raw["match"], reply=reply, after_tool=after_tool)

    def applies(self, model: str, user_text: str, last_role: str | None) -> bool:
        """Whether this scenario answers a request (see the class docstring)."""
        return self.model in ("*", model) and self.match in user_text and (last_role == "tool") == self.after_tool


def _items(raw: Mapping[str, Any], where: str) -> list[tuple[int, object]]:
    calls = raw.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ConfigurationError(f"{where}: field 'tool_calls' must be a list, got {calls!r}")
    return list(enumerate(calls))


def _tool_call(raw: object, where: str) -> ToolCall:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ConfigurationError(f"{where}: expected an object with a string 'name', got {raw!r}")
    arguments = raw.get("arguments", {})
    if isinstance(arguments, Mapping):
        arguments = json.dumps(arguments)
    if not isinstance(arguments, str):
        raise ConfigurationError(f"{where}: 'arguments' must be a string or an object, got {arguments!r}")
    return ToolCall(name=raw["name"], arguments=arguments)


def _usage(raw: object, where: str) -> tuple[int, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"{where}: field 'usage' must be an object, got {raw!r}")
    counts = [raw.get("prompt_tokens"), raw.get("completion_tokens")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        raise ConfigurationError(f"{where}: 'usage' needs non-negative integer prompt/completion_tokens")
    return (int(raw["prompt_tokens"]), int(raw["completion_tokens"]))
