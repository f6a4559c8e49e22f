"""Every script in ``examples/`` runs as a user would run it (a subprocess, offline) and prints its exact result.

Each script starts its own replay server when no ``--base-url`` is given; here it runs with
``HF_HUB_OFFLINE=1`` and a socket guard that refuses any connection beyond 127.0.0.1 (installed before
the script runs, as ``runpy`` runs it as ``__main__``). The scripts are started together, since most of
their time is imports and loading MiniLM, and each test checks one script's whole output: its answer and
its exact cost (the replay server's billed tokens at the script's prices).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

EXAMPLES = REPO / "examples"
GUARD = """
import runpy, socket, sys
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
        raise ConnectionRefusedError(f"the examples may not reach beyond 127.0.0.1, tried {address!r}")
def _guarded(sock, address):
    _check(sock, address)
    return _connect(sock, address)
def _guarded_ex(sock, address):
    _check(sock, address)
    return _connect_ex(sock, address)
socket.socket.connect, socket.socket.connect_ex = _guarded, _guarded_ex
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

EXPECTED = {
    "rag_langchain.py": (
        "context: Middlemarch is a novel by George Eliot, published in 1871-72.\n"
        "answer: George Eliot.\n"
        "answered by: gpt-4o (stage 1, 1 escalation)\n"
        "stages: gpt-4o-mini rejected $0.000012, gpt-4o accepted $0.00019\n"
        "cost_usd: 0.000202\n"
    ),
    "rag_llamaindex.py": (
        "context: Middlemarch is a novel by George Eliot, published in 1871-72.\n"
        "answer: George Eliot.\n"
        "answered by: gpt-4o (stage 1), 1 escalation\n"
        "stages: gpt-4o-mini $0.0000165, gpt-4o $0.000265\n"
        "cost_usd: 0.0002815\n"
    ),
    "agent_langchain.py": (
        "step: gpt-4o calls get_weather({'city': 'Paris'}) "
        "[gpt-4o-mini invalid $0.0000159, gpt-4o accepted $0.000325]\n"
        "step: gpt-4o-mini answers [gpt-4o-mini accepted $0.0000237]\n"
        "answer: It is sunny and 21 C in Paris.\n"
        "cost_usd: 0.0003646\n"
    ),
    "agent_llamaindex.py": (
        "provider calls: gpt-4o-mini, gpt-4o, gpt-4o-mini\n"
        "answer: It is sunny and 21 C in Paris.\n"
        "cascade calls: 2, escalations: 1\n"
        "by model: gpt-4o-mini $0.0000396, gpt-4o $0.000325\n"
        "cost_usd: 0.0003646\n"
    ),
    "serve_openai.py": (
        "answer: George Eliot (by gpt-4o, $0.0000736)\n"
        "streamed: George Eliot\n"
        "third call: 429 budget_exceeded\n"
        "bigco: George Eliot\n"
        "spent by acme: $0.0001508\n"
        "spent by bigco: $0.0000736\n"
    ),
}
"""Each script's whole output. The costs, at the scripts' prices (USD per million tokens: gpt-4o-mini
0.15 in / 0.60 out, gpt-4o 2.50 / 10.00): e.g. RAG in LangChain, 60 + 5 tokens rejected ($0.000012) plus
60 + 4 accepted ($0.00019); the agents, a broken tool call (70 + 9: $0.0000159), a valid one by gpt-4o
(70 + 15: $0.000325) and the final answer (110 + 12: $0.0000237)."""


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, subprocess.Popen[str]]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OPENAI_API_KEY": "sk-examples-offline"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    started = {
        name: subprocess.Popen(
            [sys.executable, "-c", GUARD, str(EXAMPLES / name)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in EXPECTED
    }
    try:
        yield started
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_prints_its_answer_and_exact_cost(runs: dict[str, subprocess.Popen[str]], name: str) -> None:
    stdout, stderr = runs[name].communicate(timeout=300)
    assert runs[name].returncode == 0, f"{name} failed:\n{stderr[-4000:]}"
    assert stdout == EXPECTED[name], f"{name} printed:\n{stdout}\nstderr:\n{stderr[-2000:]}"


def test_the_guard_refuses_other_hosts(tmp_path: Path) -> None:
    script = tmp_path / "reach_out.py"
    script.write_text("import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=1)\n")
    result = subprocess.run(
        [sys.executable, "-c", GUARD, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "may not reach beyond 127.0.0.1, tried ('192.0.2.1', 80)" in result.stderr
