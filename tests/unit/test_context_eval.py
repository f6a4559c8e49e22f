"""The constructed context evaluation (benchmarks/context_eval.py): exact labelling rules, deterministic
profiles, and a whole run on a hand-built dataset with the tiny-random backbone."""

from __future__ import annotations

import json

from benchmarks import context_eval
from benchmarks.context_eval import PROFILES, construct, meets, profile_of, subsample, words
from shared_scorer.fitting.data import Record

NAMES = [p.name for p in PROFILES]


def test_profiles_are_assigned_by_hash_of_the_query_id():
    assert NAMES == ["standard", "bare", "brief", "plain", "sentence"]
    assert [profile_of(f"q{i}").name for i in range(8)] == [
        "standard",
        "standard",
        "bare",
        "bare",
        "sentence",
        "plain",
        "standard",
        "sentence",
    ]


def test_each_requirement_is_an_exact_rule():
    def verdicts(answer: str) -> dict[str, bool]:
        return {p.name: meets(p, answer) for p in PROFILES}

    assert verdicts("George Eliot") == {
        "standard": True, "bare": True, "brief": True, "plain": True, "sentence": False
    }  # fmt: skip
    assert verdicts("**George Eliot**") == {
        "standard": True, "bare": True, "brief": True, "plain": False, "sentence": False
    }  # fmt: skip
    assert verdicts("It was George Eliot.") == {
        "standard": True, "bare": True, "brief": True, "plain": True, "sentence": True
    }  # fmt: skip
    assert verdicts("- George Eliot")["plain"] is False and verdicts("# Answer\nGeorge Eliot")["plain"] is False
    assert verdicts("Eliot wrote it.\nYes.")["sentence"] is False  # a line break: not one sentence
    assert words("**George** `Eliot` #1") == ["George", "Eliot", "1"]
    ten, eleven = " ".join(["word"] * 10), " ".join(["word"] * 11)
    assert (verdicts(ten)["bare"], verdicts(eleven)["bare"]) == (True, False)
    twenty_nine, thirty = " ".join(["word"] * 29), " ".join(["word"] * 30)
    assert (verdicts(twenty_nine)["brief"], verdicts(thirty)["brief"]) == (True, False)


def test_labels_are_recorded_correctness_and_the_requirement():
    rows = [
        Record("q2", "Who wrote Middlemarch?", "m", "**George Eliot** wrote it, in 1871.", 1.0, 0.01),  # bare: 6 words
        Record("q5", "Who wrote Middlemarch?", "m", "**George Eliot**", 1.0, 0.01),  # plain: Markdown
        Record("q4", "Who wrote Middlemarch?", "m", "It was George Eliot.", 1.0, 0.01),  # sentence
        Record("q4", "Who wrote Middlemarch?", "n", "It was Charles Dickens.", 0.0, 0.02),  # wrong stays wrong
        Record("q0", "Who wrote Middlemarch?", "m", "- George Eliot", 1.0, 0.01),  # standard: anything goes
    ]
    out = construct(rows)
    assert [r.correct for r in out] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert [(r.system, r.profile) for r in out][:2] == [
        (PROFILES[1].system, "channel: voice; plan: api"),
        (PROFILES[3].system, "channel: widget; plan: pro"),
    ]
    assert [(r.query_id, r.model, r.answer, r.cost_usd) for r in out] == [
        (r.query_id, r.model, r.answer, r.cost_usd) for r in rows
    ]


def test_subsample_keeps_whole_queries_in_hash_order():
    rows = [Record(f"q{i}", "?", m, "a", 1.0, 0.0) for i in range(10) for m in ("m", "n")]
    kept = subsample(rows, 3)
    assert sorted({r.query_id for r in kept}) == sorted({r.query_id for r in subsample(list(reversed(rows)), 3)})
    assert len(kept) == 6 and len({r.query_id for r in kept}) == 3
    assert subsample(rows, None) == rows


def test_a_whole_run_reports_both_scorers(tmp_path):
    answers = ["It was George Eliot.", "**George Eliot**", "George Eliot", "I am not sure."]
    rows = []
    for i in range(40):
        for j, model in enumerate(("cheap", "dear")):
            answer = answers[(i + j) % 4]
            row = {"query_id": f"q{i}", "query": f"Who wrote book {i}?", "model": model, "answer": answer}
            rows.append(row | {"correct": float(answer != "I am not sure."), "cost_usd": 0.001 * (1 + 9 * j)})
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report.json"
    options = ["--backbone", "tiny-random", "--max-length", "48", "--threads", "1", "--quiet"]
    report = context_eval.main(
        ["--train", str(data), "--test", str(data), "--json", str(out), "--queries", "0", "--test-queries", "0",
         "--unchanged-train", str(data), "--unchanged-test", str(data), *options]
    )  # fmt: skip
    assert json.loads(out.read_text())["constructed"] is True
    part = report["constructed_comparison"]
    for name in ("context_blind", "context_aware"):
        assert part[name]["train_rows"] == part[name]["test_rows"] == 80
        assert set(part[name]["out_of_fold_auroc"]["per_model"]) == {"cheap", "dear"}
        assert set(part[name]["headline"]["accuracy_at_cost_fraction"]) == {"0.1", "0.2", "0.5"}
    assert report["labels"]["train"]["by_model"] == {
        "cheap": {"rows": 40, "recorded_accuracy": 0.75, "constructed_accuracy": 0.575},
        "dear": {"rows": 40, "recorded_accuracy": 0.75, "constructed_accuracy": 0.65},
    }
    (unchanged,) = report["unchanged"]
    assert unchanged["unchanged_without_context"] == {"rows": 160, "identical": True, "rows_with_context": 0}
