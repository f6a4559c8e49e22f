"""Agent loops judged step by step, through the replay server and the real clients.

A LangChain ``create_agent`` agent over ``FrugalChatModel`` (``ChatOpenAI`` stages) and a LlamaIndex
``FunctionAgent`` over ``FrugalLLM`` (``OpenAILike`` stages) each answer three weather questions. The cheap
stage's tool call names an unknown tool (Paris) or does not fit the tool's schema (Oslo): it escalates and
the big stage's call is used. Its good call (Rome) is kept on validation alone, although the answer scorer
would rate any tool call 0.1. The final answers, written after the tool ran, are scored with the conversation
in view (the user's question, the agent's call, the tool's output) and accepted from the cheap stage. Every
stage's cost is exactly what the replay server billed.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from langchain_openai import ChatOpenAI
from llama_index.llms.openai_like import OpenAILike

from frugal_langchain import FrugalChatModel
from frugal_llamaindex import FrugalLLM
from shared_scorer import CascadeResult, CostTracker, ScoreRequest, TokenPrice
from shared_scorer.server.testing import replay_server

SMALL, BIG = "agent-small", "agent-big"
PRICES = {SMALL: ("0.5", "1.5"), BIG: ("5", "15")}
CITIES = ("Paris", "Oslo", "Rome")
FINAL = {city: f"It is sunny and 21 C in {city}." for city in CITIES}
BAD_CALL = {  # the cheap stage's first step for each question
    "Paris": {"name": "get_forecast", "arguments": {"city": "Paris"}},  # no such tool
    "Oslo": {"name": "get_weather", "arguments": {"town": "Oslo"}},  # 'city' is required
    "Rome": {"name": "get_weather", "arguments": {"city": "Rome"}},  # good: kept
}
USAGE = {"small_call": (40, 8), "big_call": (40, 10), "small_final": (90, 12), "big_final": (90, 14)}


def question(city: str) -> str:
    return f"What is the weather in {city}?"


def scenarios() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for city in CITIES:
        good = {"name": "get_weather", "arguments": {"city": city}}
        out += [
            {"model": SMALL, "match": question(city), "tool_calls": [BAD_CALL[city]], "usage": usage("small_call")},
            {"model": BIG, "match": question(city), "tool_calls": [good], "usage": usage("big_call")},
            {"model": SMALL, "match": question(city), "after_tool": True, "content": FINAL[city],
             "usage": usage("small_final")},
            {"model": BIG, "match": question(city), "after_tool": True, "content": FINAL[city],
             "usage": usage("big_final")},
        ]  # fmt: skip
    return out


def usage(key: str) -> dict[str, int]:
    prompt, completion = USAGE[key]
    return {"prompt_tokens": prompt, "completion_tokens": completion}


def cost(model: str, key: str) -> Decimal:
    return TokenPrice(*PRICES[model]).cost(*USAGE[key])


class Scorer:
    """The answer scorer: final answers rate 0.9, anything else (a tool call, were it asked) 0.1."""

    def __init__(self) -> None:
        self.requests: list[ScoreRequest] = []

    def score(self, request: ScoreRequest) -> float:
        self.requests.append(request)
        return 0.9 if request.answer in FINAL.values() else 0.1

    def score_batch(self, requests: list[ScoreRequest]) -> list[float]:
        return [self.score(r) for r in requests]


class Results(CostTracker):
    """A cost tracker that also keeps every call's result (the trail of each agent step)."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[CascadeResult] = []

    def record(self, result: CascadeResult) -> None:
        self.results.append(result)
        super().record(result)


def trail(stages: list[Any]) -> list[tuple[str, str, float | None]]:
    return [
        (s["model"], s["status"], s["score"]) if isinstance(s, dict) else (s.model, s.status, s.score) for s in stages
    ]


# each question: (trail of the tool-call step, its cost), then the final answer's trail and cost
EXPECTED = {
    "Paris": (
        [(SMALL, "invalid", None), (BIG, "accepted", None)],
        cost(SMALL, "small_call") + cost(BIG, "big_call"),
        "tool call to unknown tool 'get_forecast' (offered: ['get_weather'])",
    ),
    "Oslo": (
        [(SMALL, "invalid", None), (BIG, "accepted", None)],
        cost(SMALL, "small_call") + cost(BIG, "big_call"),
        "tool call 'get_weather': arguments do not fit its schema: 'city' is a required property (at arguments)",
    ),
    "Rome": ([(SMALL, "accepted", None), (BIG, "not_called", None)], cost(SMALL, "small_call"), None),
}
FINAL_TRAIL = [(SMALL, "accepted", 0.9), (BIG, "not_called", None)]
TOTAL = sum((c for _, c, _ in EXPECTED.values()), Decimal(0)) + 3 * cost(SMALL, "small_final")


def check_step(stages: list[Any], city: str) -> None:
    wanted, _, reason = EXPECTED[city]
    assert trail(stages) == wanted, city
    first = stages[0] if isinstance(stages[0], dict) else stages[0].as_dict()
    assert first["error"] == reason, city


def check_conversation(requests: list[ScoreRequest]) -> None:
    """Each final answer was rated with the conversation in view: the agent's call and the tool's output."""
    for request, city in zip(requests, CITIES, strict=True):
        assert request.tool_results == (f"Sunny, 21 C in {city}.",), city
        assert request.history == (f"assistant: \n<tool_call get_weather {{'city': '{city}'}}>",), city


def test_langchain_agent_escalates_bad_tool_calls_and_keeps_good_ones():
    from langchain.agents import create_agent
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"Sunny, 21 C in {city}."

    scorer, tracker = Scorer(), Results()
    with replay_server(scenarios=scenarios()) as server:
        stages = [
            ChatOpenAI(model=m, base_url=server.base_url, api_key="test", max_retries=0, timeout=5)
            for m in (SMALL, BIG)
        ]
        llm = FrugalChatModel(stages=stages, scorer=scorer, thresholds=[0.5], prices=PRICES, cost_tracker=tracker)
        agent = create_agent(llm, tools=[get_weather])
        for city in CITIES:
            state = agent.invoke({"messages": [("human", question(city))]})
            ai = [m for m in state["messages"] if m.type == "ai"]
            tools = [m for m in state["messages"] if m.type == "tool"]
            assert [t.content for t in tools] == [f"Sunny, 21 C in {city}."]
            assert ai[0].tool_calls[0]["name"] == "get_weather" and ai[0].tool_calls[0]["args"] == {"city": city}
            assert ai[-1].content == FINAL[city]
            steps = [m.response_metadata["frugal"] for m in ai]
            check_step(steps[0]["stages"], city)
            assert trail(steps[1]["stages"]) == FINAL_TRAIL
            assert [s["model"] for s in steps] == [BIG if city != "Rome" else SMALL, SMALL]
            assert Decimal(steps[0]["cost_usd"]) == EXPECTED[city][1]
            assert Decimal(steps[1]["cost_usd"]) == cost(SMALL, "small_final")
    # only the final answers were scored, each against the user's question
    assert [(r.query, r.answer, r.model) for r in scorer.requests] == [(question(c), FINAL[c], SMALL) for c in CITIES]
    check_conversation(scorer.requests)
    assert tracker.total_cost_usd == TOTAL == Decimal("0.000985")
    assert llm.tool_call_policy == "validate"  # the default


async def test_llamaindex_function_agent_escalates_bad_tool_calls_and_keeps_good_ones():
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool

    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"Sunny, 21 C in {city}."

    scorer, tracker = Scorer(), Results()
    with replay_server(scenarios=scenarios()) as server:
        stages = [
            OpenAILike(
                model=m, api_base=server.base_url, api_key="test", is_chat_model=True, is_function_calling_model=True,
                context_window=8192, max_retries=0, timeout=5,
            )
            for m in (SMALL, BIG)
        ]  # fmt: skip
        llm = FrugalLLM(stages=stages, scorer=scorer, thresholds=[0.5], prices=PRICES, cost_tracker=tracker)
        agent = FunctionAgent(tools=[FunctionTool.from_defaults(get_weather)], llm=llm)
        for city in CITIES:
            before = len(tracker.results)
            result = await agent.run(question(city))
            assert str(result) == FINAL[city]
            call_step, final_step = tracker.results[before:]
            check_step(call_step.attempts, city)
            assert call_step.output is not None and [(c.name, c.arguments) for c in call_step.output.tool_calls] == [
                ("get_weather", {"city": city})
            ]
            assert call_step.cost_usd == EXPECTED[city][1]
            assert trail(final_step.attempts) == FINAL_TRAIL and final_step.cost_usd == cost(SMALL, "small_final")
        models = [r.model for r in server.requests]
    assert models == [SMALL, BIG, SMALL, SMALL, BIG, SMALL, SMALL, SMALL]
    assert [(r.query, r.answer, r.model) for r in scorer.requests] == [(question(c), FINAL[c], SMALL) for c in CITIES]
    check_conversation(scorer.requests)
    assert tracker.total_cost_usd == TOTAL == Decimal("0.000985")
    assert llm.tool_call_policy == "validate"  # the default
