"""An agent with a tool in LlamaIndex: a ``FunctionAgent`` over a FrugalLLM cascade.

Offline (the default), a local replay server plays the two models from scenarios: the cheap model first
writes a tool call whose arguments do not fit the tool's schema (invalid: the cascade escalates), the big
model writes a valid one, the agent runs the tool, and the cheap model's final answer is accepted::

    python examples/agent_llamaindex.py

With real providers (an OpenAI-compatible endpoint; its key in OPENAI_API_KEY)::

    python examples/agent_llamaindex.py --base-url https://api.openai.com/v1
"""

from __future__ import annotations

import argparse
import asyncio
import os
from contextlib import nullcontext

from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai_like import OpenAILike

from frugal_llamaindex import FrugalLLM
from shared_scorer.server.testing import replay_server

MODELS = ("gpt-4o-mini", "gpt-4o")
PRICES = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}  # USD per million tokens
QUESTION = "What is the weather in Paris?"
SCENARIOS = [  # the replay server's script (docs/replay-server.md): checked in order, first match answers
    {"model": "gpt-4o-mini", "match": "weather in Paris", "usage": {"prompt_tokens": 70, "completion_tokens": 9},
     "tool_calls": [{"name": "get_weather", "arguments": {"city": 75}}]},  # not a string: escalates
    {"model": "gpt-4o", "match": "weather in Paris", "usage": {"prompt_tokens": 70, "completion_tokens": 15},
     "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    {"model": "gpt-4o-mini", "match": "weather in Paris", "after_tool": True,  # once the tool has run
     "content": "It is sunny and 21 C in Paris.", "usage": {"prompt_tokens": 110, "completion_tokens": 12}},
]  # fmt: skip


def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny and 21 C in {city}"


async def run(base_url: str, api_key: str) -> tuple[str, FrugalLLM]:
    def stage(model: str) -> OpenAILike:
        return OpenAILike(
            model=model, api_base=base_url, api_key=api_key, is_chat_model=True, is_function_calling_model=True
        )

    llm = FrugalLLM(
        stages=[stage(m) for m in MODELS],
        scorer=lambda query, answer: 0.9,  # a toy: final answers are accepted; tool calls are validated
        thresholds=[0.5],
        prices=PRICES,
    )
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(get_weather)], llm=llm)
    result = await agent.run(QUESTION)
    return str(result), llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (default: a local replay server)")
    args = parser.parse_args()

    with nullcontext(None) if args.base_url else replay_server(scenarios=SCENARIOS) as server:
        base_url = args.base_url or server.base_url
        api_key = os.environ.get("OPENAI_API_KEY", "-") if args.base_url else "-"
        answer, llm = asyncio.run(run(base_url, api_key))
        if server is not None:
            print("provider calls:", ", ".join(request.model for request in server.requests))

    summary = llm.cost_tracker.summary()
    print("answer:", answer)
    print(f"cascade calls: {summary['calls']}, escalations: {summary['escalations']}")
    print("by model:", ", ".join(f"{model} ${figures['cost_usd']}" for model, figures in summary["by_model"].items()))
    print("cost_usd:", summary["total_cost_usd"])


if __name__ == "__main__":
    main()
