"""Live streaming of the last stage: the drivers' helpers for a stream the caller reads as it comes.

:meth:`~shared_scorer.cascade.Cascade.stream` and :meth:`~shared_scorer.cascade.Cascade.astream` run the
last stage through :func:`live` / :func:`alive`; the adapter's live stream keeps a :class:`LiveProgress`
so that a stream the caller stops reading is still billed (:func:`abandoned`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shared_scorer.outcome import StageOutput, tool_text
from shared_scorer.tokens import estimate_prompt_tokens, estimate_tokens

__all__ = ["Called", "LiveProgress", "abandoned", "alive", "elapsed_ms", "kept", "live", "with_usage"]

LiveStream = Callable[[], Generator[Any, None, StageOutput]]
AsyncLiveStream = Callable[[Callable[[StageOutput], None]], AsyncIterator[Any]]


@dataclass
class Called:
    """What one stage call gave: its output or the error it raised, and how long it took."""

    output: StageOutput | None
    error: BaseException | None
    latency_ms: float


def live(live_last: LiveStream) -> Generator[Any, None, Called]:
    started = time.perf_counter()
    stream = live_last()
    emitted = False
    try:
        while True:
            chunk = next(stream)
            emitted = True
            try:
                yield chunk
            except GeneratorExit:
                stream.close()  # the provider's stream ends with the caller's
                raise
    except StopIteration as stop:
        return Called(kept(stop.value), None, elapsed_ms(started))
    except Exception as exc:
        if emitted:
            raise
        return Called(None, exc, elapsed_ms(started))


async def alive(live_last: AsyncLiveStream, box: list[Called]) -> AsyncGenerator[Any, None]:
    started = time.perf_counter()
    done: list[StageOutput] = []
    emitted = False
    stream = live_last(done.append)
    try:
        async for chunk in stream:
            emitted = True
            try:
                yield chunk
            except GeneratorExit:
                await stream.aclose()  # type: ignore[attr-defined]  # the provider's stream ends with the caller's
                raise
    except Exception as exc:
        if emitted:
            raise
        box.append(Called(None, exc, elapsed_ms(started)))
        return
    if not done:
        box.append(Called(None, RuntimeError("live stream ended without an output"), elapsed_ms(started)))
    else:
        box.append(Called(kept(done[0]), None, elapsed_ms(started)))


@dataclass
class LiveProgress:
    """What a live-streamed last stage has produced so far, kept by the adapter's live stream (it adds
    each chunk's text before yielding the chunk) so that the core can bill a stream the caller stops
    reading. ``prompt`` holds the texts of the prompt's messages."""

    prompt: Sequence[str] = ()
    text: str = ""

    def add(self, text: str) -> None:
        self.text += text


def with_usage(output: StageOutput, prompt: Sequence[str], model: str) -> StageOutput:
    """``output`` with the token counts its provider did not report estimated (see
    :mod:`shared_scorer.tokens`): input from the prompt's texts, output from the answer's text and tool
    calls; such an output is flagged ``usage_estimated``. Reported counts are kept as they are.

    >>> with_usage(StageOutput("Paris", 9, 1), ["Capital of France?"], "m").usage_estimated
    False
    >>> estimated = with_usage(StageOutput("Paris"), ["Capital of France?"], "m")
    >>> (estimated.input_tokens, estimated.output_tokens, estimated.usage_estimated)
    (13, 2, True)
    """
    if not isinstance(output, StageOutput) or (output.input_tokens is not None and output.output_tokens is not None):
        return output
    written = "\n".join(t for t in (output.text, tool_text(output)) if t)
    return replace(
        output,
        input_tokens=output.input_tokens if output.input_tokens is not None else estimate_prompt_tokens(prompt, model),
        output_tokens=output.output_tokens if output.output_tokens is not None else estimate_tokens(written, model),
        usage_estimated=True,
    )


def abandoned(progress: LiveProgress | None, model: str) -> StageOutput:
    """The live stage's output when the caller stopped reading: an invalid answer (never cached or
    accepted) billed at an estimate of what was produced."""
    progress = progress or LiveProgress()
    problem = f"the caller stopped reading the stream after {len(progress.text)} characters"
    return with_usage(StageOutput(progress.text, problems=(problem,)), progress.prompt, model)


def kept(output: Any) -> Any:
    """A live-streamed reply cut at its output limit whose text the caller already received is kept as
    the answer (it cannot be taken back); one with no text is still invalid, and the cascade falls back."""
    if isinstance(output, StageOutput) and output.truncated and output.text.strip():
        return replace(output, truncated=False)
    return output


def elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
