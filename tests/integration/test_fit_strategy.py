"""A tiny ``fit`` (tiny random DistilBERT), then ``from_strategy`` over real ChatOpenAI clients of the replay server."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from langchain_openai import ChatOpenAI

from frugal_langchain import FrugalChatModel
from shared_scorer.errors import CheckpointError, ConfigurationError
from shared_scorer.fitting.crossfit import TopLayerConfig
from shared_scorer.fitting.data import Record
from shared_scorer.fitting.fit import FitConfig, fit
from shared_scorer.fitting.search import evaluate_chain
from shared_scorer.scoring.training import TrainConfig
from shared_scorer.server.testing import replay_server
from shared_scorer.strategy import Strategy, split_cap

MODELS = {"cheap": 0.001, "mid": 0.004, "big": 0.05}
PRICES = {"cheap": (1, 1), "mid": (4, 4), "big": (50, 50)}


def records() -> list[Record]:
    rows = []
    for i in range(24):
        query = f"Question number {i}: what is {i} squared?"
        for m, cost in MODELS.items():
            right = (m == "big") or (m == "mid" and i % 3 != 0) or (m == "cheap" and i % 2 == 0)
            answer = str(i * i) if right else "I am not sure."
            rows.append(Record(f"q{i}", query, m, answer, float(right), cost, 500, 500, str(i * i)))
    return rows


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("fit")
    config = FitConfig(
        folds=2,
        train=TrainConfig(backbone="tiny-random", max_length=32, batch_size=16, progress=False, num_threads=1),
        top=TopLayerConfig(epochs=2),
        budget=0.01,
    )
    return fit(records(), out, config), out


def test_fit_writes_a_strategy_beside_its_scorer(fitted: Any) -> None:
    result, out = fitted
    strategy = Strategy.load(out / "strategy.json")
    assert strategy == result.strategy
    assert strategy.scorer_path() == (out / "scorer").resolve()
    assert (out / "scorer" / "scorer.json").is_file()
    assert strategy.objective == {"budget": 0.01}
    assert strategy.expected["cost_per_query"] <= 0.01
    # the expected figures are those of the chosen point on the out-of-fold table
    figures = evaluate_chain(result.table, strategy.chain, strategy.thresholds)
    assert (figures.accuracy, figures.cost) == pytest.approx(
        (strategy.expected["accuracy"], strategy.expected["cost_per_query"])
    )
    assert result.table.n == 24 and {split_cap(m)[0] for m in result.table.models} == set(MODELS)
    assert strategy.info["folds"] == 2 and strategy.info["design"] == "top-layer"
    assert len(strategy.data_fingerprint) == 64
    accuracies = [p.accuracy for p in strategy.frontier]
    assert accuracies == sorted(accuracies) and strategy.frontier.points[-1].accuracy == 1.0


def test_the_scorer_ships_its_combiners_and_prior_and_scores_the_same_after_loading(fitted: Any) -> None:
    from shared_scorer.scoring.base import ScoreRequest
    from shared_scorer.scoring.distilbert import DistilBertScorer

    result, out = fitted
    loaded = DistilBertScorer.load(out / "scorer")
    assert set(loaded.combiners) == set(MODELS) and loaded.prior is not None
    assert {m: c.to_json() for m, c in loaded.combiners.items()} == {
        m: c.to_json() for m, c in result.scorer.combiners.items()
    }
    assert loaded.prior.weights == result.scorer.prior.weights
    request = ScoreRequest("Question number 3: what is 3 squared?", "9", "mid", 1, ("I am not sure.",), 500)
    assert loaded.score(request) == pytest.approx(result.scorer.score(request), abs=1e-6)
    assert set(loaded.route("Question number 3: what is 3 squared?")) == set(MODELS)


def test_from_strategy_builds_a_working_cascade(fitted: Any) -> None:
    result, out = fitted
    strategy = result.strategy.select(target_accuracy=1.0)
    strategy.save(out / "full.json")
    assert strategy.chain[-1] == "big"
    with replay_server(records()) as server:
        stages = {
            m: ChatOpenAI(model=m, base_url=server.base_url, api_key="x", max_retries=0, timeout=5) for m in MODELS
        }
        llm = FrugalChatModel.from_strategy(out / "full.json", stages=stages, prices=PRICES)
        assert llm.thresholds == list(strategy.thresholds)
        assert [s.model_name for s in llm.stages] == list(strategy.chain)
        reply = llm.invoke("Question number 4: what is 4 squared?")
        trail = reply.response_metadata["frugal"]
        assert reply.content == "16"
        assert trail["model"] in strategy.chain
        assert server.request_count() == trail["escalations"] + 1
        # the strategy's other frontier points, without refitting
        cheapest = FrugalChatModel.from_strategy(
            out / "full.json", stages=stages, prices=PRICES, max_cost_per_query=0.001
        )
        assert [s.model_name for s in cheapest.stages] == ["cheap"]


def test_from_strategy_names_missing_stages_and_bad_files(fitted: Any, tmp_path: Path) -> None:
    result, out = fitted
    chain = list(result.strategy.chain)
    with pytest.raises(ConfigurationError, match=r"no model given for \[.*\] \(stages= has \['other'\]\)"):
        FrugalChatModel.from_strategy(out / "strategy.json", stages={"other": object()})
    data = json.loads((out / "strategy.json").read_text())
    data["version"] = 99
    (tmp_path / "strategy.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="field 'version' is 99"):
        FrugalChatModel.from_strategy(tmp_path / "strategy.json", stages={})
    data["version"] = 1  # a valid strategy whose scorer folder is missing
    (tmp_path / "strategy.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"scorer\.json: missing"):
        FrugalChatModel.from_strategy(tmp_path / "strategy.json", stages={m: object() for m in chain})


def test_one_strategy_gives_the_same_decisions_through_both_adapters(fitted: Any) -> None:
    from llama_index.llms.openai_like import OpenAILike

    from frugal_llamaindex import FrugalLLM

    result, out = fitted
    result.strategy.select(target_accuracy=1.0).save(out / "both.json")
    queries = [f"Question number {i}: what is {i} squared?" for i in range(24)]
    with replay_server(records()) as server:
        chat = FrugalChatModel.from_strategy(
            out / "both.json",
            stages={m: ChatOpenAI(model=m, base_url=server.base_url, api_key="x", max_retries=0) for m in MODELS},
            prices=PRICES,
        )
        llm = FrugalLLM.from_strategy(
            out / "both.json",
            stages={
                m: OpenAILike(model=m, api_base=server.base_url, api_key="x", is_chat_model=True, max_retries=0)
                for m in MODELS
            },
            prices=PRICES,
        )
        assert chat.strategy_id == llm.strategy_id != ""
        lc = [m.response_metadata["frugal"] for m in chat.batch(queries)]
        li = [llm.complete(q).additional_kwargs["frugal"] for q in queries]

    def decisions(trail: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(s["model"], s["status"], s["score"], s["cost_usd"]) for s in trail["stages"]]

    assert [decisions(t) for t in lc] == [decisions(t) for t in li]
    assert sum(Decimal(t["cost_usd"]) for t in lc) == sum(Decimal(t["cost_usd"]) for t in li)


def test_a_capped_chain_entry_sets_max_tokens_and_escalates_cut_replies(fitted: Any) -> None:
    from dataclasses import replace

    result, out = fitted
    strategy = replace(result.strategy, chain=("cheap@300", "big"), thresholds=(0.0,))
    strategy.save(out / "capped.json")
    assert strategy.provider_models == ["cheap", "big"]
    with replay_server(records()) as server:
        stages = {
            m: ChatOpenAI(model=m, base_url=server.base_url, api_key="x", max_retries=0, timeout=5) for m in MODELS
        }
        llm = FrugalChatModel.from_strategy(out / "capped.json", stages=stages, prices=PRICES)
        assert [(s.model_name, s.max_tokens) for s in llm.stages] == [("cheap", 300), ("big", None)]
        assert stages["cheap"].max_tokens is None  # the given model is copied, not changed
        reply = llm.invoke("Question number 4: what is 4 squared?")
        first, second = reply.response_metadata["frugal"]["stages"]
        # every recorded reply used 500 output tokens: cut at 300, it escalates although the threshold is 0
        assert first["status"] == "invalid" and first["output_tokens"] == 300
        assert second["status"] == "accepted" and reply.content == "16"
    with pytest.raises(ConfigurationError, match="caps cheap at 300 output tokens, but object has no max_tokens"):
        FrugalChatModel.from_strategy(out / "capped.json", stages={"cheap": object(), "big": object()})


def test_bench_searches_output_caps_and_reports_provider_models_as_singles(tmp_path: Path) -> None:
    from shared_scorer.fitting.bench import bench

    def rows(prefix: str) -> list[Record]:
        out = []
        for r in records():
            i = int(r.query_id[1:])
            tokens = (4000 if i % 4 == 0 else 200) if r.model == "big" else 500  # big rambles on every 4th
            out.append(Record(f"{prefix}{r.query_id}", r.query, r.model, r.answer, r.correct, 0.0, 10, tokens))
        return out

    config = FitConfig(
        folds=2,
        train=TrainConfig(backbone="tiny-random", max_length=32, batch_size=16, progress=False, num_threads=1),
        top=TopLayerConfig(epochs=1),
        signals=(),  # the text score alone: with the answer-length signal the cascade would need no cap here
    )
    report = bench(rows("train-"), rows("test-"), tmp_path, config, prices=PRICES)
    assert report["models"] == ["cheap", "mid", "big"] and report["caps"] == {"big": [200]}
    assert [s["model"] for s in report["single_models"]] == ["cheap", "mid", "big"]
    big = next(s for s in report["single_models"] if s["model"] == "big")
    assert big["cost_per_query"] == pytest.approx((10 * 50 + (6 * 4000 + 18 * 200) / 24 * 50) / 1e6)
    capped = [p for p in report["frontier"] if "big@200" in p["chain"]]
    assert capped, "a cheaper capped big model should be on the frontier"
    # a capped stage pays at most its cap: every capped point costs less than big uncapped on every query
    assert all(p["cost_per_query"] < big["cost_per_query"] for p in capped)
