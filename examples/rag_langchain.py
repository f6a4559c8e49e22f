"""RAG with LangChain: a MiniLM vector store, a retriever, a prompt and a FrugalChatModel cascade.

Offline (the default), a local replay server plays the two models, answering the RAG prompt from a
scenario: the cheap model does not know, the big one does::

    python examples/rag_langchain.py

With real providers (an OpenAI-compatible endpoint; its key in OPENAI_API_KEY)::

    python examples/rag_langchain.py --base-url https://api.openai.com/v1

The scorer here is a toy; use a fitted one (``FrugalChatModel.from_strategy``, docs/learning.md).
"""

from __future__ import annotations

import argparse
import os
from contextlib import nullcontext

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_openai import ChatOpenAI

from frugal_langchain import FrugalChatModel
from frugal_langchain.embeddings import MiniLMEmbeddings
from shared_scorer.server.testing import replay_server

MODELS = ("gpt-4o-mini", "gpt-4o")
PRICES = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00)}  # USD per million tokens
QUESTION = "Who is the author of Middlemarch?"
DOCUMENTS = [
    "Middlemarch is a novel by George Eliot, published in 1871-72.",
    "Paris is the capital and largest city of France.",
    "The Rhine flows from the Swiss Alps to the North Sea.",
]
SCENARIOS = [  # what the replay server answers to the RAG prompt (it contains the question)
    {"model": "gpt-4o-mini", "match": f"Question: {QUESTION}", "content": "I do not know.",
     "usage": {"prompt_tokens": 60, "completion_tokens": 5}},
    {"model": "gpt-4o", "match": f"Question: {QUESTION}", "content": "George Eliot.",
     "usage": {"prompt_tokens": 60, "completion_tokens": 4}},
]  # fmt: skip


def scorer(query: str, answer: str) -> float:
    """A toy scorer: an answer that admits not knowing is rejected."""
    return 0.1 if "not know" in answer else 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (default: a local replay server)")
    args = parser.parse_args()

    store = InMemoryVectorStore(MiniLMEmbeddings())  # local weights, offline
    store.add_texts(DOCUMENTS)
    retriever = store.as_retriever(search_kwargs={"k": 1})
    prompt = ChatPromptTemplate.from_messages(
        [("human", "Answer from the context.\nContext: {context}\nQuestion: {question}")]
    )

    with nullcontext(None) if args.base_url else replay_server(scenarios=SCENARIOS) as server:
        base_url = args.base_url or server.base_url
        api_key = os.environ.get("OPENAI_API_KEY", "-") if args.base_url else "-"
        llm = FrugalChatModel(
            stages=[ChatOpenAI(model=m, base_url=base_url, api_key=api_key) for m in MODELS],
            scorer=scorer,
            thresholds=[0.5],
            prices=PRICES,
        )
        context = retriever | (lambda docs: "\n".join(doc.page_content for doc in docs))
        chain = {"context": context, "question": RunnablePassthrough()} | prompt | llm
        message = chain.invoke(QUESTION)

    trail = message.response_metadata["frugal"]
    print("context:", retriever.invoke(QUESTION)[0].page_content)
    print("answer:", message.content)
    print(f"answered by: {trail['model']} (stage {trail['stage']}, {trail['escalations']} escalation)")
    print("stages:", ", ".join(f"{s['model']} {s['status']} ${s['cost_usd']}" for s in trail["stages"]))
    print("cost_usd:", trail["cost_usd"])


if __name__ == "__main__":
    main()
