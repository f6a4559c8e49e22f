"""Checking an answer's tool calls against the tools offered, framework-free.

A tool call whose name is unknown or whose arguments do not fit the tool's JSON schema makes the answer
invalid, so the cascade escalates instead of handing a broken call to an agent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema
from jsonschema.protocols import Validator as SchemaValidator

from shared_scorer.outcome import StageOutput


@dataclass(frozen=True)
class ToolSpec:
    """A tool as offered to the model: its name and the JSON schema of its arguments."""

    name: str
    parameters: Mapping[str, Any]


@lru_cache(maxsize=256)
def _compiled(schema_json: str) -> SchemaValidator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)  # type: ignore[no-any-return]


class ToolCallValidator:
    """Validates the tool calls of a :class:`StageOutput`.

    ``required`` is ``None`` (calls optional), ``"any"`` (at least one call) or a tool name (a call to
    that tool). Call it with an output; it returns ``None`` when valid, else the reason.

    >>> check = ToolCallValidator([ToolSpec("add", {"type": "object", "properties": {"a": {"type": "integer"}},
    ...                                            "required": ["a"]})], required="add")
    >>> from shared_scorer.outcome import ToolCall
    >>> check(StageOutput("", tool_calls=(ToolCall("add", {"a": "x"}),)))
    "tool call 'add': arguments do not fit its schema: 'x' is not of type 'integer' (at a)"
    """

    def __init__(self, tools: Sequence[ToolSpec], required: str | None = None) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.required = required
        self._validators = {tool.name: _compiled(json.dumps(tool.parameters, sort_keys=True)) for tool in tools}

    def __call__(self, output: StageOutput) -> str | None:
        if self.required is not None and not output.tool_calls:
            wanted = "a tool call" if self.required == "any" else f"a call to tool {self.required!r}"
            return f"expected {wanted}, got none"
        for call in output.tool_calls:
            if call.name not in self.tools:
                return f"tool call to unknown tool {call.name!r} (offered: {sorted(self.tools)})"
            if self.required not in (None, "any") and call.name != self.required:
                return f"expected a call to tool {self.required!r}, got {call.name!r}"
            errors = sorted(self._validators[call.name].iter_errors(dict(call.arguments)), key=str)
            if errors:
                first = errors[0]
                path = ".".join(str(p) for p in first.absolute_path) or "arguments"
                return f"tool call {call.name!r}: arguments do not fit its schema: {first.message} (at {path})"
        return None


def parse_arguments(name: str, raw: str | Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """Parse a tool call's arguments; returns ``(arguments, None)`` or ``(None, reason)``."""
    if raw is None or raw == "":
        return {}, None
    if isinstance(raw, Mapping):
        return dict(raw), None
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as exc:
        return None, f"tool call {name!r}: arguments are not valid JSON ({exc}): {str(raw)[:80]!r}"
    if not isinstance(value, dict):
        return None, f"tool call {name!r}: arguments must be a JSON object, got {type(value).__name__}"
    return value, None
