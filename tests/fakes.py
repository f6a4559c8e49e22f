"""An honest offline chat model for the standard integration suite.

It answers every prompt the same way (it echoes the last message back) and reports token usage by
counting whitespace-separated words. It does not recognise any test's prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult


class EchoChatModel(BaseChatModel):
    """Replies ``"<prefix>: <last message text>"``; usage = word counts."""

    model_name: str = "echo-small"
    prefix: str = "echo"

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _reply(self, messages: list[BaseMessage]) -> tuple[str, dict[str, int]]:
        text = f"{self.prefix}: {messages[-1].text or '(empty)'}"
        tokens_in = sum(len(m.text.split()) for m in messages)
        tokens_out = len(text.split())
        return text, {
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text, usage = self._reply(messages)
        message = AIMessage(content=text, usage_metadata=usage, response_metadata={"model_name": self.model_name})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        text, usage = self._reply(messages)
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", usage_metadata=usage, response_metadata={"model_name": self.model_name})
        )
