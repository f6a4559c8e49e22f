"""LangChain's standard integration suite, for what an offline child can honestly do.

The children are ``EchoChatModel``s (they echo every prompt; see tests/fakes.py): invoke, stream,
batch, async, usage metadata and conversations run for real through the cascade. Tool calling and
structured output need a model that decides to call tools, which an echo cannot honestly do: those are
covered by the replay-server tests instead.
"""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests

from frugal_langchain import FrugalChatModel
from tests.fakes import EchoChatModel


class TestFrugalChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[FrugalChatModel]:
        return FrugalChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "stages": [
                EchoChatModel(model_name="echo-small"),
                EchoChatModel(model_name="echo-big", prefix="big"),
            ],
            # rejects the first stage's answer half the time, by its length: both paths get exercised
            "scorer": lambda query, answer: 0.9 if len(answer) % 2 else 0.1,
            "thresholds": [0.5],
            "prices": {"echo-small": (1, 2), "echo-big": (10, 20)},
        }

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True
