"""``frugal serve``'s gateway behind the ``openai`` client: any OpenAI client, any language, uses the cascade.

The script serves a two-stage cascade on 127.0.0.1 with two API keys (two tenants) and a budget, then
asks it through the official ``openai`` SDK: a plain call, a streamed one, and one the budget refuses.
Offline (the default) the stage models are played by a local replay server::

    python examples/serve_openai.py

With real stage providers (an OpenAI-compatible endpoint; its key in OPENAI_API_KEY)::

    python examples/serve_openai.py --base-url https://api.openai.com/v1

A fitted strategy is served by the command itself, the same gateway::

    frugal serve --strategy out/strategy/strategy.json --keys keys.json \\
        --stages-base-url https://api.openai.com/v1 --limit tenant=50/day --port 8000
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext

import openai
from langchain_openai import ChatOpenAI

from frugal_langchain import FrugalChatModel
from frugal_langchain.serve import LangChainBackend
from shared_scorer.budget import Budget, LedgerCostTracker, Limit
from shared_scorer.server.gateway import make_app
from shared_scorer.server.testing import make_record, replay_server, serving

MODELS = ("gpt-4o-mini", "gpt-4o")
PRICES = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}  # USD per million tokens
QUESTION = "Who wrote Middlemarch?"
RECORDS = [  # what each stage model answers, and the tokens it bills
    make_record(QUESTION, "Charles Dickens", model="gpt-4o-mini", input_tokens=12, output_tokens=3),
    make_record(QUESTION, "George Eliot", model="gpt-4o", input_tokens=12, output_tokens=4),
]
KEYS = {"sk-acme": {"tenant": "acme", "user": "svc"}, "sk-bigco": {"tenant": "bigco"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="the stages' OpenAI-compatible endpoint (default: a local replay server)")
    args = parser.parse_args()

    budget = Budget("memory:", [Limit("tenant", "0.0005", period="day")])
    with nullcontext(None) if args.base_url else replay_server(RECORDS) as provider:
        base_url = args.base_url or provider.base_url
        api_key = os.environ.get("OPENAI_API_KEY", "-") if args.base_url else "-"
        model = FrugalChatModel(
            stages=[ChatOpenAI(model=m, base_url=base_url, api_key=api_key, max_tokens=16) for m in MODELS],
            scorer=lambda query, answer: 0.9 if "Eliot" in answer else 0.1,  # a toy; fit one: docs/learning.md
            thresholds=[0.5],
            prices=PRICES,
            budget=budget,
            on_budget="raise",
            cost_tracker=LedgerCostTracker(budget.ledger),
        )
        with serving(make_app(LangChainBackend(model), KEYS, budget)) as gateway:
            acme = openai.OpenAI(base_url=gateway, api_key="sk-acme", max_retries=0)
            messages = [{"role": "user", "content": QUESTION}]
            reply = acme.chat.completions.create(model="frugal", messages=messages)
            trail = (reply.model_extra or {})["frugal"]
            print(f"answer: {reply.choices[0].message.content} (by {reply.model}, ${trail['cost_usd']})")
            stream = acme.chat.completions.create(model="frugal", messages=messages, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            print(f"streamed: {text}")
            try:
                acme.chat.completions.create(model="frugal", messages=messages)
            except openai.RateLimitError as error:
                print(f"third call: {error.status_code} {error.code}")
            bigco = openai.OpenAI(base_url=gateway, api_key="sk-bigco", max_retries=0)
            other = bigco.chat.completions.create(model="frugal", messages=messages, user="dana")
            print(f"bigco: {other.choices[0].message.content}")

    for tenant in ("acme", "bigco"):
        spent = sum(r.cost_usd for r in budget.ledger.records() if r.tenant == tenant)
        print(f"spent by {tenant}: ${spent}")


if __name__ == "__main__":
    main()
