"""A griffe extension for the API reference: docstring examples become code blocks, whatever their section.

The class docstrings carry partner-package sections (``Setup:``, ``Invoke:``, ``Stream:``, ...) whose
``>>>`` examples are run by ``tests/unit/test_doctests.py``; griffe renders ``>>>`` lines as code only in
an ``Examples:`` section, so elsewhere they would be read as Markdown (``x["stage"]`` as a link). Some
docstrings also use reStructuredText's ``.. code-block:: python``. Before a docstring is parsed, this
wraps each run of doctest lines (a ``>>>`` line up to the next blank line) in a ``pycon`` fence, and each
``code-block`` directive's indented body in a fence of its language, at the directive's indentation.
Loaded by ``mkdocs.yml`` (mkdocstrings' ``extensions``).
"""

from __future__ import annotations

from typing import Any

import griffe

_DIRECTIVE = ".. code-block::"


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def fence_examples(text: str) -> str:
    """``text`` with every doctest run fenced as ``pycon`` and every ``code-block`` body fenced.

    >>> fence_examples("Invoke:\\n    >>> 1 + 1\\n    2\\n\\nDone.").splitlines()
    ['Invoke:', '    ```pycon', '    >>> 1 + 1', '    2', '    ```', '', 'Done.']
    >>> fence_examples("Example:\\n    .. code-block:: python\\n\\n        x = 1\\n\\n        y = 2\\nEnd").splitlines()
    ['Example:', '    ```python', '    x = 1', '', '    y = 2', '    ```', 'End']
    """
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    in_fence = False
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        indent = _indent(line)
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith(">>>"):
            out.append(f"{indent}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{indent}```")
            continue
        elif not in_fence and stripped.startswith(_DIRECTIVE):
            language = stripped[len(_DIRECTIVE) :].strip() or "text"
            body: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(_indent(lines[i])) > len(indent)):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                i -= 1  # trailing blank lines stay outside the block
                body.pop()
            while body and not body[0].strip():
                body.pop(0)
            depth = min((len(_indent(b)) for b in body if b.strip()), default=0)
            out.append(f"{indent}```{language}")
            out.extend(f"{indent}{b[depth:]}" if b.strip() else "" for b in body)
            out.append(f"{indent}```")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fence the examples of every docstring (see the module docstring)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None and (">>>" in docstring.value or _DIRECTIVE in docstring.value):
            docstring.value = fence_examples(docstring.value)
