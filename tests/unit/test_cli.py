"""Every ``frugal`` subcommand through ``shared_scorer.cli.main``: ``--help``, a cheap real run, usage errors,
and one-line errors (exit 2) for a FrugalError; the core runs without the langchain extra."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from decimal import Decimal
from pathlib import Path

import pytest

from shared_scorer.budget import open_ledger
from shared_scorer.budget.ledger import SpendRecord
from shared_scorer.cli import build_parser, main
from shared_scorer.fitting.data import Record
from shared_scorer.server.testing import make_record, replay_server

COMMANDS = (
    "replay-server",
    "train-scorer",
    "eval",
    "collect",
    "fit",
    "bench",
    "advise",
    "report",
    "serve",
    "train-cache-verifier",
    "cache-bench",
)
MODELS = {"cheap": 0.001, "big": 0.05}
PRICES = {"cheap": {"input_per_mtok": 1, "output_per_mtok": 1}, "big": {"input_per_mtok": 50, "output_per_mtok": 50}}


def rows(n: int = 16) -> list[Record]:
    out = []
    for i in range(n):
        for model, cost in MODELS.items():
            right = model == "big" or i % 2 == 0
            answer = str(i * i) if right else "I am not sure."
            out.append(Record(f"q{i}", f"What is {i} squared?", model, answer, float(right), cost, 100, 10, str(i * i)))
    return out


def write_rows(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_every_subcommand_is_tested_here() -> None:
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(choices) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_zero(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: frugal {command}" in capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_a_run_handler(command: str) -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    assert callable(sub.get_default("run")), command


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--ledger", "x.db", "--no-such-option"],
        ["fit", "--train", "t.jsonl", "--out", "o", "--max-depth", "three"],
        ["serve", "--strategy", "s", "--keys", "k", "--stages-base-url", "u", "--limit", "tenant=lots"],
        ["train-scorer", "--train", "t", "--out", "o", "--calibration", "magic"],
        ["no-such-command"],
        ["eval", "--data", "d.jsonl", "--scorer", "oracle", "--concurrency", "0"],
        ["eval", "--data", "d.jsonl", "--scorer", "oracle", "--limit", "-1"],
        ["collect", "--providers", "p", "--queries", "q", "--out", "o", "--timeout", "nan"],
        ["fit", "--train", "t.jsonl", "--out", "o", "--target-accuracy", "1.5"],
        ["cache-bench", "--pairs", "p", "--json", "j", "--sizes", "0"],
        ["cache-bench", "--pairs", "p", "--json", "j", "--limit", "-3"],
        ["train-cache-verifier", "--pairs", "p", "--out", "o", "--heldout-fraction", "2"],
        ["train-scorer", "--train", "t", "--out", "o", "--lr", "-0.1"],
        ["report", "--ledger", "x.db", "--since-days", "-1"],
        ["advise", "--train", "t", "--test", "t", "--json", "j", "--price", "gpt-x=1"],
    ],
)
def test_bad_arguments_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: frugal") and "error:" in err and "Traceback" not in err


def test_frugal_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"query": "caf\xe9"}\n')
    code = main(["train-scorer", "--train", str(bad), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"frugal train-scorer: error: {bad}:1: not UTF-8 text (byte 0xe9 at column 15)\n"


def test_train_scorer_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "train.jsonl", rows())
    argv = ["train-scorer", "--train", str(data), "--out", str(tmp_path / "out"), "--backbone", "tiny-random"]
    argv += ["--epochs", "1", "--max-length", "32", "--per-model", "--models", "big", "--no-progress"]
    argv += ["--num-threads", "1"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["variant"] == "per-model" and list(report["validation"]) == ["big"]
    assert (tmp_path / "out" / "scorer.json").is_file()


def test_eval_runs_with_the_oracle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "test.jsonl", rows(4))
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    out = tmp_path / "figures.json"
    argv = ["eval", "--data", str(data), "--scorer", "oracle", "--chain", "cheap,big", "--thresholds", "0.5"]
    assert main([*argv, "--prices", str(prices), "--json", str(out), "--concurrency", "1"]) == 0
    figures = json.loads(out.read_text())
    assert capsys.readouterr().out.strip()
    # the oracle accepts cheap's right answers (q0, q2) and escalates q1, q3: every answer right
    assert figures["cascade"]["accuracy"] == 1.0


def test_eval_without_scorer_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "test.jsonl", rows(2))
    assert main(["eval", "--data", str(data)]) == 2
    assert capsys.readouterr().err == "frugal eval: error: frugal eval needs --scorer or --strategy\n"


def test_collect_runs_against_the_replay_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"query_id": "a", "query": "Capital of France?", "reference": "Paris"}) + "\n")
    record = make_record("Capital of France?", "Paris.", model="m", input_tokens=10, output_tokens=2)
    with replay_server(records=[record]) as server:
        providers = tmp_path / "providers.json"
        price = {"input_per_mtok": 1, "output_per_mtok": 2}
        providers.write_text(json.dumps([{"name": "m", "model": "m", "base_url": server.base_url, "price": price}]))
        out = tmp_path / "recorded.jsonl"
        argv = ["collect", "--providers", str(providers), "--queries", str(queries), "--out", str(out), "--quiet"]
        assert main(argv) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["query_id"], row["model"], row["answer"], row["correct"]) == ("a", "m", "Paris.", 1.0)
    assert Decimal(str(row["cost_usd"])) == Decimal("0.000014")  # 10 in at $1/M + 2 out at $2/M


def test_fit_and_bench_with_prices_need_no_langchain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.startswith(("frugal_langchain", "langchain"))]:
        monkeypatch.delitem(sys.modules, name)
    for blocked in ("frugal_langchain", "langchain_core", "langchain_openai", "llama_index"):
        monkeypatch.setitem(sys.modules, blocked, None)  # import frugal_langchain -> ImportError, as without the extra
    train = write_rows(tmp_path / "train.jsonl", rows())
    test = write_rows(tmp_path / "test.jsonl", rows(6))
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    common = ["--train", str(train), "--prices", str(prices), "--backbone", "tiny-random", "--folds", "2"]
    common += ["--max-length", "32", "--top-epochs", "1", "--threads", "1", "--quiet", "--caps", "none"]
    assert main(["fit", *common, "--out", str(tmp_path / "fit")]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["strategy"] == str(tmp_path / "fit" / "strategy.json")
    strategy = json.loads((tmp_path / "fit" / "strategy.json").read_text())
    assert strategy["prices"]["big"] == {"input_per_mtok": "50", "output_per_mtok": "50"}
    report_path = tmp_path / "bench.json"
    assert main(["bench", *common, "--test", str(test), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    big = next(s for s in report["single_models"] if s["model"] == "big")
    assert big["accuracy"] == 1.0
    assert big["cost_per_query"] == pytest.approx(100 * 50e-6 + 10 * 50e-6)  # priced from tokens, not cost_usd
    # every bench reports the strategy it saved, measured on the test split, and prints it with the headline
    saved = json.loads((tmp_path / "bench-strategy" / "strategy.json").read_text())
    figures = report["strategy"]
    assert (figures["chain"], figures["thresholds"]) == (saved["chain"], saved["thresholds"])
    assert figures["cost_fraction_of_best_single"] == pytest.approx(figures["cost_per_query"] / 0.0055)
    printed = json.loads(capsys.readouterr().out)
    assert printed["strategy"] == figures and printed["best_single_model"] == "big"

    # --strategy reports that saved strategy on the test split without refitting (no --train needed)
    again_path = tmp_path / "again.json"
    argv = ["bench", "--strategy", str(tmp_path / "bench-strategy"), "--test", str(test), "--json", str(again_path)]
    assert main([*argv, "--prices", str(prices), "--quiet"]) == 0
    again = json.loads(again_path.read_text())
    assert again["strategy"] == figures
    assert again["single_models"] == report["single_models"] and again["frontier"] == report["frontier"]
    assert again["test_queries"] == 6 and again["refit"] is False and report["refit"] is True
    assert json.loads(capsys.readouterr().out)["strategy"] == figures

    # a strategy that always asks big: every test answer right, at big's cost, its whole cost
    saved.update(chain=["big"], thresholds=[])
    (tmp_path / "bench-strategy" / "strategy.json").write_text(json.dumps(saved))
    assert main([*argv, "--quiet"]) == 0  # no --prices: the strategy's own prices
    only_big = json.loads(again_path.read_text())["strategy"]
    assert only_big == {
        "chain": ["big"],
        "thresholds": [],
        "objective": saved["objective"],
        "accuracy": 1.0,
        "cost_per_query": pytest.approx(0.0055),
        "cost_fraction_of_best_single": pytest.approx(1.0),
        "expected_on_fitting_data": saved["expected"],
    }

    # --strategy and --train together would be two reports in one: a one-line error
    assert main([*argv, "--train", str(train)]) == 2
    assert capsys.readouterr().err == (
        "frugal bench: error: --strategy reports a saved strategy without refitting; --train refits (give one)\n"
    )
    assert main(["bench", "--test", str(test), "--json", str(again_path)]) == 2
    assert capsys.readouterr().err == "frugal bench: error: frugal bench needs --train (to fit) or --strategy\n"


def test_eval_without_langchain_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "frugal_langchain.evaluate", None)
    data = write_rows(tmp_path / "test.jsonl", rows(2))
    assert main(["eval", "--data", str(data), "--scorer", "oracle"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("frugal eval: error: ") and "pip install 'frugal-cascade[langchain]'" in err


def test_report_reads_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(str(path))
    ledger.record([SpendRecord(1.7e9, "2023-11-14", "r1", "acme", "ann", "big", 0, "ok", Decimal("0.0123"), 10, 5)])
    ledger.close()
    out = tmp_path / "report.json"
    assert main(["report", "--ledger", f"sqlite:///{path}", "--json", str(out)]) == 0
    assert "0.0123" in capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["total_cost_usd"] == "0.0123" and figures["by_tenant"]["acme"]["cost_usd"] == "0.0123"


def test_unwritable_output_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    open_ledger(str(tmp_path / "ledger.db")).close()
    out = tmp_path / "no-such-folder" / "report.json"
    assert main(["report", "--ledger", str(tmp_path / "ledger.db"), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("frugal report: error: [Errno 2] No such file or directory") and err.count("\n") == 1


@pytest.mark.parametrize("spec", ["sqlite:///missing-ledger.db", "missing-ledger.db", "sqlite:////nowhere/l.db"])
def test_report_on_a_missing_ledger_creates_nothing(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--ledger", spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("frugal report: error: ledger ") and "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_serve_with_missing_keys_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--strategy", str(tmp_path / "s.json"), "--keys", str(tmp_path / "keys.json")]
    assert main([*argv, "--stages-base-url", "http://127.0.0.1:9/v1", "--ledger", "memory:"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("frugal serve: error: ") and err.count("\n") == 1


def test_replay_server_with_missing_data_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay-server", "--data", str(tmp_path / "none.jsonl"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("frugal replay-server: error: ") and "none.jsonl" in err


def test_cache_bench_on_an_empty_split_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"cached": "a b", "incoming": "a b c", "duplicate": 1}) + "\n")
    argv = ["cache-bench", "--pairs", str(pairs), "--json", str(tmp_path / "b.json"), "--split", "heldout"]
    assert main([*argv, "--heldout-fraction", "0", "--embedder", "hashing"]) == 2
    assert capsys.readouterr().err == (
        f"frugal cache-bench: error: {pairs}: no pairs in the 'heldout' split (--heldout-fraction 0.0)\n"
    )


def test_train_cache_verifier_and_cache_bench_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    lines = []
    for i in range(40):
        cached = f"What is the capital of country {i}?"
        lines.append({"cached": cached, "incoming": f"capital of country {i}?", "duplicate": 1})
        lines.append({"cached": cached, "incoming": f"Who founded company {i}?", "duplicate": 0})
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "verifier"
    argv = ["train-cache-verifier", "--pairs", str(pairs), "--out", str(out), "--embedder", "hashing"]
    assert main([*argv, "--kind", "features", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(out) and "heldout" in report
    result = tmp_path / "bench.json"
    argv = ["cache-bench", "--pairs", str(pairs), "--json", str(result), "--verifier", str(out)]
    assert main([*argv, "--embedder", "hashing", "--sizes", "50", "--latency-queries", "5"]) == 0
    figures = json.loads(result.read_text())
    assert figures["command"] == {"pairs": str(pairs), "split": "all", "verifier": str(out)}


def test_non_utf8_json_lines_inputs_name_file_and_line(tmp_path: Path) -> None:
    from shared_scorer.cache.pairs import load_pairs
    from shared_scorer.costs import load_prices
    from shared_scorer.errors import ConfigurationError, DataError
    from shared_scorer.fitting.collect import _Store, load_providers, load_queries
    from shared_scorer.fitting.data import load_records

    good = json.dumps(asdict(rows(1)[0])) + "\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'\n{"query": "\xff"}\n\n')  # line 2, not the last line
    for load in (load_records, load_queries, load_pairs):
        with pytest.raises(DataError) as info:
            load(bad)
        assert str(info.value) == f"{bad}:2: not UTF-8 text (byte 0xff at column 12)"
    with pytest.raises(DataError, match=r"^" + str(bad) + ":2: not UTF-8 text"):
        _Store(bad).open()
    # a collect output whose LAST line was cut inside a multi-byte character is resumed, not refused
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(good.encode() + "é".encode()[:1])
    store = _Store(cut)
    store.open()
    assert store.done == {("q0", "cheap")} and cut.read_text() == good
    providers = tmp_path / "providers.json"
    providers.write_bytes(b'[{"model": "caf\xe9", "base_url": "http://127.0.0.1:9/v1"}]')
    with pytest.raises(ConfigurationError, match=r"providers\.json: cannot read providers \('utf-8' codec"):
        load_providers(providers)
    prices = tmp_path / "prices.json"
    prices.write_bytes(b'{"m\xe9": {"input_per_mtok": 1, "output_per_mtok": 2}}')
    with pytest.raises(DataError, match=r"prices\.json: cannot read prices"):
        load_prices(prices)
    prices.write_text(json.dumps({"m": {"input_per_mtok": "abc", "output_per_mtok": 2}}))
    with pytest.raises(DataError, match=r"prices\.json: model 'm' field 'input_per_mtok' must be a number >= 0"):
        load_prices(prices)


def test_the_core_imports_no_adapter_but_the_cli_lazily() -> None:
    """Only the CLI may import frugal_langchain / frugal_llamaindex, inside a function (the extra is optional)."""
    import ast

    import shared_scorer

    root = Path(shared_scorer.__file__).parent
    found: dict[str, list[str]] = {}
    for file in sorted(root.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.split(".")[0] in ("frugal_langchain", "frugal_llamaindex"):
                    where = "module level" if id(node) in top_level else "lazily"
                    found.setdefault(str(file.relative_to(root)), []).append(f"{name} {where}")
    assert all(path.startswith("cli/") for path in found), found
    assert all(entry.endswith("lazily") for entries in found.values() for entry in entries), found
