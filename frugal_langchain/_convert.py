"""Translation between LangChain messages and the core's types. No decisions are made here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.utils.function_calling import convert_to_openai_tool

from shared_scorer.outcome import CascadeResult, StageOutput, ToolCall, sum_logprobs
from shared_scorer.tools import ToolSpec


def query_text(messages: Sequence[BaseMessage]) -> str:
    """The text the scorer rates an answer against: the last human message (else the last message)."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text
    return messages[-1].text if messages else ""


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}


def turns(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    """The conversation as the core's ``(role, text)`` turns (tool calls included as text)."""
    out = []
    for message in messages:
        text = str(message.text)
        if isinstance(message, AIMessage) and message.tool_calls:
            text += "".join(f"\n<tool_call {c['name']} {c['args']}>" for c in message.tool_calls)
        out.append((_ROLES.get(message.type, message.type), text))
    return out


def to_output(message: BaseMessage) -> StageOutput:
    """A child's reply as a :class:`StageOutput` (unparseable tool calls listed as problems)."""
    if not isinstance(message, AIMessage):
        raise TypeError(f"stage returned {type(message).__name__}, expected an AIMessage")
    usage = message.usage_metadata
    calls = tuple(ToolCall(c["name"], c["args"], c.get("id")) for c in message.tool_calls)
    problems = tuple(
        f"tool call {c.get('name')!r}: arguments do not parse: {c.get('error') or c.get('args')!r:.120}"
        for c in message.invalid_tool_calls
    )
    output = StageOutput(
        text=message.text,
        input_tokens=usage["input_tokens"] if usage else None,
        output_tokens=usage["output_tokens"] if usage else None,
        tool_calls=calls,
        payload=message,
        problems=problems,
        truncated=message.response_metadata.get("finish_reason") == "length",
        logprob=sum_logprobs(message.response_metadata.get("logprobs")),
    )
    return output


def tool_specs(tools: Sequence[dict[str, Any]]) -> list[ToolSpec]:
    """OpenAI-format tool dicts (as ``bind_tools`` stores them) as the core's :class:`ToolSpec`."""
    return [ToolSpec(t["function"]["name"], t["function"].get("parameters") or {}) for t in tools]


def format_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    return [convert_to_openai_tool(t) for t in tools]


def required_tool(tool_choice: Any) -> str | None:
    """What ``tool_choice`` demands: ``None`` (nothing), ``"any"`` or one tool's name."""
    if tool_choice in (None, "auto", "none", False):
        return None
    if tool_choice in ("any", "required", True):
        return "any"
    if isinstance(tool_choice, str):
        return tool_choice
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        return str(name) if name else "any"
    return None


def final_metadata(result: CascadeResult) -> tuple[dict[str, Any], dict[str, int]]:
    """``response_metadata`` additions and ``usage_metadata`` for the cascade's answer.

    Usage counts the tokens of every stage called (rejected ones too): what the call consumed.
    """
    response = {"model_name": result.model, "frugal": result.trail()}
    usage = {
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "total_tokens": result.input_tokens + result.output_tokens,
    }
    return response, usage


def final_message(result: CascadeResult) -> AIMessage:
    """The accepted stage's message (or the cached answer), carrying the whole trail and the summed usage."""
    assert result.output is not None
    message = result.output.payload or AIMessage(content=result.output.text)
    response, usage = final_metadata(result)
    return message.model_copy(
        update={
            "response_metadata": {**message.response_metadata, **response},
            "usage_metadata": usage,
        }
    )


def strip_chunk(chunk: ChatGenerationChunk | AIMessageChunk) -> ChatGenerationChunk:
    """A live child chunk without the child's metadata (the cascade adds its own at the end)."""
    message = chunk.message if isinstance(chunk, ChatGenerationChunk) else chunk
    assert isinstance(message, AIMessageChunk)
    clean = message.model_copy(
        update={"response_metadata": {}, "usage_metadata": None, "chunk_position": None, "id": None}
    )
    return ChatGenerationChunk(message=clean)


def closing_chunk(result: CascadeResult, *, with_answer: bool) -> ChatGenerationChunk:
    """The last chunk: the whole answer when it was buffered, else only metadata."""
    response, usage = final_metadata(result)
    content: Any = ""
    chunks = []
    if with_answer and result.output is not None:
        message = result.output.payload or AIMessage(content=result.output.text)
        content = message.content
        chunks = [
            tool_call_chunk(name=c["name"], args=_json(c["args"]), id=c.get("id"), index=i)
            for i, c in enumerate(message.tool_calls)
        ]
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=content,
            tool_call_chunks=chunks,
            response_metadata=response,
            usage_metadata=usage,  # type: ignore[arg-type]
            chunk_position="last",
        )
    )


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
