"""Per-call overhead of FrugalChatModel over calling its child directly.

A zero-latency child and a constant scorer that accepts the first stage, so what is measured is the
cascade's own work: building the stage calls, the decision loop, pricing, the trail and the tracker.

    python benchmarks/overhead.py [--calls 2000]

Prints JSON: {"sync": {"overhead_p50_ms", "overhead_p95_ms", ...}, "async": {...}, "calls", "machine"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from benchmarks._machine import machine
from frugal_langchain import FrugalChatModel


class InstantChatModel(BaseChatModel):
    """Answers at once with a fixed message and usage."""

    model_name: str = "instant"

    @property
    def _llm_type(self) -> str:
        return "instant"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        usage = {"input_tokens": 12, "output_tokens": 4, "total_tokens": 16}
        return ChatResult(generations=[ChatGeneration(message=AIMessage("Paris", usage_metadata=usage))])


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarise(direct: list[float], frugal: list[float]) -> dict[str, float]:
    return {
        "direct_p50_ms": round(statistics.median(direct), 4),
        "frugal_p50_ms": round(statistics.median(frugal), 4),
        "overhead_p50_ms": round(statistics.median(frugal) - statistics.median(direct), 4),
        "overhead_p95_ms": round(percentile(frugal, 95) - percentile(direct, 95), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    child = InstantChatModel(model_name="instant-small")
    model = FrugalChatModel(
        stages=[child, InstantChatModel(model_name="instant-big")],
        scorer=lambda query, answer: 1.0,
        thresholds=[0.5],
        prices={"instant-small": (1, 2), "instant-big": (10, 20)},
    )
    prompt = "What is the capital of France?"
    for _ in range(200):  # warm up both paths
        child.invoke(prompt)
        model.invoke(prompt)

    direct, frugal = [], []
    for _ in range(args.calls):  # interleaved, so drift hits both alike
        t = time.perf_counter()
        child.invoke(prompt)
        direct.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        model.invoke(prompt)
        frugal.append((time.perf_counter() - t) * 1000)

    async def measure_async() -> tuple[list[float], list[float]]:
        adirect, afrugal = [], []
        for _ in range(100):
            await child.ainvoke(prompt)
            await model.ainvoke(prompt)
        for _ in range(args.calls):
            t = time.perf_counter()
            await child.ainvoke(prompt)
            adirect.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await model.ainvoke(prompt)
            afrugal.append((time.perf_counter() - t) * 1000)
        return adirect, afrugal

    adirect, afrugal = asyncio.run(measure_async())
    print(
        json.dumps(
            {
                "sync": summarise(direct, frugal),
                "async": summarise(adirect, afrugal),
                "calls": args.calls,
                "target_overhead_p50_ms": 1.0,
                "machine": machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
