"""``FrugalChatModel``: a FrugalGPT cascade of chat models behind one LangChain chat model."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID, uuid4

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, BaseLanguageModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config
from pydantic import Field, PrivateAttr

from frugal_langchain import _convert
from shared_scorer import tokens
from shared_scorer.adapters.settings import CascadeSettings
from shared_scorer.cascade import Validator
from shared_scorer.context import CallContext
from shared_scorer.errors import ConfigurationError
from shared_scorer.outcome import CascadeResult, StageOutput, asks_logprobs
from shared_scorer.streaming import LiveProgress, with_usage
from shared_scorer.tools import ToolCallValidator

_OWN_KWARGS = ("tools", "tool_choice", "model", "parallel_tool_calls")
_STREAM_RUN = "frugal_stream_run"
"""The keyword ``stream``/``astream`` hand ``_stream``/``_astream`` the call's config and run id under:
langchain-core calls ``_stream`` without its run manager, and the call's scope and child runs need it."""
_RunManager = CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun
_RUN_MANAGER: ContextVar[tuple[object, _RunManager | None] | None] = ContextVar("frugal_run_manager", default=None)
"""The run manager of the ``invoke`` in progress, for ``_stream`` when ``invoke`` streams internally."""


def stage_name(model: BaseChatModel) -> str:
    """The model name a stage is priced and reported under."""
    try:
        name = model._get_ls_params().get("ls_model_name")
    except Exception:
        name = None
    for candidate in (name, getattr(model, "model_name", None), getattr(model, "model", None)):
        if isinstance(candidate, str) and candidate:
            return candidate
    return type(model).__name__


class FrugalChatModel(CascadeSettings, BaseChatModel):
    """A cascade of chat models, cheapest first, that answers as one chat model.

    Each query goes to the first stage; the scorer rates (query, answer); an answer whose score reaches
    that stage's threshold is returned, else the query goes to the next stage. Provider errors and
    invalid answers (unparseable tool calls, output that does not fit a structured-output schema, an
    empty reply) escalate too. The last stage's answer is returned (``return_policy="last"``) or the
    best-scored answer seen (``"best"``). ``response_metadata["frugal"]`` holds the trail.

    Setup:
        Install the package with the LangChain extra, and the stages' own packages::

            pip install "frugal-cascade[langchain]" langchain-openai

        Each stage reads its own credentials (``OPENAI_API_KEY`` for ``ChatOpenAI``, ...).

    Key init args:
        stages: the chat models, cheapest first.
        scorer: a ``shared_scorer.Scorer`` (``DistilBertScorer.load(...)``) or ``(query, answer) -> float``.
        thresholds: one acceptance threshold per stage but the last.
        prices: ``{model name: (input, output)}`` USD per million tokens, for models the catalogue lacks.
        return_policy: ``"last"`` or ``"best"``.
        temperature, max_tokens, stop: sent to every stage when set.
        tenant, user, budget, answer_cache: who pays, the spending caps and the answer cache.
        model: the name the cascade reports for tracing (``"frugal-cascade"``).

        ``FrugalChatModel.from_strategy(path, stages=...)`` builds one from a fitted strategy.

    Instantiate:
        Two fake stages here; in use they are ``ChatOpenAI``, ``ChatAnthropic``, ... models.

        >>> import itertools
        >>> from langchain_core.language_models import FakeListChatModel, GenericFakeChatModel
        >>> small = FakeListChatModel(responses=["Mary Ann Evans"])
        >>> big = GenericFakeChatModel(messages=itertools.cycle(["George Eliot"]))
        >>> llm = FrugalChatModel(
        ...     stages=[small, big],
        ...     scorer=lambda query, answer: 0.9 if answer == "George Eliot" else 0.2,
        ...     thresholds=[0.5],
        ...     prices={"FakeListChatModel": (0.15, 0.60), "GenericFakeChatModel": (2.50, 10.00)},
        ... )

    Invoke:
        The small stage's answer scores 0.2, under its threshold, so the big stage answers.

        >>> message = llm.invoke("Who wrote Middlemarch?")
        >>> message.content, message.response_metadata["model_name"]
        ('George Eliot', 'GenericFakeChatModel')
        >>> message.response_metadata["frugal"]["stage"], message.response_metadata["frugal"]["escalations"]
        (1, 1)

    Stream:
        The accepted stage's chunks (a rejected stage's answer is never shown).

        >>> [chunk.content for chunk in llm.stream("Who wrote Middlemarch?")]
        ['George', ' ', 'Eliot', '']

    Tool calling:
        Tools are bound to every stage; a tool call that does not parse or fit its schema escalates. A
        valid one is accepted without a score (``tool_call_policy="validate"``, the default; ``"score"``
        or a scorer of tool calls rates it instead); final answers are rated by ``scorer``.

        >>> from langchain_core.messages import AIMessage
        >>> class ToolFake(GenericFakeChatModel):  # a fake stage that "supports" tools
        ...     def bind_tools(self, tools, **kwargs):
        ...         return self
        >>> def multiply(a: int, b: int) -> int:
        ...     \"""Multiply two integers.\"""
        ...     return a * b
        >>> call = AIMessage("", tool_calls=[{"name": "multiply", "args": {"a": 6, "b": 7}, "id": "call_1"}])
        >>> agent = FrugalChatModel(
        ...     stages=[ToolFake(messages=itertools.cycle([call]))], thresholds=[],
        ...     scorer=lambda query, answer: 0.9, prices={"ToolFake": (0, 0)},
        ... )
        >>> agent.bind_tools([multiply]).invoke("What is 6 times 7?").tool_calls
        [{'name': 'multiply', 'args': {'a': 6, 'b': 7}, 'id': 'call_1', 'type': 'tool_call'}]

    Structured output:
        Every stage is driven by tool calling; output that does not validate escalates.

        >>> from pydantic import BaseModel
        >>> class Author(BaseModel):
        ...     \"""An author and their pen name.\"""
        ...     name: str
        ...     pen_name: str
        >>> reply = AIMessage("", tool_calls=[
        ...     {"name": "Author", "args": {"name": "Mary Ann Evans", "pen_name": "George Eliot"}, "id": "c2"}])
        >>> structured = FrugalChatModel(
        ...     stages=[ToolFake(messages=itertools.cycle([reply]))], thresholds=[],
        ...     scorer=lambda query, answer: 0.9, prices={"ToolFake": (0, 0)},
        ... )
        >>> structured.with_structured_output(Author).invoke("Who wrote Middlemarch?")
        Author(name='Mary Ann Evans', pen_name='George Eliot')

    Token usage:
        ``usage_metadata`` sums every stage called (rejected ones too); the trail has the exact cost as a
        ``Decimal`` string. The fakes report no usage, so the tokens here are estimates.

        >>> message.usage_metadata
        {'input_tokens': 30, 'output_tokens': 9, 'total_tokens': 39}
        >>> message.response_metadata["frugal"]["cost_usd"]
        '0.00008275'
        >>> llm.get_num_tokens("hello world")  # asked of the first stage (here an offline estimate)
        4
    """

    model_config = CascadeSettings.model_config  # else BaseChatModel's extra="ignore" wins the merge

    # the cascade's settings (stages, scorer, thresholds, prices, ...) are CascadeSettings' fields
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    """Default stop sequences, sent to every stage call."""
    timeout: float | None = None
    """Reported for tracing only: each child client owns its timeout, and a stage that times out
    escalates."""
    max_retries: int | None = None
    """Reported for tracing only: each child client owns its retries; a stage that still fails escalates."""
    streaming: bool = False
    """Whether ``invoke`` streams internally (LangChain's standard flag)."""

    _stage_type = BaseChatModel
    _stage_kind = "a LangChain chat model (BaseChatModel)"
    _stage_name = staticmethod(stage_name)
    _callable_stages: list[Any] = PrivateAttr()
    """The stages as they are called (see :func:`_with_stream_usage` and :func:`_with_logprobs`)."""

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._callable_stages = [_with_logprobs(_with_stream_usage(s), self.request_logprobs) for s in self.stages]

    @property
    def _llm_type(self) -> str:
        return "frugal-cascade"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "stages": self._cascade.models, "thresholds": self.thresholds}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="frugal",
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
        )
        if (temperature := kwargs.get("temperature", self.temperature)) is not None:
            params["ls_temperature"] = temperature
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if stop := stop or self.stop:
            params["ls_stop"] = stop
        return params

    # ------------------------------------------------------------------ token counts

    def get_num_tokens(self, text: str) -> int:
        """The tokens ``text`` is for the first stage, which every query reaches.

        Asked of the stage itself when it counts offline (it has its own tokenizer, or it is an OpenAI
        model whose tiktoken encoding file is already on disk). Otherwise, rather than LangChain's GPT-2
        fallback (a Hub download and a warning) or a tiktoken download, the offline estimate of
        :func:`shared_scorer.tokens.estimate_tokens` (``ceil(UTF-8 bytes / 3)`` for a model tiktoken does
        not know or has no file for).
        """
        first = self.stages[0]
        if _counts_offline(first):
            return int(first.get_num_tokens(text))
        return tokens.estimate_tokens(text, stage_name(first))

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """The tokens ``messages`` are for the first stage; as :meth:`get_num_tokens`, the estimate
        (:func:`shared_scorer.tokens.estimate_prompt_tokens`, which adds the chat format's per-message
        tokens) when the stage cannot count offline. Tool schemas are counted only by stages that do."""
        first = self.stages[0]
        if _counts_offline(first):
            if tools is None:
                return int(first.get_num_tokens_from_messages(messages))
            return int(first.get_num_tokens_from_messages(messages, tools=tools))
        return tokens.estimate_prompt_tokens([message.text for message in messages], stage_name(first))

    # ------------------------------------------------------------------ tools and structure

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools to every stage; a stage whose tool call does not parse or fit its schema escalates."""
        formatted = _convert.format_tools(tools)
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Structured output through function calling on every stage.

        Whatever ``method`` asks for, stages are driven by tool calling so that each stage's output is
        validated against the schema the same way; output that does not parse or validate escalates.
        """
        if method not in ("function_calling", "json_mode", "json_schema"):
            raise ConfigurationError(f"unknown structured-output method {method!r}")
        if kwargs:
            raise ConfigurationError(f"unsupported arguments to with_structured_output: {sorted(kwargs)}")
        return super().with_structured_output(schema, include_raw=include_raw)

    # ------------------------------------------------------------------ the call's run

    def stream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:  # fmt: skip
        config, kwargs = self._with_stream_run(config, kwargs, asynchronous=False)
        return super().stream(input, config, stop=stop, **kwargs)

    def astream(
        self, input: LanguageModelInput, config: RunnableConfig | None = None, *, stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:  # fmt: skip
        config, kwargs = self._with_stream_run(config, kwargs, asynchronous=True)
        return super().astream(input, config, stop=stop, **kwargs)

    def _with_stream_run(
        self, config: RunnableConfig | None, kwargs: dict[str, Any], *, asynchronous: bool
    ) -> tuple[RunnableConfig | None, dict[str, Any]]:
        """Fix the stream's run id in its config and hand both to ``_stream`` (see ``_STREAM_RUN``)."""
        if not self._should_stream(async_api=asynchronous, **{**kwargs, "stream": True}):
            return config, kwargs  # langchain-core falls back to invoke, which passes the run manager
        config = ensure_config(config)
        config["run_id"] = config.get("run_id") or uuid4()
        return config, {**kwargs, _STREAM_RUN: (config, config["run_id"])}

    def _get_invocation_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        kwargs.pop(_STREAM_RUN, None)
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _generate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        token = _RUN_MANAGER.set((self, run_manager))
        try:
            return super()._generate_with_cache(messages, stop, run_manager, **kwargs)
        finally:
            _RUN_MANAGER.reset(token)

    async def _agenerate_with_cache(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        token = _RUN_MANAGER.set((self, run_manager))
        try:
            return await super()._agenerate_with_cache(messages, stop, run_manager, **kwargs)
        finally:
            _RUN_MANAGER.reset(token)

    def _streaming_run(self, stop: list[str] | None, kwargs: dict[str, Any], *, asynchronous: bool) -> Any:
        """The run manager of a ``stream``/``astream`` call (rebuilt as langchain-core built it from the call's
        config and run id) or of the ``invoke`` that streams internally; ``None`` when there is neither."""
        run: tuple[RunnableConfig, UUID] | None = kwargs.pop(_STREAM_RUN, None)
        if run is None:
            current = _RUN_MANAGER.get()
            return current[1] if current is not None and current[0] is self else None
        config, run_id = run
        metadata = {**(config.get("metadata") or {}), **self._get_ls_params_with_defaults(stop=stop, **kwargs)}
        configure = AsyncCallbackManager.configure if asynchronous else CallbackManager.configure
        manager = configure(
            config.get("callbacks"), self.callbacks, self.verbose, config.get("tags"), self.tags, metadata,
            self.metadata,
        )  # fmt: skip
        run_cls = AsyncCallbackManagerForLLMRun if asynchronous else CallbackManagerForLLMRun
        return run_cls(
            run_id=run_id,
            handlers=manager.handlers,
            inheritable_handlers=manager.inheritable_handlers,
            parent_run_id=manager.parent_run_id,
            tags=manager.tags,
            inheritable_tags=manager.inheritable_tags,
            metadata=manager.metadata,
            inheritable_metadata=manager.inheritable_metadata,
        )

    # ------------------------------------------------------------------ one call

    def _prepare(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    ) -> tuple[dict[str, Any], Validator, CallContext]:
        """Split per-call kwargs into what every child gets, the answer validator and the call's context."""
        call_kwargs = {k: v for k, v in kwargs.items() if k not in _OWN_KWARGS}
        call_kwargs.update(self._forwarded(call_kwargs))
        if stop := stop or self.stop:
            call_kwargs["stop"] = stop
        tools = kwargs.get("tools") or []
        validate = ToolCallValidator(_convert.tool_specs(tools), _convert.required_tool(kwargs.get("tool_choice")))
        metadata = run_manager.metadata if run_manager is not None else {}
        context = self._call_context(
            _convert.turns(messages),
            tenant=metadata.get("tenant"),
            user=metadata.get("user"),
            tools=[tools, kwargs.get("tool_choice")] if tools else None,
            max_output_tokens=call_kwargs.pop("max_tokens", None),
            cacheable=metadata.get("frugal_cache", True) is not False,
            tier=metadata.get("tier"),
            profile=metadata.get("frugal_profile"),
        )
        return call_kwargs, validate, context

    def _stage_calls(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    ) -> tuple[list[_StageCall], Validator, CallContext]:
        """One :class:`_StageCall` per stage (each sent at most the output tokens the cascade reserved
        for), the answer validator and the call's context."""
        call_kwargs, validate, context = self._prepare(messages, stop, kwargs, run_manager)
        model = self._tier_model(context)  # the call's tier's stages, or this model's
        children = model._children(kwargs)
        configs = _child_configs(run_manager, len(children))
        prompt = [text for _, text in _convert.turns(messages)]
        stages = []
        limits = model._stage_limits(context)
        for i, (child, config, limit) in enumerate(zip(children, configs, limits, strict=True)):
            stage_kwargs = call_kwargs if limit is None else {**call_kwargs, "max_tokens": limit}
            stages.append(_StageCall(child, messages, config, stage_kwargs, prompt, model._cascade.models[i]))
        return stages, validate, context

    def _children(self, kwargs: dict[str, Any]) -> list[Runnable[Any, BaseMessage]]:
        tools = kwargs.get("tools")
        if not tools:
            return list(self._callable_stages)
        extra = {k: kwargs[k] for k in ("tool_choice", "parallel_tool_calls") if k in kwargs}
        return [stage.bind_tools(tools, **extra) for stage in self._callable_stages]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        stages, validate, context = self._stage_calls(messages, stop, kwargs, run_manager)
        calls = [stage.sync_call for stage in stages]
        result = self._cascade_for(context).run(_convert.query_text(messages), calls, validate, context)
        return _chat_result(result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        stages, validate, context = self._stage_calls(messages, stop, kwargs, run_manager)
        calls = [stage.async_call for stage in stages]
        result = await self._cascade_for(context).arun(_convert.query_text(messages), calls, validate, context)
        return _chat_result(result)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        emit = run_manager  # langchain-core reports the tokens itself unless it hands us the run manager
        run_manager = run_manager or self._streaming_run(stop, kwargs, asynchronous=False)
        stages, validate, context = self._stage_calls(messages, stop, kwargs, run_manager)
        progress = LiveProgress(stages[-1].prompt)
        live = None if kwargs.get("tools") else functools.partial(stages[-1].sync_live, progress)
        query, calls = _convert.query_text(messages), [stage.sync_call for stage in stages]
        stream = self._cascade_for(context).stream(query, calls, live, validate, context, progress)
        streamed = False
        try:
            for item in stream:
                if isinstance(item, CascadeResult):
                    yield self._emit(_convert.closing_chunk(item, with_answer=not streamed), emit)
                else:
                    streamed = True
                    yield self._emit(_convert.strip_chunk(item), emit)
        finally:
            stream.close()  # type: ignore[attr-defined]  # a caller that stops reading: the cascade settles

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        emit = run_manager  # langchain-core reports the tokens itself unless it hands us the run manager
        run_manager = run_manager or self._streaming_run(stop, kwargs, asynchronous=True)
        stages, validate, context = self._stage_calls(messages, stop, kwargs, run_manager)
        progress = LiveProgress(stages[-1].prompt)
        live = None if kwargs.get("tools") else functools.partial(stages[-1].async_live, progress)
        query, calls = _convert.query_text(messages), [stage.async_call for stage in stages]
        stream = self._cascade_for(context).astream(query, calls, live, validate, context, progress)
        streamed = False
        try:
            async for item in stream:
                if isinstance(item, CascadeResult):
                    chunk = _convert.closing_chunk(item, with_answer=not streamed)
                else:
                    streamed = True
                    chunk = _convert.strip_chunk(item)
                if emit is not None:
                    await emit.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]  # a caller that stops reading: the cascade settles

    @staticmethod
    def _emit(chunk: ChatGenerationChunk, run_manager: CallbackManagerForLLMRun | None) -> ChatGenerationChunk:
        if run_manager is not None:
            run_manager.on_llm_new_token(chunk.text, chunk=chunk)
        return chunk


def _chat_result(result: CascadeResult) -> ChatResult:
    """The cascade's answer; ``llm_output`` names the stage that answered, so the cascade's own run in a
    LangSmith trace (whose ``ls_model_name`` is the cascade's, known before any stage is asked) records it."""
    return ChatResult(
        generations=[ChatGeneration(message=_convert.final_message(result))],
        llm_output={"model_name": result.model, "frugal_stage": result.answer_stage},
    )


def _counts_offline(stage: BaseChatModel) -> bool:
    """Whether ``stage`` counts tokens without a download: an OpenAI model whose tiktoken encoding file is on
    disk, or a model with its own tokenizer (LangChain's default one fetches GPT-2 from the Hub)."""
    cls = type(stage)
    if any(base.__module__.startswith("langchain_openai.") for base in cls.__mro__):
        return tokens._encoder_for(tokens._bare_model(stage_name(stage))) is not None
    return (
        stage.custom_get_token_ids is not None
        or cls.get_token_ids is not BaseLanguageModel.get_token_ids
        or cls.get_num_tokens is not BaseLanguageModel.get_num_tokens
        or cls.get_num_tokens_from_messages is not BaseLanguageModel.get_num_tokens_from_messages
    )


def _child_configs(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None, stages: int
) -> list[RunnableConfig]:
    """One config per stage whose callbacks make each stage call a child run of the cascade's run."""
    if run_manager is None:
        return [RunnableConfig(tags=[f"frugal:stage={i}"]) for i in range(stages)]
    configs = []
    for i in range(stages):
        cls = AsyncCallbackManager if isinstance(run_manager, AsyncCallbackManagerForLLMRun) else CallbackManager
        manager = cls(handlers=[], parent_run_id=run_manager.run_id)
        manager.set_handlers(run_manager.inheritable_handlers)
        manager.add_tags(run_manager.inheritable_tags)
        manager.add_tags([f"frugal:stage={i}"], inherit=False)
        # the cascade's ls_* params (its LangSmith model name) stay on its own run: each stage's run names its model
        manager.add_metadata({k: v for k, v in run_manager.inheritable_metadata.items() if not k.startswith("ls_")})
        configs.append(RunnableConfig(callbacks=manager))
    return configs


@dataclass(frozen=True)
class _StageCall:
    """One stage's call: the child (tools bound), its config (a child run), its keywords; the prompt's
    texts and the stage's model name, for the usage estimate when the provider reports none."""

    child: Runnable[Any, BaseMessage]
    messages: list[BaseMessage]
    config: RunnableConfig
    kwargs: dict[str, Any]
    prompt: list[str]
    model: str

    def _output(self, message: BaseMessage) -> StageOutput:
        return with_usage(_convert.to_output(message), self.prompt, self.model)

    def sync_call(self) -> StageOutput:
        return self._output(self.child.invoke(self.messages, self.config, **self.kwargs))

    async def async_call(self) -> StageOutput:
        return self._output(await self.child.ainvoke(self.messages, self.config, **self.kwargs))

    def sync_live(self, progress: LiveProgress) -> Generator[AIMessageChunk, None, StageOutput]:
        full: AIMessageChunk | None = None
        for chunk in self.child.stream(self.messages, self.config, **self.kwargs):
            assert isinstance(chunk, AIMessageChunk)
            full = chunk if full is None else full + chunk
            progress.add(chunk.text)
            yield chunk
        return self._output(_assembled(full))

    async def async_live(
        self, progress: LiveProgress, done: Callable[[StageOutput], None]
    ) -> AsyncIterator[AIMessageChunk]:
        full: AIMessageChunk | None = None
        async for chunk in self.child.astream(self.messages, self.config, **self.kwargs):
            assert isinstance(chunk, AIMessageChunk)
            full = chunk if full is None else full + chunk
            progress.add(chunk.text)
            yield chunk
        done(self._output(_assembled(full)))


def _with_stream_usage(stage: Any) -> Any:
    """The stage as it is called: a copy with ``stream_usage=True`` where the client has that field and
    the user left it unset (ChatOpenAI and its kin), so that a streamed call (a live last stage, or any
    stage under ``astream_events``, which streams every call) reports the tokens it was billed for. A
    stage whose OpenAI-compatible server rejects ``stream_options`` is given ``stream_usage=False``
    (its streamed calls are then billed on an estimate, flagged ``usage_estimated``)."""
    if "stream_usage" in getattr(type(stage), "model_fields", {}) and "stream_usage" not in stage.model_fields_set:
        return stage.model_copy(update={"stream_usage": True})
    return stage


def _with_logprobs(stage: Any, request: bool) -> Any:
    """The stage as it is called: a copy with ``logprobs=True`` where the client has that field (ChatOpenAI
    and its kin), ``request`` (``request_logprobs``) is on, the user left it unset and the model is not one
    that rejects it (:func:`~shared_scorer.outcome.asks_logprobs`), so that its answers carry token
    log-probabilities (``response_metadata["logprobs"]``) for the scorer."""
    if (
        not request
        or "logprobs" not in getattr(type(stage), "model_fields", {})
        or "logprobs" in stage.model_fields_set
    ):
        return stage
    if asks_logprobs(stage_name(stage)):
        return stage.model_copy(update={"logprobs": True})
    return stage


def _assembled(full: AIMessageChunk | None) -> AIMessage:
    if full is None:
        return AIMessage(content="")
    return AIMessage(
        content=full.content,
        tool_calls=full.tool_calls,
        invalid_tool_calls=full.invalid_tool_calls,
        usage_metadata=full.usage_metadata,
        response_metadata=full.response_metadata,
        additional_kwargs=full.additional_kwargs,
    )
