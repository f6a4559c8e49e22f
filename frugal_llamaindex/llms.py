"""``FrugalLLM``: a FrugalGPT cascade of LlamaIndex LLMs behind one ``FunctionCallingLLM``."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.span import active_span_id
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from llama_index.core.tools import BaseTool

from frugal_llamaindex import _convert
from shared_scorer.adapters.settings import CascadeSettings
from shared_scorer.cascade import Validator
from shared_scorer.context import CallContext
from shared_scorer.errors import ConfigurationError
from shared_scorer.outcome import CascadeResult, StageOutput, asks_logprobs
from shared_scorer.streaming import LiveProgress, with_usage
from shared_scorer.tools import ToolCallValidator

dispatcher = get_dispatcher(__name__)

_CALL_KEYWORDS = frozenset(
    {"temperature", "max_tokens", "tenant", "user", "tier", "frugal_cache", "frugal_profile"}  # ours, standard ones
    | {"tools", "tool_required", "allow_parallel_tool_calls", "tool_choice"}  # what LlamaIndex's tool calling passes
)
_DROPPED_KEYWORDS = ("chat_history", "formatted", "verbose")
"""Keywords LlamaIndex may pass along that no stage call needs (the messages are already given)."""


def stage_name(llm: Any) -> str:
    """The model name a stage is priced and reported under."""
    for candidate in (getattr(llm, "model", None), getattr(llm, "model_name", None)):
        if isinstance(candidate, str) and candidate:
            return candidate
    try:
        name = llm.metadata.model_name
    except Exception:
        name = None
    return name if isinstance(name, str) and name and name != "unknown" else type(llm).__name__


class FrugalLLM(CascadeSettings, FunctionCallingLLM):
    """A cascade of LlamaIndex LLMs, cheapest first, that answers as one LLM.

    The same cascade as ``frugal_langchain.FrugalChatModel`` (both delegate to ``shared_scorer.Cascade``):
    each stage's answer is scored and returned if it reaches that stage's threshold, else the next stage
    is asked; provider errors and invalid tool calls escalate too. The trail rides on every response as
    ``additional_kwargs["frugal"]``. Stage calls emit their own LLM callback and instrumentation
    events (this wrapper opens a span but emits no LLM event of its own), so ``TokenCountingHandler``
    counts each stage call exactly once.

    Setup:
        Install the package with the LlamaIndex extra, and the stages' own packages::

            pip install "frugal-cascade[llamaindex]" llama-index-llms-openai-like

        Each stage reads its own credentials (``OPENAI_API_KEY`` for ``OpenAI``/``OpenAILike``, ...).

    Key init args:
        stages: the LLMs, cheapest first.
        scorer: a ``shared_scorer.Scorer`` (``DistilBertScorer.load(...)``) or ``(query, answer) -> float``.
        thresholds: one acceptance threshold per stage but the last.
        prices: ``{model name: (input, output)}`` USD per million tokens, for models the catalogue lacks.
        return_policy: ``"last"`` or ``"best"``.
        temperature, max_tokens: sent to every stage when set.
        tenant, user, budget, answer_cache: who pays, the spending caps and the answer cache.
        model: the name the cascade reports in ``metadata.model_name`` (``"frugal-cascade"``).

        ``FrugalLLM.from_strategy(path, stages=...)`` builds one from a fitted strategy.

    Instantiate:
        Two mock stages here; in use they are ``OpenAI``, ``Anthropic``, ``OpenAILike``, ... LLMs.

        >>> from llama_index.core.llms import ChatMessage, MockLLM
        >>> from llama_index.core.llms.mock import MockFunctionCallingLLM
        >>> def reply(text):
        ...     return lambda messages, **kwargs: ChatMessage(role="assistant", content=text)
        >>> small = MockLLM()  # echoes the prompt
        >>> big = MockFunctionCallingLLM(response_generator=reply("George Eliot"))
        >>> llm = FrugalLLM(
        ...     stages=[small, big],
        ...     scorer=lambda query, answer: 0.9 if answer == "George Eliot" else 0.2,
        ...     thresholds=[0.5],
        ...     prices={"MockLLM": (0.15, 0.60), "MockFunctionCallingLLM": (2.50, 10.00)},
        ... )

    Invoke:
        The small stage's answer scores 0.2, under its threshold, so the big stage answers.

        >>> response = llm.complete("Who wrote Middlemarch?")
        >>> response.text, response.additional_kwargs["frugal"]["model"], response.additional_kwargs["frugal"]["stage"]
        ('George Eliot', 'MockFunctionCallingLLM', 1)
        >>> llm.chat([ChatMessage(role="user", content="Who wrote Middlemarch?")]).message.content
        'George Eliot'

    Stream:
        The accepted stage's deltas (a rejected stage's answer is never shown).

        >>> [chunk.delta for chunk in llm.stream_complete("Who wrote Middlemarch?")]
        ['George Eliot', '']

    Tool calling:
        Tools go to every stage; a tool call that does not parse or fit its schema escalates. A valid
        one is accepted without a score (``tool_call_policy="validate"``, the default; ``"score"`` or a
        scorer of tool calls rates it instead); final answers are rated by ``scorer``.

        >>> from llama_index.core.base.llms.types import ToolCallBlock
        >>> from llama_index.core.tools import FunctionTool
        >>> def multiply(a: int, b: int) -> int:
        ...     \"""Multiply two integers.\"""
        ...     return a * b
        >>> def call_multiply(messages, **kwargs):
        ...     block = ToolCallBlock(tool_call_id="call_1", tool_name="multiply", tool_kwargs={"a": 6, "b": 7})
        ...     return ChatMessage(role="assistant", blocks=[block])
        >>> agent = FrugalLLM(
        ...     stages=[MockFunctionCallingLLM(response_generator=call_multiply)], thresholds=[],
        ...     scorer=lambda query, answer: 0.9, prices={"MockFunctionCallingLLM": (0, 0)},
        ... )
        >>> tool = FunctionTool.from_defaults(multiply)
        >>> agent.get_tool_calls_from_response(agent.chat_with_tools([tool], user_msg="What is 6 times 7?"))
        [ToolSelection(tool_id='call_1', tool_name='multiply', tool_kwargs={'a': 6, 'b': 7})]
        >>> agent.predict_and_call([tool], user_msg="What is 6 times 7?").response
        '42'

    Structured output:
        With function-calling stages, ``structured_predict`` drives each by a tool call; output that does
        not validate escalates.

        >>> from pydantic import BaseModel
        >>> from llama_index.core.prompts import PromptTemplate
        >>> class Author(BaseModel):
        ...     \"""An author and their pen name.\"""
        ...     name: str
        ...     pen_name: str
        >>> def call_author(messages, **kwargs):
        ...     args = {"name": "Mary Ann Evans", "pen_name": "George Eliot"}
        ...     block = ToolCallBlock(tool_call_id="c2", tool_name="Author", tool_kwargs=args)
        ...     return ChatMessage(role="assistant", blocks=[block])
        >>> structured = FrugalLLM(
        ...     stages=[MockFunctionCallingLLM(response_generator=call_author)], thresholds=[],
        ...     scorer=lambda query, answer: 0.9, prices={"MockFunctionCallingLLM": (0, 0)},
        ... )
        >>> structured.structured_predict(Author, PromptTemplate("Who wrote {book}?"), book="Middlemarch")
        Author(name='Mary Ann Evans', pen_name='George Eliot')

    Token usage:
        The trail sums every stage called (rejected ones too), with the exact cost as a ``Decimal``
        string. The mocks report no usage, so the tokens here are estimates.

        >>> trail = response.additional_kwargs["frugal"]
        >>> trail["input_tokens"], trail["output_tokens"], trail["cost_usd"]
        (30, 18, '0.00008815')
        >>> [(stage["model"], stage["status"], stage["cost_usd"]) for stage in trail["stages"]]
        [('MockLLM', 'rejected', '0.00001065'), ('MockFunctionCallingLLM', 'accepted', '0.0000775')]
    """

    model_config = CascadeSettings.model_config  # the cascade's settings are CascadeSettings' fields

    _stage_type = LLM
    _stage_kind = "a LlamaIndex LLM"
    _stage_name = staticmethod(stage_name)

    @classmethod
    def class_name(cls) -> str:
        return "FrugalLLM"

    @property
    def metadata(self) -> LLMMetadata:
        metas = [s.metadata for s in self.stages]
        return LLMMetadata(
            context_window=min(m.context_window for m in metas),
            num_output=min(m.num_output for m in metas),
            is_chat_model=True,
            is_function_calling_model=all(
                isinstance(s, FunctionCallingLLM) and s.metadata.is_function_calling_model for s in self.stages
            ),
            model_name=self.model_name,
        )

    # ------------------------------------------------------------------ tools

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            messages.append(ChatMessage(role=MessageRole.USER, content=user_msg))
        elif user_msg is not None:
            messages.append(user_msg)
        return {
            "messages": messages,
            "tools": list(tools),
            "tool_required": tool_required,
            "allow_parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls of the accepted stage's answer (arguments already validated)."""
        trail = response.additional_kwargs.get("frugal") or {}
        stage = trail.get("stage")
        if stage is None:
            raise ConfigurationError("response carries no frugal trail: it did not come from this FrugalLLM")
        stages = (self.tiers or {}).get(str(trail.get("tier", "")), self).stages  # the tier's stages answered it
        return stages[stage].get_tool_calls_from_response(  # type: ignore[no-any-return]
            response, error_on_no_tool_call=error_on_no_tool_call, **kwargs
        )

    # ------------------------------------------------------------------ one call

    def _sync_callbacks(self) -> None:
        """Stages (the tiers' too) without handlers of their own report to this LLM's callback manager."""
        for stage in [*self.stages, *(s for tier in (self.tiers or {}).values() for s in tier.stages)]:
            if stage.callback_manager is not self.callback_manager and not stage.callback_manager.handlers:
                stage.callback_manager = self.callback_manager

    def _context(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> CallContext:
        """The call's scope (``tenant=``/``user=`` keywords win over the fields) and validity fingerprint;
        the model's ``temperature`` and ``max_tokens`` join the keywords when set and not given by the call.

        A keyword that is neither ours nor one LlamaIndex passes is refused rather than sent to every
        provider (set provider options on the stage LLMs themselves).
        """
        unknown = sorted(set(kwargs) - _CALL_KEYWORDS - set(_DROPPED_KEYWORDS))
        if unknown:
            plural = "s" if len(unknown) > 1 else ""
            raise ConfigurationError(
                f"FrugalLLM: unknown per-call keyword{plural} {', '.join(map(repr, unknown))}; a call takes "
                f"{', '.join(sorted(_CALL_KEYWORDS))} (set other provider options on the stage LLMs)"
            )
        for name in _DROPPED_KEYWORDS:
            kwargs.pop(name, None)
        kwargs.update(self._forwarded(kwargs))
        tools = kwargs.get("tools")
        specs = [[s.name, s.parameters] for s in _convert.tool_specs(tools)] if tools else None
        return self._call_context(
            _convert.turns(messages),
            tenant=kwargs.pop("tenant", None),
            user=kwargs.pop("user", None),
            tools=[specs, "any" if kwargs.get("tool_required") else None] if specs else None,
            max_output_tokens=kwargs.pop("max_tokens", None),
            cacheable=kwargs.pop("frugal_cache", True) is not False,
            tier=kwargs.pop("tier", None),
            profile=kwargs.pop("frugal_profile", None),
        )

    def _plan(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> tuple[_Plan, Validator, CallContext]:
        """The stages' calls (each sent at most the output tokens the cascade reserved for), the answer
        validator and the call's context."""
        context = self._context(messages, kwargs)
        tools = kwargs.pop("tools", None)
        self._sync_callbacks()
        if not tools:
            for name in ("tool_required", "allow_parallel_tool_calls", "tool_choice"):
                kwargs.pop(name, None)
        plan = _Plan(messages, [text for _, text in _convert.turns(messages)])
        model = self._tier_model(context)  # the call's tier's stages, or this model's
        for i, (stage, limit) in enumerate(zip(model.stages, model._stage_limits(context), strict=True)):
            own = getattr(stage, "max_tokens", None)
            update: dict[str, Any] = {"logprobs": True} if _asks_logprobs(stage, self.request_logprobs) else {}
            if limit is not None and isinstance(own, int) and own > limit:
                # LlamaIndex's OpenAI sends its own max_tokens over a call's: call a copy capped at the limit
                update["max_tokens"] = limit
            if update:
                stage = stage.model_copy(update=update)
            stage_kwargs = kwargs if limit is None else {**kwargs, "max_tokens": limit}
            if not tools:
                plan.add(stage, stage.chat, stage.achat, stage_kwargs, model._cascade.models[i])
            elif not isinstance(stage, FunctionCallingLLM):
                raise ConfigurationError(f"stage {stage_name(stage)!r} does not support function calling")
            else:
                sync, asyn = _with_tools(stage.chat_with_tools, tools), _with_tools(stage.achat_with_tools, tools)
                plan.add(stage, sync, asyn, stage_kwargs, model._cascade.models[i])
        required = "any" if kwargs.get("tool_required") else None
        validate = ToolCallValidator(_convert.tool_specs(tools) if tools else [], required if tools else None)
        return plan, validate, context

    @dispatcher.span
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        plan, validate, context = self._plan(messages, kwargs)
        result = self._cascade_for(context).run(_convert.query_text(messages), plan.sync_calls(), validate, context)
        return _convert.final_response(result)

    @dispatcher.span
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        plan, validate, context = self._plan(messages, kwargs)
        result = await self._cascade_for(context).arun(
            _convert.query_text(messages), plan.async_calls(), validate, context
        )
        return _convert.final_response(result)

    @dispatcher.span
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        has_tools = bool(kwargs.get("tools"))
        plan, validate, context = self._plan(messages, kwargs)
        progress = LiveProgress(plan.prompt)
        live = None if has_tools else functools.partial(plan.sync_live, progress)
        query, calls, span = _convert.query_text(messages), plan.sync_calls(), active_span_id.get()

        def gen() -> ChatResponseGen:
            text = ""
            stream = self._cascade_for(context).stream(query, calls, live, validate, context, progress)
            try:
                while True:
                    with _in_span(span):  # the stage calls made while reading are children of this call's span
                        item = next(stream, _END)
                    if item is _END:
                        return
                    response, text = _streamed(item, text)
                    yield response
            finally:
                with _in_span(span):
                    stream.close()  # type: ignore[attr-defined]  # a caller that stops reading: the cascade settles

        return gen()

    @dispatcher.span
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        has_tools = bool(kwargs.get("tools"))
        plan, validate, context = self._plan(messages, kwargs)
        progress = LiveProgress(plan.prompt)
        live = None if has_tools else functools.partial(plan.async_live, progress)
        query, calls, span = _convert.query_text(messages), plan.async_calls(), active_span_id.get()

        async def gen() -> ChatResponseAsyncGen:
            text = ""
            stream = self._cascade_for(context).astream(query, calls, live, validate, context, progress)
            try:
                while True:
                    with _in_span(span):  # the stage calls made while reading are children of this call's span
                        item = await anext(stream, _END)
                    if item is _END:
                        return
                    response, text = _streamed(item, text)
                    yield response
            finally:
                with _in_span(span):
                    await stream.aclose()  # type: ignore[attr-defined]  # a caller that stops reading: the cascade settles

        return gen()

    # ------------------------------------------------------------------ completion, through chat

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return _completion(self.chat(_as_messages(prompt), **kwargs))

    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return _completion(await self.achat(_as_messages(prompt), **kwargs))

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        responses = self.stream_chat(_as_messages(prompt), **kwargs)
        return (_completion(r) for r in responses)

    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        responses = await self.astream_chat(_as_messages(prompt), **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for response in responses:
                yield _completion(response)

        return gen()


_END = object()


@contextmanager
def _in_span(span_id: str | None) -> Iterator[None]:
    """Make ``span_id`` the active instrumentation span (a stream is read after its call's span closed)."""
    token = active_span_id.set(span_id)
    try:
        yield
    finally:
        active_span_id.reset(token)


def _streamed(item: Any, text: str) -> tuple[ChatResponse, str]:
    """The response one item of the cascade's stream becomes, and the text streamed so far."""
    if isinstance(item, CascadeResult):
        return _convert.closing_response(item, text, with_answer=not text), text
    text += item.delta or ""
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=item.delta), text


def _as_messages(prompt: str) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole.USER, content=prompt)]


def _completion(response: ChatResponse) -> CompletionResponse:
    return CompletionResponse(
        text=response.message.content or "",
        delta=response.delta,
        raw=response.raw,
        additional_kwargs=response.additional_kwargs,
    )


def _asks_logprobs(stage: LLM, request: bool) -> bool:
    """Whether ``stage`` is called as a copy with ``logprobs=True``: ``request`` (``request_logprobs``) is on,
    its client has the field (OpenAI, OpenAILike), the user left it unset, it talks to a chat endpoint
    (a completion endpoint would be sent ``logprobs`` as a count) and its model is not one that rejects it
    (:func:`~shared_scorer.outcome.asks_logprobs`)."""
    if not request or "logprobs" not in type(stage).model_fields or "logprobs" in stage.model_fields_set:
        return False
    return (
        getattr(stage, "logprobs", None) is None and stage.metadata.is_chat_model and asks_logprobs(stage_name(stage))
    )


def _with_tools(method: Callable[..., Any], tools: list[BaseTool]) -> Callable[..., Any]:
    def call(messages: Sequence[ChatMessage], **kwargs: Any) -> Any:
        kwargs.pop("messages", None)
        return method(tools, chat_history=list(messages), **kwargs)

    return call


@dataclass
class _Plan:
    """Each stage's chat functions, keywords and model name for one call, and the prompt's texts (for
    the usage estimate when a provider reports none)."""

    messages: Sequence[ChatMessage]
    prompt: list[str]
    stages: list[tuple[LLM, Callable[..., Any], Callable[..., Any], dict[str, Any], str]] = field(default_factory=list)

    def add(
        self, stage: LLM, sync: Callable[..., Any], asyn: Callable[..., Any], kw: dict[str, Any], model: str
    ) -> None:
        self.stages.append((stage, sync, asyn, kw, model))

    def _output(
        self, response: ChatResponse, model: str, *, cut: bool = False, streamed: list[float | None] | None = None
    ) -> StageOutput:
        """The stage's output; ``streamed``: each streamed chunk's log-probability (their sum is the answer's)."""
        output = _convert.to_output(response)
        if streamed is not None:
            output = replace(output, logprob=_convert.total_logprob(streamed))
        return with_usage(replace(output, truncated=True) if cut else output, self.prompt, model)

    def sync_calls(self) -> list[Callable[[], StageOutput]]:
        def call(sync: Callable[..., ChatResponse], kw: dict[str, Any], model: str) -> Callable[[], StageOutput]:
            return lambda: self._output(sync(self.messages, **kw), model)

        return [call(sync, kw, model) for _, sync, _, kw, model in self.stages]

    def async_calls(self) -> list[Callable[[], Any]]:
        def call(asyn: Callable[..., Any], kw: dict[str, Any], model: str) -> Callable[[], Any]:
            async def run() -> StageOutput:
                return self._output(await asyn(self.messages, **kw), model)

            return run

        return [call(asyn, kw, model) for _, _, asyn, kw, model in self.stages]

    def _live_kwargs(self) -> tuple[LLM, dict[str, Any], str]:
        """The last stage, its keywords with usage asked for where the client can report it on a stream
        (OpenAI and OpenAILike: ``stream_options.include_usage``; a server that rejects it is given
        ``additional_kwargs={"stream_options": {"include_usage": False}}``, which wins over a call's)."""
        stage, _, _, kw, model = self.stages[-1]
        try:
            from llama_index.llms.openai import OpenAI
        except ImportError:  # pragma: no cover - installed with the llamaindex extra
            return stage, kw, model
        return stage, ({**kw, "stream_options": {"include_usage": True}} if isinstance(stage, OpenAI) else kw), model

    def sync_live(self, progress: LiveProgress) -> Generator[ChatResponse, None, StageOutput]:
        stage, kw, model = self._live_kwargs()
        last, cut, logprobs = _EMPTY, False, []
        for response in stage.stream_chat(self.messages, **kw):
            last, cut = response, cut or _convert.finish_reason(response) == "length"
            logprobs.append(_convert.logprob(response))
            progress.add(response.delta or "")
            yield response
        return self._output(last, model, cut=cut, streamed=logprobs)

    async def async_live(
        self, progress: LiveProgress, done: Callable[[StageOutput], None]
    ) -> AsyncIterator[ChatResponse]:
        stage, kw, model = self._live_kwargs()
        last, cut, logprobs = _EMPTY, False, []
        async for response in await stage.astream_chat(self.messages, **kw):
            last, cut = response, cut or _convert.finish_reason(response) == "length"
            logprobs.append(_convert.logprob(response))
            progress.add(response.delta or "")
            yield response
        done(self._output(last, model, cut=cut, streamed=logprobs))


_EMPTY = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=""))
