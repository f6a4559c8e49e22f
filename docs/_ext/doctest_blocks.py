"""A griffe extension for the API reference: doctest examples in any docstring section become code blocks.

The class docstrings carry partner-package sections (``Setup:``, ``Invoke:``, ``Stream:``, ...) whose
``>>>`` examples are run by ``tests/unit/test_doctests.py``; griffe renders ``>>>`` lines as code only in
an ``Examples:`` section, so elsewhere they would be read as Markdown (``x["stage"]`` as a link). This
wraps each run of doctest lines (a ``>>>`` line up to the next blank line) in a ``pycon`` fence, at the
same indentation, before the docstring is parsed. Loaded by ``mkdocs.yml`` (mkdocstrings' ``extensions``).
"""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """``text`` with every doctest run (``>>>`` up to a blank line) fenced as ``pycon``.

    >>> fence_doctests("Invoke:\\n    >>> 1 + 1\\n    2\\n\\nDone.").splitlines()
    ['Invoke:', '    ```pycon', '    >>> 1 + 1', '    2', '    ```', '', 'Done.']
    """
    out: list[str] = []
    indent: str | None = None
    in_fence = False
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        if indent is None and not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
        elif indent is not None and not stripped:
            out.append(f"{indent}```")
            indent = None
        out.append(line)
    if indent is not None:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fence the doctest runs of every docstring (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
