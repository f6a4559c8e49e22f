"""LangChain's standard unit suite against FrugalChatModel (tool calling and structured output on)."""

from __future__ import annotations

from typing import Any

from langchain_openai import ChatOpenAI
from langchain_tests.unit_tests import ChatModelUnitTests

from frugal_langchain import FrugalChatModel


class TestFrugalChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[FrugalChatModel]:
        return FrugalChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "stages": [
                ChatOpenAI(model="gpt-4o-mini", api_key="unused", base_url="http://127.0.0.1:9/v1"),
                ChatOpenAI(model="gpt-4o", api_key="unused", base_url="http://127.0.0.1:9/v1"),
            ],
            "scorer": lambda query, answer: 0.5,
            "thresholds": [0.7],
        }

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # each stage client owns its key: FrugalChatModel refuses an api_key it would only ignore
        params = dict(super().standard_chat_model_params)
        params.pop("api_key", None)
        return params

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True
