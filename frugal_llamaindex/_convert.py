"""Translation between LlamaIndex chat types and the core's. No decisions are made here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, ToolCallBlock
from llama_index.core.tools import BaseTool

from shared_scorer.outcome import CascadeResult, StageOutput, ToolCall, sum_logprobs
from shared_scorer.tools import ToolSpec, parse_arguments


def query_text(messages: Sequence[ChatMessage]) -> str:
    """The text the scorer rates an answer against: the last user message (else the last message)."""
    for message in reversed(messages):
        if message.role == MessageRole.USER:
            return message.content or ""
    return (messages[-1].content or "") if messages else ""


def turns(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """The conversation as the core's ``(role, text)`` turns (tool calls included as text)."""
    out = []
    for message in messages:
        role = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
        text = message.content or ""
        calls = [(name, args) for name, _, args in _raw_tool_calls(message)]
        if calls:
            parsed = [(name, parse_arguments(name, args)[0]) for name, args in calls]
            text += "".join(f"\n<tool_call {name} {args}>" for name, args in parsed)
        out.append(({"function": "tool", "model": "assistant", "chatbot": "assistant"}.get(role, role), text))
    return out


def _usage(response: ChatResponse) -> tuple[int | None, int | None]:
    extra = response.additional_kwargs or {}
    if "prompt_tokens" in extra and "completion_tokens" in extra:
        return int(extra["prompt_tokens"]), int(extra["completion_tokens"])
    usage = getattr(response.raw, "usage", None)
    if usage is None and isinstance(response.raw, dict):
        usage = response.raw.get("usage")
    if usage is None:
        return None, None
    get = usage.get if isinstance(usage, dict) else lambda k: getattr(usage, k, None)
    tokens_in, tokens_out = get("prompt_tokens"), get("completion_tokens")
    if tokens_in is None or tokens_out is None:
        return None, None
    return int(tokens_in), int(tokens_out)


def _raw_tool_calls(message: ChatMessage) -> list[tuple[str, str | None, Any]]:
    """(name, id, raw arguments) of every tool call, from blocks or the older additional_kwargs."""
    calls: list[tuple[str, str | None, Any]] = [
        (b.tool_name, b.tool_call_id, b.tool_kwargs) for b in message.blocks if isinstance(b, ToolCallBlock)
    ]
    if calls:
        return calls
    for call in message.additional_kwargs.get("tool_calls") or []:
        function = getattr(call, "function", None) or (call.get("function") if isinstance(call, dict) else None)
        if function is None:
            continue
        name = getattr(function, "name", None) or (function.get("name") if isinstance(function, dict) else "")
        args = getattr(function, "arguments", None)
        if args is None and isinstance(function, dict):
            args = function.get("arguments")
        call_id = getattr(call, "id", None) or (call.get("id") if isinstance(call, dict) else None)
        calls.append((str(name), call_id, args))
    return calls


def to_output(response: ChatResponse) -> StageOutput:
    """A stage's ``ChatResponse`` as a :class:`StageOutput`; unparseable tool arguments are problems."""
    if not isinstance(response, ChatResponse):
        raise TypeError(f"stage returned {type(response).__name__}, expected a ChatResponse")
    calls: list[ToolCall] = []
    problems: list[str] = []
    for name, call_id, raw in _raw_tool_calls(response.message):
        arguments, problem = parse_arguments(name, raw)
        if problem is not None:
            problems.append(problem)
        else:
            assert arguments is not None
            calls.append(ToolCall(name, arguments, call_id))
    tokens_in, tokens_out = _usage(response)
    return StageOutput(
        text=response.message.content or "",
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        tool_calls=tuple(calls),
        payload=response,
        problems=tuple(problems),
        truncated=finish_reason(response) == "length",
        logprob=logprob(response),
    )


def logprob(response: ChatResponse) -> float | None:
    """The sum of the token log-probabilities in the raw reply's first choice (``choices[0].logprobs.content``,
    a whole reply's or one streamed chunk's), or None when it carries none. (``ChatResponse.logprobs`` is
    not read: LlamaIndex fills it with each token's ``top_logprobs`` alternatives, not the chosen token.)"""
    logprobs = _first_choice_field(response, "logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else getattr(logprobs, "content", None)
    return sum_logprobs(content)


def total_logprob(values: Sequence[float | None]) -> float | None:
    """The sum of streamed chunks' log-probabilities (chunks without any skipped), or None when none had any."""
    present = [value for value in values if value is not None]
    return math.fsum(present) if present else None


def finish_reason(response: ChatResponse) -> str | None:
    """The provider's ``finish_reason`` of the first choice, when the raw reply carries one."""
    reason = _first_choice_field(response, "finish_reason")
    return reason if isinstance(reason, str) else None


def _first_choice_field(response: ChatResponse, name: str) -> Any:
    """Field ``name`` of the raw reply's first choice (an OpenAI object or a plain dict), or None."""
    choices = getattr(response.raw, "choices", None)
    if choices is None and isinstance(response.raw, Mapping):
        choices = response.raw.get("choices")
    if not choices:
        return None
    first = choices[0]
    return first.get(name) if isinstance(first, Mapping) else getattr(first, name, None)


def tool_specs(tools: Sequence[BaseTool]) -> list[ToolSpec]:
    return [ToolSpec(t.metadata.get_name(), t.metadata.get_parameters_dict()) for t in tools]


def final_response(result: CascadeResult) -> ChatResponse:
    """The accepted stage's response with the trail in ``additional_kwargs["frugal"]``."""
    assert result.output is not None
    response: ChatResponse = result.output.payload or ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=result.output.text)
    )
    extra = {
        **response.additional_kwargs,
        "frugal": result.trail(),
        "model_name": result.model,
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.input_tokens + result.output_tokens,
    }
    return response.model_copy(update={"additional_kwargs": extra})


def closing_response(result: CascadeResult, text: str, *, with_answer: bool) -> ChatResponse:
    """The last streamed response: the whole answer when buffered, else the streamed text, plus the trail."""
    final = final_response(result)
    if with_answer:
        return final.model_copy(update={"delta": final.message.content or ""})
    message = final.message.model_copy(update={"content": text})
    return final.model_copy(update={"message": message, "delta": ""})
