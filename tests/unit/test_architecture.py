"""The rule of imports, checked on every module's source (ARCHITECTURE.md states it for readers).

Every ``.py`` file under ``shared_scorer/``, ``frugal_langchain/`` and ``frugal_llamaindex/`` is parsed (not
imported) and each of its imports is collected: module level, inside functions and methods, inside
``if TYPE_CHECKING:`` blocks, ``importlib.import_module("a.literal.name")`` calls, and any other string (not a
docstring) that is exactly a project module's name, as a table of modules to import later holds them (those
count for rules 1 and 2, not as edges of rule 3). A name computed at run time is not seen. Three rules:

1. **Adapters are leaves.** Nothing imports ``frugal_langchain`` or ``frugal_llamaindex`` except
   ``shared_scorer/cli/`` (which does so lazily, naming the extra to install) and the adapter package itself;
   neither adapter imports the other.
2. **The request path loads no learning code.** A request-path module (``REQUEST_PATH`` below) never imports
   ``shared_scorer.fitting``, ``numpy``, ``torch``, ``transformers`` or ``sklearn``: not at module level, not
   inside a function, not even under ``TYPE_CHECKING``. At module level it imports only request-path modules,
   so importing an adapter loads nothing else of the project. Inside a function (or under ``TYPE_CHECKING``)
   it may also reach ``LAZY``: the answer cache, which may use numpy (torch only inside functions) but never
   imports ``shared_scorer.fitting`` itself, a scorer implementation (torch) and the MiniLM encoder. What all
   of that can load, transitively, is checked too: of the fitting code, only ``LAZY_REACHES_FITTING`` (the
   records type the DistilBERT scorer reads), and the test fails when that set grows or shrinks.
3. **No import cycles** among the project's modules. Every import counts (function-level ones too: a lazy
   import that closes a loop still hides a dependency that runs both ways), except those under
   ``if TYPE_CHECKING:``, which never run. ``from package import name`` is an edge to the submodule when
   ``name`` is one, else to the package's ``__init__``; the implicit import of parent packages is not an
   edge. The failure message names each cycle as a path ``a -> b -> a``.

Each rule is also run on a small synthetic tree that breaks it, so each test is seen to fail.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared_scorer", "frugal_langchain", "frugal_llamaindex")
ADAPTERS = ("frugal_langchain", "frugal_llamaindex")
ADAPTER_IMPORTERS = ("shared_scorer.cli",)
LEARNING = ("shared_scorer.fitting", "numpy", "torch", "transformers", "sklearn")

# The modules a request runs through: the package roots that every import of theirs runs, the loop and its
# types, the shared adapter code, the scorer protocol, budgets (the spend report, which draws with matplotlib
# lazily, is not on the path), frugal serve's gateway and wire encoder, and both adapter packages (their
# offline ``evaluate`` module aside). A name ending in ``.*`` covers a package and everything in it.
REQUEST_PATH = (
    "shared_scorer",
    *(
        f"shared_scorer.{name}"
        for name in (
            "cascade",
            "outcome",
            "context",
            "protocols",
            "errors",
            "costs",
            "tracking",
            "limits",
            "streaming",
            "strategy",
            "tools",
            "steps",
            "tokens",
            "adapters.*",
            "scoring",
            "scoring.base",
            "budget.*",
            "server",
            "server.gateway",
            "server.wire",
        )
    ),
    *(f"{adapter}.*" for adapter in ADAPTERS),
)
NOT_REQUEST_PATH = ("shared_scorer.budget.report", "frugal_langchain.evaluate")
# What the request path may load inside a function (or name under TYPE_CHECKING), when a caller opts in: the
# answer cache (numpy; it never imports fitting itself), the scorer implementations (torch, numpy) and the
# sentence encoder (torch).
LAZY = ("shared_scorer.cache", "shared_scorer.scoring", "shared_scorer.embeddings")
# What those lazy implementations still reach of the fitting code: the DistilBERT scorer and its training
# module read the records type (``Record``, ``fingerprint``) from fitting/data.py. Empty this set when the
# records type moves to a core module.
LAZY_REACHES_FITTING = {"shared_scorer.fitting", "shared_scorer.fitting.data"}


def within(name: str, prefixes: Iterable[str]) -> bool:
    """Whether module ``name`` is one of ``prefixes`` or inside one of them (``a.b`` is within ``a``)."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def on_request_path(name: str) -> bool:
    exact = [entry for entry in REQUEST_PATH if not entry.endswith(".*")]
    packages = [entry[:-2] for entry in REQUEST_PATH if entry.endswith(".*")]
    return (name in exact or within(name, packages)) and not within(name, NOT_REQUEST_PATH)


@dataclass(frozen=True)
class Import:
    """One import statement as found in a module's source."""

    importer: str
    target: str
    """The dotted name imported: the most specific project module it names, or the outside name as written."""
    line: int
    in_function: bool
    type_checking: bool
    by_name: bool = False
    """Not an import statement: a string that is exactly a project module's name (``"frugal_langchain.serve"``),
    as a table of modules to ``import_module`` later holds them."""

    def where(self) -> str:
        kind = "type-checking" if self.type_checking else "function-level" if self.in_function else "module-level"
        kind = "named in a string" if self.by_name else kind
        return f"{self.importer}:{self.line} imports {self.target} ({kind})"


def find_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of ``packages`` under ``root``, by dotted name (a package's ``__init__`` under its own)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _literal_import_module(node: ast.Call) -> str | None:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in ("import_module", "__import__") and node.args:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def imports_of(name: str, path: Path, modules: Mapping[str, Path]) -> list[Import]:
    """The imports in one module's source, resolved against the project's ``modules``."""
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def project_target(dotted: str) -> str:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
        return dotted

    literals: set[int] = set()

    def add(target: str, node: ast.AST, in_function: bool, type_checking: bool, by_name: bool = False) -> None:
        line = node.lineno  # type: ignore[attr-defined]
        found.append(Import(name, project_target(target), line, in_function, type_checking, by_name))

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, in_function, type_checking)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source, node, in_function, type_checking)
        elif isinstance(node, ast.Call) and (literal := _literal_import_module(node)):
            add(literal, node, in_function, type_checking)
            literals.add(id(node.args[0]))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return  # a docstring (of a module, class, function or attribute) names modules for readers
        elif isinstance(node, ast.Constant) and node.value in modules and id(node) not in literals:
            add(node.value, node, in_function, type_checking, by_name=True)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, in_function, True)
            for child in node.orelse:
                visit(child, in_function, type_checking)
            return
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner, type_checking)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False, False)
    return found


def all_imports(root: Path, packages: Iterable[str] = PACKAGES) -> tuple[dict[str, Path], list[Import]]:
    modules = find_modules(root, packages)
    return modules, [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def adapter_violations(imports: Iterable[Import]) -> list[str]:
    """Rule 1: imports of an adapter package from anywhere but the CLI and the adapter itself."""
    bad = []
    for imp in imports:
        adapter = imp.target.split(".")[0]
        if (
            adapter in ADAPTERS
            and imp.importer.split(".")[0] != adapter
            and not within(imp.importer, ADAPTER_IMPORTERS)
        ):
            bad.append(imp.where())
    return bad


def request_path_violations(imports: Iterable[Import], modules: Mapping[str, Path]) -> list[str]:
    """Rule 2: learning code imported by a request-path module or by the cache; a request-path module that
    imports another project module at module level which is not on the request path, or one outside
    ``LAZY`` inside a function."""
    bad = []
    for imp in imports:
        if on_request_path(imp.importer):
            if within(imp.target, LEARNING):
                bad.append(imp.where())
            elif imp.target in modules and not on_request_path(imp.target):
                if not (imp.in_function or imp.type_checking or imp.by_name):
                    bad.append(imp.where() + ": not a request-path module")
                elif not within(imp.target, LAZY):
                    bad.append(imp.where() + ": neither a request-path module nor one loaded lazily")
        elif within(imp.importer, ("shared_scorer.cache",)) and within(imp.target, ("shared_scorer.fitting",)):
            bad.append(imp.where())
    return bad


def reachable(imports: Iterable[Import], modules: Mapping[str, Path], starts: Iterable[str]) -> dict[str, list[str]]:
    """Every project module that importing ``starts`` and calling into them can load (imports at every level
    but ``TYPE_CHECKING``, and the parent packages Python runs first), each with one path that loads it."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for imp in imports:
        if not (imp.type_checking or imp.by_name) and imp.target in modules:
            edges[imp.importer].add(imp.target)
    for name in modules:
        parts = name.split(".")
        edges[name] |= {".".join(parts[:end]) for end in range(1, len(parts))} & set(modules)
    paths = {start: [start] for start in starts}
    queue = list(paths)
    while queue:
        node = queue.pop(0)
        for child in sorted(edges[node]):
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    return paths


def import_cycles(imports: Iterable[Import], modules: Mapping[str, Path]) -> list[list[str]]:
    """Rule 3: one cycle path (``[a, b, a]``) per strongly connected group of project modules."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for imp in imports:
        if not (imp.type_checking or imp.by_name) and imp.target in modules and imp.target != imp.importer:
            edges[imp.importer].add(imp.target)
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(group)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    cycles = []
    for group in groups:
        first = min(group)
        # Shortest way back to ``first`` inside the group (breadth-first), so the path is a real cycle.
        previous: dict[str, str] = {}
        frontier = [first]
        while frontier and first not in previous:
            following = []
            for node in frontier:
                for child in sorted(edges[node] & group):
                    if child not in previous:
                        previous[child] = node
                        following.append(child)
            frontier = following
        path = [first]
        node = previous[first]
        while node != first:
            path.append(node)
            node = previous[node]
        cycles.append([first, *reversed(path[1:]), first])
    return sorted(cycles)


# --- the project itself ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> tuple[dict[str, Path], list[Import]]:
    return all_imports(ROOT)


def test_only_the_cli_imports_an_adapter(project):
    _, imports = project
    assert adapter_violations(imports) == []


def test_the_request_path_imports_no_learning_code(project):
    modules, imports = project
    assert request_path_violations(imports, modules) == []


def test_no_import_cycles(project):
    modules, imports = project
    cycles = import_cycles(imports, modules)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_what_a_request_can_load_reaches_no_fitting_code_but_the_records_type(project):
    """Everything the request path can load, lazily loaded scorers and cache included, reaches of the
    fitting code only the records type (see ``LAZY_REACHES_FITTING``)."""
    modules, imports = project
    paths = reachable(imports, modules, [name for name in modules if on_request_path(name)])
    fitting = {name: " -> ".join(path) for name, path in paths.items() if within(name, ("shared_scorer.fitting",))}
    assert set(fitting) == LAZY_REACHES_FITTING, fitting


def test_the_walk_sees_the_whole_tree(project):
    """The checks above look at every package; every name in the request-path lists is a real module; the
    packages a request-path module sits in are on the request path too (Python runs them first); and lazy
    imports are seen (the CLI imports adapters only inside functions)."""
    modules, imports = project
    assert {name.split(".")[0] for name in modules} == set(PACKAGES)
    for entry in (*REQUEST_PATH, *NOT_REQUEST_PATH, *LAZY):
        assert entry.removesuffix(".*") in modules, entry
    for name in filter(on_request_path, modules):
        parts = name.split(".")
        assert all(on_request_path(".".join(parts[:end])) for end in range(1, len(parts))), name
    cli_to_adapters = [
        imp for imp in imports if within(imp.importer, ADAPTER_IMPORTERS) and within(imp.target, ADAPTERS)
    ]
    assert cli_to_adapters and all(imp.in_function or imp.by_name for imp in cli_to_adapters)


# --- each rule fails on a tree that breaks it -----------------------------------------------------------


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    for relative, source in {
        "shared_scorer/__init__.py": "",
        "frugal_langchain/__init__.py": "",
        "frugal_llamaindex/__init__.py": "",
        **files,
    }.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_rule_one_fails_when_the_core_or_the_other_adapter_imports_an_adapter(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "shared_scorer/collect.py": "def load():\n    from frugal_langchain.evaluate import load_prices\n",
            "shared_scorer/cli/__init__.py": "def serve():\n    import frugal_llamaindex\n",
            "shared_scorer/server/gateway.py": (
                '"""Backends: ``frugal_langchain.chat_models``."""\nBACKENDS = {"lc": "frugal_langchain.chat_models"}\n'
            ),
            "frugal_langchain/evaluate.py": "from . import chat_models\n",
            "frugal_langchain/chat_models.py": "",
            "frugal_llamaindex/llms.py": (
                "from importlib import import_module\nmodule = import_module('frugal_langchain.chat_models')\n"
            ),
        },
    )
    _, imports = all_imports(root)
    assert adapter_violations(imports) == [
        "shared_scorer.collect:2 imports frugal_langchain.evaluate (function-level)",
        "shared_scorer.server.gateway:2 imports frugal_langchain.chat_models (named in a string)",
        "frugal_llamaindex.llms:2 imports frugal_langchain.chat_models (module-level)",
    ]


def test_rule_two_fails_when_the_request_path_reaches_learning_code(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "shared_scorer/cascade.py": "def score():\n    import numpy as np\n",
            "shared_scorer/strategy.py": "from shared_scorer.fitting.frontier import FrontierPoint\n",
            "shared_scorer/tools.py": "from shared_scorer.cache import AnswerCache\n",
            "shared_scorer/budget/__init__.py": "",
            "shared_scorer/budget/report.py": "def plot():\n    import numpy\n",
            "shared_scorer/budget/ledger.py": "def encode():\n    from shared_scorer.fitting import collect\n",
            "shared_scorer/fitting/__init__.py": "",
            "shared_scorer/fitting/frontier.py": "import numpy\n",
            "shared_scorer/fitting/collect.py": "",
            "shared_scorer/cache/__init__.py": "import numpy\nfrom . import pairs\n",
            "shared_scorer/cache/pairs.py": "from shared_scorer.fitting import frontier\n",
            "frugal_llamaindex/llms.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                "def cache():\n    from shared_scorer import cache\n"
            ),
        },
    )
    modules, imports = all_imports(root)
    assert request_path_violations(imports, modules) == [
        "shared_scorer.budget.ledger:2 imports shared_scorer.fitting.collect (function-level)",
        "shared_scorer.cache.pairs:1 imports shared_scorer.fitting.frontier (module-level)",
        "shared_scorer.cascade:2 imports numpy (function-level)",
        "shared_scorer.strategy:1 imports shared_scorer.fitting.frontier (module-level)",
        "shared_scorer.tools:1 imports shared_scorer.cache (module-level): not a request-path module",
        "frugal_llamaindex.llms:3 imports torch (type-checking)",
    ]
    loads = reachable(imports, modules, ["frugal_llamaindex.llms"])
    assert loads["shared_scorer.fitting.frontier"] == [
        "frugal_llamaindex.llms",
        "shared_scorer.cache",
        "shared_scorer.cache.pairs",
        "shared_scorer.fitting.frontier",
    ]


def test_rule_three_fails_on_a_cycle_and_names_its_path(tmp_path):
    root = write_tree(
        tmp_path,
        {
            "shared_scorer/cascade.py": "from shared_scorer.costs import Price\n",
            "shared_scorer/costs.py": "def track():\n    from shared_scorer import tracking\n",
            "shared_scorer/tracking.py": "from .cascade import Cascade\n",
            "shared_scorer/cache/__init__.py": "from .store import Store\n",
            "shared_scorer/cache/store.py": "from shared_scorer.cache import Entry\n",
            "shared_scorer/budget/ledger.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sqlite import SqliteLedger\n"
            ),
            "shared_scorer/budget/sqlite.py": "from .ledger import Ledger\n",
        },
    )
    modules, imports = all_imports(root)
    assert import_cycles(imports, modules) == [
        ["shared_scorer.cache", "shared_scorer.cache.store", "shared_scorer.cache"],
        ["shared_scorer.cascade", "shared_scorer.costs", "shared_scorer.tracking", "shared_scorer.cascade"],
    ]


# --- ARCHITECTURE.md names exactly the modules that exist ---------------------------------------------------


def modules_named_in(text: str) -> list[str]:
    """The ``.py`` files named in the module map (the fenced block under ``## Where everything lives``):
    a line whose first word ends in ``/`` opens a folder, nested by indentation; ``name.py`` words belong to
    the innermost open folder."""
    section = text.split("## Where everything lives", 1)[1]
    block = section.split("```", 2)[1]
    named: list[str] = []
    folders: list[tuple[int, str]] = []
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        words = line.split()
        while folders and folders[-1][0] >= indent:
            folders.pop()
        if words[0].endswith("/"):
            folders.append((indent, (folders[-1][1] if folders else "") + words[0]))
            words = words[1:]
        folder = folders[-1][1] if folders else ""
        named += [folder + word for word in words if re.fullmatch(r"\w+\.py", word)]
    return named


def test_modules_named_in_a_tree_are_found():
    text = "## Where everything lives\n\n```\npkg/  __init__.py  a.py   the a\n  sub/\n    b.py c.py  two\n  d.py\n```"
    assert modules_named_in(text) == ["pkg/__init__.py", "pkg/a.py", "pkg/sub/b.py", "pkg/sub/c.py", "pkg/d.py"]


def test_architecture_names_every_module_once_and_nothing_else():
    named = modules_named_in((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    existing = sorted(str(path.relative_to(ROOT)) for path in find_modules(ROOT).values())
    assert sorted(set(named)) == sorted(named), f"named twice: {sorted({m for m in named if named.count(m) > 1})}"
    assert sorted(set(existing) - set(named)) == [], "modules ARCHITECTURE.md does not name"
    assert sorted(set(named) - set(existing)) == [], "ARCHITECTURE.md names modules that do not exist"
