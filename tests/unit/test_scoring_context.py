"""Context reaches the scorer: who is asking (profile), the system prompt, earlier turns and tool results
travel from the call to ``ScoreRequest``, the recorded rows and the DistilBERT pair encoding."""

from __future__ import annotations

import json

import pytest

from shared_scorer import Cascade, StageOutput
from shared_scorer.context import CallContext, Scope, build_context, fingerprint_of, render_profile
from shared_scorer.errors import ConfigurationError, DataError
from shared_scorer.fitting.data import Record, parse_record
from shared_scorer.fitting.fit import score_rows
from shared_scorer.scoring.base import ScoreRequest
from shared_scorer.scoring.encoding import PairEncoder

QUERY, ANSWER, MODEL = "Who wrote Middlemarch?", "George Eliot", "gpt-x"
CONTEXT = {
    "profile": "plan: gold",
    "system": "Answer with a bare name.",
    "history": ("user: hi", "assistant: hello"),
    "tool_results": ("Middlemarch by George Eliot",),
}
# token ids of the tiny-random backbone's (BERT uncased) tokenizer
PROFILE = [6337, 1024, 2933, 1024, 2751, 1064]  # profile : plan : gold |
SYSTEM = [2291, 1024, 3437, 2007, 1037, 6436, 2171, 1012, 1064]  # system : answer with a bare name. |
USER_HI = [5310, 1024, 7632, 1064]  # user : hi |
ASSISTANT_HELLO = [3353, 1024, 7592, 1064]  # assistant : hello |
TOOL = [6994, 1024, 2690, 7849, 2818, 2011, 2577, 16292, 1064]  # tool : middlemarch by george eliot |
MODEL_QUERY = [14246, 2102, 1011, 1060, 1064, 2040, 2626, 2690, 7849, 2818, 1029]  # gpt - x | who wrote middlemarch?
ANSWER_IDS = [2577, 16292]  # george eliot
CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def tokenizer():
    from shared_scorer.scoring.backbone import load_backbone

    return load_backbone("tiny-random", seed=0).tokenizer


# ---------------------------------------------------------------- the call's context


def test_score_request_context_defaults_to_empty():
    request = ScoreRequest(QUERY, ANSWER)
    assert (request.system, request.history, request.tool_results, request.profile) == ("", (), (), "")


def test_build_context_splits_the_conversation():
    turns = [
        ("system", "Answer with a bare name."),
        ("user", "hi"),
        ("assistant", "hello"),
        ("user", QUERY),
        ("assistant", "\n<tool_call search {'q': 'Middlemarch'}>"),
        ("tool", "Middlemarch by George Eliot"),
    ]
    context = build_context(turns, scope=Scope("acme", "ann"), profile={"plan": "gold", "tone": "formal"})
    assert context.system == "Answer with a bare name."
    assert context.history == ("user: hi", "assistant: hello", "assistant: \n<tool_call search {'q': 'Middlemarch'}>")
    assert context.tool_results == ("Middlemarch by George Eliot",)
    assert context.profile == "plan: gold; tone: formal"
    # the profile joins the fingerprint (an answer accepted for one profile is not served to another) ...
    plain = build_context(turns, scope=Scope("acme", "ann"))
    assert plain.profile == "" and context.fingerprint != plain.fingerprint
    # ... and without one the fingerprint is exactly what it always was
    others = [(r, "<query>" if i == 3 else t) for i, (r, t) in enumerate(turns)]
    assert plain.fingerprint == fingerprint_of([others, "", None, ""])


def test_render_profile_is_deterministic_and_checked():
    assert render_profile(None) == ""
    assert render_profile("  gold customer ") == "gold customer"
    assert render_profile({"tier": "gold", "locale": "fr-FR", "limits": {"words": 20, "a": [1, 2]}}) == (
        'limits: {"a": [1, 2], "words": 20}; locale: fr-FR; tier: gold'
    )
    assert CallContext(profile={"b": 1, "a": "x"}).profile == "a: x; b: 1"  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="profile must be a string or a mapping, got int"):
        render_profile(3)


def test_cascade_hands_the_context_to_the_scorer():
    seen: list[ScoreRequest] = []

    def scorer(request: ScoreRequest) -> float:
        seen.append(request)
        return 0.9

    cascade = Cascade(["small", "big"], [0.5], scorer, prices={"small": (1, 1), "big": (2, 2)})
    context = CallContext(**CONTEXT)  # type: ignore[arg-type]
    result = cascade.run(QUERY, [lambda: StageOutput(ANSWER, 10, 2), lambda: StageOutput("x", 1, 1)], context=context)
    assert result.answer_stage == 0
    assert seen == [ScoreRequest(QUERY, ANSWER, "small", 0, (), 2, **CONTEXT)]  # type: ignore[arg-type]


# ---------------------------------------------------------------- recorded rows


def test_records_carry_profile_and_history():
    row = {"query_id": "q", "query": QUERY, "model": MODEL, "answer": ANSWER, "correct": 1, "cost_usd": 0.0}
    assert parse_record(row, "f:1").profile is None and parse_record(row, "f:1").history is None
    record = parse_record(
        {**row, "system": "Be brief.", "profile": {"tier": "gold"}, "history": ["user: hi", "assistant: hello"]}, "f:2"
    )
    assert (record.system, record.profile, record.history) == (
        "Be brief.",
        "tier: gold",
        ("user: hi", "assistant: hello"),
    )
    with pytest.raises(DataError, match=r"f:3: field 'history' must be a list of strings or absent, got 'user: hi'"):
        parse_record({**row, "history": "user: hi"}, "f:3")
    with pytest.raises(DataError, match=r"f:4: field 'profile' must be a string, an object or absent, got 7"):
        parse_record({**row, "profile": 7}, "f:4")


def test_score_rows_hands_the_recorded_context_to_the_scorer():
    seen: list[ScoreRequest] = []

    class Capture:
        def score_batch(self, requests):
            seen.extend(requests)
            return [0.5] * len(requests)

    record = Record(
        "q", QUERY, MODEL, ANSWER, 1.0, 0.0, output_tokens=3, system="S", profile="P", history=("user: hi",)
    )
    assert score_rows(Capture(), [record]).tolist() == [0.5]
    assert seen == [ScoreRequest(QUERY, ANSWER, MODEL, output_tokens=3, system="S", profile="P", history=("user: hi",))]


# ---------------------------------------------------------------- the pair encoding


def test_without_context_the_encoding_is_byte_identical(tokenizer):
    plain = PairEncoder(tokenizer, 64, model_aware=True)
    aware = PairEncoder(tokenizer, 64, model_aware=True, with_context=True)
    today = [CLS, *MODEL_QUERY, SEP, *ANSWER_IDS, SEP]
    request = ScoreRequest(QUERY, ANSWER, MODEL)
    assert plain.encode_requests([request]) == aware.encode_requests([request]) == [today]
    assert plain.encode_pairs([plain.context(QUERY, MODEL)], [ANSWER]) == [today]
    # a scorer fitted without context (every checkpoint saved before) ignores any context it is given
    assert plain.encode_requests([ScoreRequest(QUERY, ANSWER, MODEL, **CONTEXT)]) == [today]  # type: ignore[arg-type]
    record = Record("q", QUERY, MODEL, ANSWER, 1.0, 0.0, system="S", profile="P", history=("user: hi",))
    assert plain.encode_records([record]) == [today]


def test_context_is_encoded_before_model_and_query(tokenizer):
    encoder = PairEncoder(tokenizer, 64, model_aware=True, with_context=True)
    (ids,) = encoder.encode_requests([ScoreRequest(QUERY, ANSWER, MODEL, **CONTEXT)])  # type: ignore[arg-type]
    assert ids == [CLS, *PROFILE, *SYSTEM, *USER_HI, *ASSISTANT_HELLO, *TOOL, *MODEL_QUERY, SEP, *ANSWER_IDS, SEP]
    assert tokenizer.decode(ids) == (
        "[CLS] profile : plan : gold | system : answer with a bare name. | user : hi | assistant : hello | "
        "tool : middlemarch by george eliot | gpt - x | who wrote middlemarch? [SEP] george eliot [SEP]"
    )
    record = Record("q", QUERY, MODEL, ANSWER, 1.0, 0.0, system=CONTEXT["system"], profile="plan: gold",
                    history=CONTEXT["history"])  # fmt: skip
    assert encoder.encode_records([record]) == [
        [CLS, *PROFILE, *SYSTEM, *USER_HI, *ASSISTANT_HELLO, *MODEL_QUERY, SEP, *ANSWER_IDS, SEP]
    ]


def test_truncation_keeps_query_and_answer_then_profile_system_and_the_newest_turns(tokenizer):
    request = ScoreRequest(QUERY, ANSWER, MODEL, **CONTEXT)  # type: ignore[arg-type]
    # room for query + answer + profile + system + tool result + 2 tokens: the oldest turn goes, the next is cut
    (ids,) = PairEncoder(tokenizer, 42, model_aware=True, with_context=True).encode_requests([request])
    assert ids == [CLS, *PROFILE, *SYSTEM, 7592, 1064, *TOOL, *MODEL_QUERY, SEP, *ANSWER_IDS, SEP]
    assert len(ids) == 42
    # room for 4 context tokens: the head and tail of the profile
    (ids,) = PairEncoder(tokenizer, 20, model_aware=True, with_context=True).encode_requests([request])
    assert ids == [CLS, 6337, 1024, 2751, 1064, *MODEL_QUERY, SEP, *ANSWER_IDS, SEP]
    # a long answer that fills the room gives up a quarter of it (int(29 / 4) = 7 tokens) to profile and system
    long = ScoreRequest(QUERY, "word " * 100, MODEL, **CONTEXT)  # type: ignore[arg-type]
    plain = PairEncoder(tokenizer, 32, model_aware=True).encode_requests([long])
    assert plain == [[CLS, *MODEL_QUERY, SEP, *[2773] * 18, SEP]]
    (ids,) = PairEncoder(tokenizer, 32, model_aware=True, with_context=True).encode_requests([long])
    assert ids == [CLS, *PROFILE, 2291, *MODEL_QUERY, SEP, *[2773] * 11, SEP]
    # earlier turns alone get no share: the long answer keeps today's encoding
    turns_only = ScoreRequest(QUERY, "word " * 100, MODEL, history=CONTEXT["history"])  # type: ignore[arg-type]
    assert PairEncoder(tokenizer, 32, model_aware=True, with_context=True).encode_requests([turns_only]) == plain


def test_context_flag_is_saved_with_the_scorer(tmp_path):
    from shared_scorer.scoring import DistilBertScorer
    from shared_scorer.scoring.training import TrainConfig

    rows = [
        Record(f"q{i}", f"question {i}?", "m", "yes" if i % 2 else "no", float(i % 2), 0.0, profile=f"tier {i % 3}")
        for i in range(12)
    ]
    config = TrainConfig(backbone="tiny-random", epochs=1, batch_size=8, max_length=32, progress=False, context=True)
    scorer = DistilBertScorer.train(rows, config)
    assert scorer.encoder.with_context is True
    scorer.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "scorer.json").read_text())["context"] is True
    loaded = DistilBertScorer.load(tmp_path / "s")
    assert loaded.encoder.with_context is True and loaded.quantized().encoder.with_context is True
    request = ScoreRequest("question 3?", "yes", "m", profile="tier 0")
    assert loaded.score(request) == scorer.score(request)
    assert loaded.logits([request])[0] != loaded.logits([ScoreRequest("question 3?", "yes", "m")])[0]


def test_fit_bench_and_train_scorer_take_a_context_flag():
    from shared_scorer.cli import build_parser
    from shared_scorer.cli.learn import _config

    parser = build_parser()
    for command in ("fit", "bench"):
        base = [command, "--train", "t.jsonl", "--out", "o"] + (
            ["--test", "u", "--json", "j"] if command == "bench" else []
        )
        assert _config(parser.parse_args([*base, "--context"])).train.context is True
        assert _config(parser.parse_args(base)).train.context is False
    assert parser.parse_args(["train-scorer", "--train", "t", "--out", "o", "--context"]).context is True
