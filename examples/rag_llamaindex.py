"""RAG with LlamaIndex: a VectorStoreIndex over MiniLM embeddings, queried through a FrugalLLM cascade.

Offline (the default), a local replay server plays the two models, answering the query engine's prompt
from a scenario: the cheap model does not know, the big one does::

    python examples/rag_llamaindex.py

With real providers (an OpenAI-compatible endpoint; its key in OPENAI_API_KEY)::

    python examples/rag_llamaindex.py --base-url https://api.openai.com/v1

The scorer here is a toy; use a fitted one (``FrugalLLM.from_strategy``, docs/learning.md).
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext

from llama_index.core import Document, VectorStoreIndex
from llama_index.llms.openai_like import OpenAILike

from frugal_llamaindex import FrugalLLM
from frugal_llamaindex.embeddings import MiniLMEmbedding
from shared_scorer.server.testing import replay_server

MODELS = ("gpt-4o-mini", "gpt-4o")
PRICES = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}  # USD per million tokens
QUESTION = "Who is the author of Middlemarch?"
DOCUMENTS = [
    "Middlemarch is a novel by George Eliot, published in 1871-72.",
    "Paris is the capital and largest city of France.",
    "The Rhine flows from the Swiss Alps to the North Sea.",
]
SCENARIOS = [  # what the replay server answers to the query engine's prompt (it ends with the question)
    {"model": "gpt-4o-mini", "match": f"Query: {QUESTION}", "content": "I do not know.",
     "usage": {"prompt_tokens": 90, "completion_tokens": 5}},
    {"model": "gpt-4o", "match": f"Query: {QUESTION}", "content": "George Eliot.",
     "usage": {"prompt_tokens": 90, "completion_tokens": 4}},
]  # fmt: skip


def scorer(query: str, answer: str) -> float:
    """A toy scorer: an answer that admits not knowing is rejected."""
    return 0.1 if "not know" in answer else 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (default: a local replay server)")
    args = parser.parse_args()

    index = VectorStoreIndex.from_documents(
        [Document(text=text) for text in DOCUMENTS],
        embed_model=MiniLMEmbedding(),  # local weights, offline
    )
    with nullcontext(None) if args.base_url else replay_server(scenarios=SCENARIOS) as server:
        base_url = args.base_url or server.base_url
        api_key = os.environ.get("OPENAI_API_KEY", "-") if args.base_url else "-"
        llm = FrugalLLM(
            stages=[OpenAILike(model=m, api_base=base_url, api_key=api_key, is_chat_model=True) for m in MODELS],
            scorer=scorer,
            thresholds=[0.5],
            prices=PRICES,
        )
        response = index.as_query_engine(llm=llm, similarity_top_k=1).query(QUESTION)

    summary = llm.cost_tracker.summary()
    print("context:", response.source_nodes[0].node.get_content())
    print("answer:", response.response)
    answered = ", ".join(f"{MODELS[stage]} (stage {stage})" for stage in summary["answered_by_stage"])
    print(f"answered by: {answered}, {summary['escalations']} escalation")
    print("stages:", ", ".join(f"{model} ${figures['cost_usd']}" for model, figures in summary["by_model"].items()))
    print("cost_usd:", summary["total_cost_usd"])


if __name__ == "__main__":
    main()
