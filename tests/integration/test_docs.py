"""The documentation site builds (``mkdocs build --strict``) and every ``python`` block of its guides runs.

The conventions a page follows (``docs/contributing.md`` says the same to authors):

* Every block fenced ```` ```python ```` in ``docs/*.md`` is executed: the blocks of one page in order, in
  one namespace, in a fresh temporary working folder, so a page reads as one script.
* A ```` ```python ```` block followed (after blank lines only) by a ```` ```text ```` block must print
  exactly that text: the page shows real output, and the test holds it to exact figures.
* A block that must not run (a shell command, a file's contents, a transcript) takes another fence:
  ```` ```bash ````, ```` ```json ````, ```` ```text ````, ```` ```pycon ````.
* A page brings its own providers: it starts the local replay server itself (``replay_server`` or
  ``ReplayServer(...).start()``); every ``ReplayServer`` left in the page's namespace is stopped after it.
* Nothing reaches beyond 127.0.0.1: while a page runs, a socket connection anywhere else is refused.

In CI (``CI=true``) a missing ``mkdocs`` fails the build test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib.util
import io
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from shared_scorer.server.replay import ReplayServer
from tests.conftest import REPO, require

DOCS = REPO / "docs"
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost"}
API_NAMES = (
    "frugal_langchain.FrugalChatModel",
    "frugal_llamaindex.FrugalLLM",
    "shared_scorer.Cascade",
    "shared_scorer.strategy.Strategy",
    "shared_scorer.budget.Budget",
    "shared_scorer.cache.AnswerCache",
    "shared_scorer.scoring.distilbert.DistilBertScorer",
    "shared_scorer.budget.sqlite_ledger.SQLiteLedger",
    "shared_scorer.server.replay.ReplayServer",
    "shared_scorer.server.scenarios.Scenario",
)


class Block(NamedTuple):
    """One ``python`` block of a page: its code, its line in the file, and the output it must print."""

    code: str
    line: int
    expected: str | None


def python_blocks(text: str) -> list[Block]:
    """The ``python`` blocks of a Markdown page, each with the ``text`` block that follows it, if any."""
    fences = list(FENCE.finditer(text))
    blocks = []
    for i, fence in enumerate(fences):
        if fence.group("lang") != "python":
            continue
        expected = None
        following = fences[i + 1] if i + 1 < len(fences) else None
        if (
            following is not None
            and following.group("lang") == "text"
            and not text[fence.end() : following.start()].strip()
        ):
            expected = following.group("body")
        blocks.append(Block(fence.group("body"), text.count("\n", 0, fence.start()) + 2, expected))
    return blocks


def pages_with_code() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if python_blocks(p.read_text(encoding="utf-8")))


def test_python_blocks_are_found_with_their_output() -> None:
    page = (
        "Intro\n\n```python\nprint(1 + 1)\n```\n\n```text\n2\n```\n\n"
        "```bash\nfrugal serve\n```\n\n```python\nx = 1\n```\n"
    )
    assert python_blocks(page) == [Block("print(1 + 1)\n", 4, "2\n"), Block("x = 1\n", 16, None)]


def test_every_guide_has_code_that_runs() -> None:
    names = {p.name for p in pages_with_code()}
    guides = {
        "quickstart-langchain.md",
        "quickstart-llamaindex.md",
        "learning.md",
        "budgets.md",
        "answer-cache.md",
        "serve.md",
        "replay-server.md",
        "providers.md",
    }
    assert guides <= names, f"guides without a python block: {sorted(guides - names)}"


@contextlib.contextmanager
def only_loopback() -> Iterator[None]:
    """Refuse every socket connection to a host other than 127.0.0.1 / ::1 while the block runs."""
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL_HOSTS:
            raise ConnectionRefusedError(f"the docs may not reach beyond 127.0.0.1, tried {address!r}")

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        return connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return connect_ex(sock, address)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign,assignment]


def test_the_guard_refuses_other_hosts() -> None:
    with only_loopback(), socket.socket() as sock, pytest.raises(ConnectionRefusedError, match=r"beyond 127\.0\.0\.1"):
        sock.connect(("192.0.2.1", 80))


@pytest.mark.parametrize("page", pages_with_code(), ids=lambda p: p.name)
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-offline")
    namespace: dict[str, Any] = {"__name__": f"docs.{page.stem}"}
    try:
        with only_loopback():
            for block in python_blocks(page.read_text(encoding="utf-8")):
                where = f"{page.relative_to(REPO)}:{block.line}"
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    exec(compile(block.code, where, "exec"), namespace)  # the docs' own code
                if block.expected is not None:
                    assert out.getvalue() == block.expected, f"{where}: printed output differs from the page"
    finally:
        for value in namespace.values():
            if isinstance(value, ReplayServer):
                value.stop()


def test_the_api_reference_fences_docstring_examples() -> None:
    """The griffe extension of the API page (``docs/_ext/doctest_blocks.py``) passes its own doctests."""
    spec = importlib.util.spec_from_file_location("doctest_blocks", DOCS / "_ext" / "doctest_blocks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert doctest.testmod(module).attempted == 2
    assert doctest.testmod(module).failed == 0


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    require(importlib.util.find_spec("mkdocs") is not None, "mkdocs is not installed (the dev extra)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in API_NAMES:
        assert f'id="{name}"' in api, f"the API page does not document {name}"
    for page in ("quickstart-langchain", "replay-server", "serve"):
        assert (site / page / "index.html").is_file()
