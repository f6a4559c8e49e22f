"""An agent with a tool in LangChain: ``langchain.agents.create_agent`` over a FrugalChatModel cascade.

Offline (the default), a local replay server plays the two models from scenarios: the cheap model first
writes a tool call whose arguments do not parse (invalid: the cascade escalates), the big model writes a
valid one, the agent runs the tool, and the cheap model's final answer is accepted::

    python examples/agent_langchain.py

With real providers (an OpenAI-compatible endpoint; its key in OPENAI_API_KEY)::

    python examples/agent_langchain.py --base-url https://api.openai.com/v1
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext
from decimal import Decimal

from langchain.agents import create_agent
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from frugal_langchain import FrugalChatModel
from shared_scorer.server.testing import replay_server

MODELS = ("gpt-4o-mini", "gpt-4o")
PRICES = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}  # USD per million tokens
QUESTION = "What is the weather in Paris?"
SCENARIOS = [  # the replay server's script (docs/replay-server.md): checked in order, first match answers
    {"model": "gpt-4o-mini", "match": "weather in Paris", "usage": {"prompt_tokens": 70, "completion_tokens": 9},
     "tool_calls": [{"name": "get_weather", "arguments": '{"city": '}]},  # does not parse: escalates
    {"model": "gpt-4o", "match": "weather in Paris", "usage": {"prompt_tokens": 70, "completion_tokens": 15},
     "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
    {"model": "gpt-4o-mini", "match": "weather in Paris", "after_tool": True,  # once the tool has run
     "content": "It is sunny and 21 C in Paris.", "usage": {"prompt_tokens": 110, "completion_tokens": 12}},
]  # fmt: skip


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny and 21 C in {city}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (default: a local replay server)")
    args = parser.parse_args()

    with nullcontext(None) if args.base_url else replay_server(scenarios=SCENARIOS) as server:
        base_url = args.base_url or server.base_url
        api_key = os.environ.get("OPENAI_API_KEY", "-") if args.base_url else "-"
        llm = FrugalChatModel(
            stages=[ChatOpenAI(model=m, base_url=base_url, api_key=api_key) for m in MODELS],
            scorer=lambda query, answer: 0.9,  # a toy: final answers are accepted; tool calls are validated
            thresholds=[0.5],
            prices=PRICES,
        )
        agent = create_agent(llm, tools=[get_weather])
        state = agent.invoke({"messages": [("human", QUESTION)]})

    steps = [m for m in state["messages"] if m.type == "ai"]
    for step in steps:
        trail = step.response_metadata["frugal"]
        did = f"calls {step.tool_calls[0]['name']}({step.tool_calls[0]['args']})" if step.tool_calls else "answers"
        called = [s for s in trail["stages"] if s["status"] != "not_called"]
        stages = ", ".join(f"{s['model']} {s['status']} ${s['cost_usd']}" for s in called)
        print(f"step: {trail['model']} {did} [{stages}]")
    print("answer:", steps[-1].content)
    total = sum((Decimal(step.response_metadata["frugal"]["cost_usd"]) for step in steps), Decimal(0))
    print("cost_usd:", total)


if __name__ == "__main__":
    main()
