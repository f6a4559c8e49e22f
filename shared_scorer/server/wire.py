"""The one OpenAI chat-completions wire encoder: replies, completion bodies, stream chunks, usage, errors.

Both servers speak through it: ``frugal serve`` (:mod:`shared_scorer.server.gateway`) and the replay
server (:mod:`shared_scorer.server.replay`). Everything here is pure (no sockets, no threads).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

CHUNK_CHARS = 20
"""Streamed content and tool-call arguments are cut into pieces of this many characters."""


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asks for; ``arguments`` is sent verbatim (it need not be valid JSON)."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Reply:
    """What the server answers to one request, before it is put in the wire format."""

    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: tuple[int, int] | None = None
    """``(prompt_tokens, completion_tokens)``, or None to leave ``usage`` out of the response."""
    truncated: bool = False
    """Cut at the request's output-token limit (``finish_reason: "length"``)."""
    logprob: float | None = None
    """The answer's log-probability, sent as ``choices[0].logprobs`` (see :func:`logprob_tokens`);
    None leaves ``logprobs`` null, as OpenAI does when they are not asked for."""
    top_logprobs: int = 0
    """How many alternatives each token's ``top_logprobs`` lists (the request's ``top_logprobs``); the
    only one known is the chosen token itself."""

    @property
    def finish_reason(self) -> str:
        if self.truncated:
            return "length"
        return "tool_calls" if self.tool_calls else "stop"


def message_text(content: object) -> str:
    """The text of a message's ``content``: a string, or the concatenated text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (part if isinstance(part, str) else part.get("text") for part in content)
        return "".join(part for part in parts if isinstance(part, str))
    return ""


def last_user_text(messages: Sequence[object]) -> str:
    """The text of the last ``user`` message, or ``""`` when there is none."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def last_role(messages: Sequence[object]) -> str | None:
    """The role of the last message, if it has one."""
    if messages and isinstance(messages[-1], Mapping):
        role = messages[-1].get("role")
        return role if isinstance(role, str) else None
    return None


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> JSON:
    """An error in OpenAI's format."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage_body(usage: tuple[int, int]) -> JSON:
    prompt, completion = usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_calls_body(reply: Reply, call_ids: Sequence[str]) -> list[JSON]:
    return [
        {"id": call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call_id, call in zip(call_ids, reply.tool_calls, strict=True)
    ]


def logprob_tokens(reply: Reply) -> list[JSON] | None:
    """The ``choices[0].logprobs.content`` token entries of ``reply``, or None when it carries no logprob.

    The answer's "tokens" are its stream pieces (:func:`split_text`; one empty token for an empty answer),
    so a streamed chunk carries exactly its piece's tokens. The whole log-probability is put on the first
    token and ``0.0`` on the rest, so the tokens' log-probabilities sum to exactly ``reply.logprob``.
    """
    if reply.logprob is None:
        return None
    tokens = []
    for i, piece in enumerate(split_text(reply.content or "") or [""]):
        token: JSON = {"token": piece, "logprob": reply.logprob if i == 0 else 0.0, "bytes": list(piece.encode())}
        tokens.append({**token, "top_logprobs": [token] if reply.top_logprobs > 0 else []})
    return tokens


def _logprobs_body(tokens: list[JSON]) -> JSON:
    return {"content": tokens, "refusal": None}


def completion_body(reply: Reply, *, completion_id: str, model: str, created: int, call_ids: Sequence[str]) -> JSON:
    """A whole ``chat.completion`` object."""
    message: JSON = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = _tool_calls_body(reply, call_ids)
    body: JSON = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish_reason}],
    }
    tokens = logprob_tokens(reply)
    if tokens is not None:
        body["choices"][0]["logprobs"] = _logprobs_body(tokens)
    if reply.usage is not None:
        body["usage"] = usage_body(reply.usage)
    return body


def chunk_body(delta: JSON, *, completion_id: str, model: str, created: int, finish_reason: str | None = None) -> JSON:
    """One ``chat.completion.chunk`` object with one choice carrying ``delta``."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def split_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of ``size`` characters that join back to exactly ``text``."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def stream_chunks(
    reply: Reply,
    *,
    completion_id: str,
    model: str,
    created: int,
    call_ids: Sequence[str],
    include_usage: bool,
) -> Iterator[JSON]:
    """The ``chat.completion.chunk`` objects of a streamed reply, as OpenAI sends them.

    A first chunk with the role, the content in pieces, for each tool call a chunk with its id and name
    followed by its arguments in pieces, a chunk with the ``finish_reason`` and, when ``include_usage``
    is asked for and the usage is known, a last chunk with no choices and the usage. When the reply
    carries a logprob, each content chunk's ``choices[0].logprobs`` holds its piece's token (an empty
    answer's one token rides on the first chunk).
    """

    def chunk(delta: JSON, finish_reason: str | None = None, tokens: list[JSON] | None = None) -> JSON:
        body = chunk_body(delta, completion_id=completion_id, model=model, created=created, finish_reason=finish_reason)
        if tokens is not None:
            body["choices"][0]["logprobs"] = _logprobs_body(tokens)
        if include_usage:
            body["usage"] = None
        return body

    first_content = "" if reply.content is not None or not reply.tool_calls else None
    tokens = logprob_tokens(reply)
    pieces = split_text(reply.content or "")
    first_tokens = tokens if tokens is not None and not pieces else None
    yield chunk({"role": "assistant", "content": first_content, "refusal": None}, tokens=first_tokens)
    for i, piece in enumerate(pieces):
        yield chunk({"content": piece}, tokens=None if tokens is None else [tokens[i]])
    for index, (call_id, call) in enumerate(zip(call_ids, reply.tool_calls, strict=True)):
        head = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield chunk({"tool_calls": [head]})
        for piece in split_text(call.arguments):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, reply.finish_reason)
    if include_usage and reply.usage is not None:
        yield {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage_body(reply.usage),
        }
