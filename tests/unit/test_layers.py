"""The floor plan, enforced: which of our packages may import which, where the heavy native bindings may
be imported, no import circles, and no hidden function-level imports of our own modules.

An AST scan (nothing is imported) of the folders in ``SCANNED``. Every failure names the file, the line
and the import. The rules are the tables below; ``docs/architecture.md`` shows the same tables and the
picture they come from.

Every rule holds with no exceptions beyond the commented allow-lists below. For the whole report, with
the circles that function-level imports would hide: ``python tests/unit/test_layers.py``.
"""

from __future__ import annotations

import ast
import itertools
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------------------
# The rules. A layer is a package (or sub-package) of ours; the most specific name wins, so pipeline.cli
# has its own row. A layer may always import itself; pipeline.cli is a layer of its own, so the rest of
# pipeline may not import it.
# ---------------------------------------------------------------------------------------------------------

EVERYTHING = frozenset(
    {
        "core",
        "plugins",
        "engines",
        "synth",
        "training",
        "pipeline",
        "pipeline.cli",
        "build_engines",
        "bench",
        "tests",
    }
)

LAYERS: dict[str, frozenset[str]] = {
    # layer           may import (besides itself)
    "core": frozenset(),  # the config schema, the GStreamer toolkit: the bottom
    "plugins": frozenset({"core"}),  # the scoring maths, pure numpy
    "engines": frozenset({"core", "plugins"}),  # torch modules, export, engine build, backends
    "synth": frozenset({"core"}),  # the synthetic scene generator
    "training": frozenset({"core", "plugins", "engines", "synth"}),
    "pipeline": frozenset({"core", "plugins", "engines", "synth"}),  # never training
    "pipeline.cli": frozenset({"core", "plugins", "engines", "synth", "pipeline", "training"}),  # the top
    "build_engines": frozenset({"pipeline.cli"}),  # the design card's script: the CLI's build-engines
    "bench": EVERYTHING,
    "tests": EVERYTHING,  # not scanned; listed so that only bench may import the test fixtures
}

# Third-party modules with native libraries that exist only on some machines: the only files (a path) or
# folders (ending in "/") that may import them. "{gst}" is the GStreamer toolkit, core/gst/
# (core/gst.py in the small trees the tests of the test build).
EDGES: dict[str, tuple[str, ...]] = {
    "gi": ("{gst}", "pipeline/deepstream/"),
    "pyds": ("pipeline/deepstream/",),
    "tensorrt": ("engines/tensorrt_build.py", "engines/backends/tensorrt.py", "bench/device_check.py"),
    "cuda": ("engines/backends/tensorrt.py", "engines/cuda_device.py"),
}

# Optional heavy dependencies: the only third-party modules that may be imported inside a function, so
# that `zsad validate` or a CPU box never loads them. Mirrors ruff's PLC0415 per-file ignores.
HEAVY = frozenset(
    {
        "torch",
        "transformers",
        "safetensors",
        "onnx",
        "onnxruntime",
        "tensorrt",
        "cuda",
        "pyds",
        "gi",
        "matplotlib",
        "selenium",
        "cv2",
        "paho",
    }
)

# Function-level imports of our own modules that are there on purpose: (file, imported module) -> reason.
# Each imported module here loads torch at its top; everything else of ours is imported at the top.
LAZY_OURS_ALLOWED: dict[tuple[str, str], str] = {
    ("engines/build.py", "engines.model"): "loads torch; an up-to-date build (each demo start) never does",
    ("engines/build.py", "engines.semantic"): "loads torch and transformers, only when CLIP is configured",
    ("engines/build.py", "engines.appearance"): "loads torch, only when the appearance engine is exported",
    ("engines/backends/torch.py", "engines.model"): "loads torch; without it the backend says so, by name",
    ("engines/backends/torch.py", "engines.appearance"): "loads torch, only for an appearance engine",
    ("bench/bench_inference.py", "engines.model"): "loads torch, only for the PyTorch reference timings",
    ("bench/bench_naive.py", "engines.model"): "loads torch, only in the naive case's own child process",
    ("bench/common.py", "engines.model"): "loads torch; pipeline cases' RSS must not include it",
    **{
        (
            "bench/device_check.py",
            module,
        ): "loads pydantic/PyYAML/torch: a box without them gets a FAIL line, "
        "not a traceback (bench/device_check.py)"
        for module in (
            "core.config",
            "engines.appearance",
            "engines.backends",
            "engines.build",
            "engines.encoders",
            "engines.export",
            "engines.manifest",
            "engines.model",
            "engines.tensorrt_build",
            "tests.fixtures.tiny_models",
        )
    },
}

# Files that import our modules by name ("package.module:function", through importlib) -> reason.
NAMED_IMPORTS: dict[str, str] = {
    "pipeline/cli/main.py": "a sub-command's handler loads when it runs: `zsad validate` never loads torch",
    "engines/backends/__init__.py": "a backend loads when chosen: each needs its own runtime",
}

SCANNED = ("core", "plugins", "engines", "synth", "training", "pipeline", "bench", "build_engines.py")
OURS = frozenset(name.split(".")[0] for name in EVERYTHING)
RULES = ("layers", "edges", "cycles", "lazy-ours", "lazy-import", "ruff")

# "package.module:function" strings name a function imported later by importlib (the CLI's handlers, the
# backend registry): the scan reads them as imports for the layer rule.
_BY_NAME = re.compile(r"^([a-z_]+(?:\.[a-z_0-9]+)*):[A-Za-z_]\w*$")


# ---------------------------------------------------------------------------------------------------------
# The scanner
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import statement (or one ``"module:function"`` string) found in a file."""

    path: str  # the importing file, relative to the scanned root, with "/"
    line: int
    source: str  # the importing module
    target: str  # the imported module, absolute; for ours, the deepest module that exists
    scope: str  # "" at module level, else the enclosing function or class, e.g. "Graph.run"
    type_only: bool = False  # under `if TYPE_CHECKING:`
    by_name: bool = False  # a "module:function" string
    text: str = ""  # the statement as written

    @property
    def top(self) -> str:
        return self.target.split(".")[0]

    @property
    def ours(self) -> bool:
        return self.top in OURS

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Finding:
    """A broken rule: ``str()`` is what a failing test prints; ``key`` names it (rule, file, module)."""

    rule: str
    key: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class Scan:
    """Every import of a tree, and the modules that exist in it."""

    root: Path
    modules: dict[str, str] = field(default_factory=dict)  # dotted name -> file
    imports: list[Import] = field(default_factory=list)


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(root: Path, scanned: Iterable[str]) -> Iterator[Path]:
    for entry in scanned:
        path = root / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """Collects the imports of one file with their scope and whether they only serve type checking."""

    def __init__(self, scan: Scan, path: str, module: str, is_package: bool) -> None:
        self.scan, self.path, self.module, self.is_package = scan, path, module, is_package
        self.scopes: list[str] = []
        self.type_only = False
        self.found: list[Import] = []

    def _add(self, node: ast.stmt | ast.expr, target: str, *, by_name: bool = False) -> None:
        self.found.append(
            Import(
                path=self.path,
                line=node.lineno,
                source=self.module,
                target=self.resolve(target),
                scope=".".join(self.scopes),
                type_only=self.type_only,
                by_name=by_name,
                text=ast.unparse(node) if isinstance(node, ast.stmt) else repr(getattr(node, "value", "")),
            )
        )

    def resolve(self, name: str) -> str:
        """The deepest module of ours that ``name`` names (``pipeline.run.run_run`` -> ``pipeline.run``)."""
        if name.split(".")[0] not in OURS:
            return name
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in self.scan.modules:
                return candidate
        return name

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scopes.append(node.name)
        self.generic_visit(node)
        self.scopes.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            outer, self.type_only = self.type_only, True
            for stmt in node.body:
                self.visit(stmt)
            self.type_only = outer
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for name in sorted({alias.name for alias in node.names}):
            self._add(node, name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        # `from pkg import sub` imports the submodule when there is one, else a name from pkg.
        targets = {
            f"{base}.{a.name}" if f"{base}.{a.name}" in self.scan.modules else base for a in node.names
        }
        for target in sorted(targets):
            self._add(node, target)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            match = _BY_NAME.match(node.value)
            if match and match.group(1).split(".")[0] in OURS and match.group(1) in self.scan.modules:
                self._add(node, match.group(1), by_name=True)


def scan_tree(root: Path, scanned: Iterable[str] = SCANNED) -> Scan:
    """Read every file under ``root``'s ``scanned`` folders (and tests/, to know its modules)."""
    scan = Scan(root=root)
    files = list(python_files(root, scanned))
    for path in [*files, *python_files(root, ["tests"])]:
        rel = path.relative_to(root)
        scan.modules[module_name(rel)] = rel.as_posix()
    for path in files:
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        collector = _Collector(scan, rel.as_posix(), module_name(rel), rel.name == "__init__.py")
        collector.visit(tree)
        scan.imports.extend(collector.found)
    return scan


# ---------------------------------------------------------------------------------------------------------
# The rules, one function each
# ---------------------------------------------------------------------------------------------------------


def layer_of(module: str) -> str | None:
    """The most specific layer that ``module`` belongs to (``pipeline.cli.demo`` -> ``pipeline.cli``)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return name
    return None


def _key(rule: str, imp: Import) -> str:
    return f"{rule} {imp.path}::{imp.scope or '<module>'} {imp.target}"


def check_layers(scan: Scan) -> list[Finding]:
    """Every import of ours (at any level, typing-only too) goes down the table, never up or sideways."""
    out = []
    for imp in scan.imports:
        if not imp.ours:
            continue
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src is None or dst is None or src == dst or dst in LAYERS[src]:
            continue
        allowed = ", ".join(sorted(LAYERS[src])) or "nothing of ours"
        out.append(
            Finding(
                "layers",
                _key("layers", imp),
                f"{imp.where}: {src} may import only {allowed}, not {dst}: {imp.text}",
            )
        )
    return out


def _edge_allowed(path: str, allowed: tuple[str, ...], root: Path) -> bool:
    gst = "core/gst/" if (root / "core" / "gst").is_dir() else "core/gst.py"
    for prefix in (a.replace("{gst}", gst) for a in allowed):
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return True
    return False


def check_edges(scan: Scan) -> list[Finding]:
    """``gi``, ``pyds``, ``tensorrt`` and ``cuda`` are imported only in the files of ``EDGES``."""
    out = []
    for imp in scan.imports:
        allowed = EDGES.get(imp.top)
        if allowed is None or _edge_allowed(imp.path, allowed, scan.root):
            continue
        where = ", ".join(allowed).replace("{gst}", "the GStreamer toolkit (core/gst)")
        out.append(
            Finding(
                "edges",
                _key("edges", imp),
                f"{imp.where}: {imp.top} may be imported only in {where}: {imp.text}",
            )
        )
    return out


def _cycle_in(component: set[str], graph: Mapping[str, Mapping[str, Import]]) -> list[str]:
    """A shortest circle through the first module of a strongly connected component."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt == start:
                return [*paths[node], start]
            if nxt in component and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise RuntimeError(f"no circle through {start}")  # unreachable: a component always has one


def check_cycles(scan: Scan) -> list[Finding]:
    """No circle of module-level imports between our modules (those run at import time)."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in scan.modules}
    for imp in scan.imports:
        if imp.ours and not imp.scope and not imp.type_only and not imp.by_name and imp.target in graph:
            graph[imp.source].setdefault(imp.target, imp)
    # Tarjan's strongly connected components, iteratively (the graph has a few hundred nodes).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(component)
    out = []
    for component in components:
        circle = _cycle_in(component, graph)
        steps = [f"{a} ({graph[a][b].where}: {graph[a][b].text})" for a, b in itertools.pairwise(circle)]
        message = "import circle: " + " -> ".join([*steps, circle[-1]])
        if len(component) > len(circle) - 1:
            message += f"; all {len(component)} modules tangled: {', '.join(sorted(component))}"
        out.append(Finding("cycles", "cycles " + " -> ".join(circle), message))
    return out


def _lazy(imp: Import) -> bool:
    """An import statement inside a function or class, i.e. run when called, not when the file loads."""
    return bool(imp.scope) and not imp.by_name and not imp.type_only


def check_lazy_ours(scan: Scan) -> list[Finding]:
    """Our own modules are imported at the top of the file, where a reader sees what a file uses.

    Exceptions: ``LAZY_OURS_ALLOWED`` for import statements, ``NAMED_IMPORTS`` for "module:function" names.
    """
    out = []
    for imp in scan.imports:
        if _lazy(imp) and imp.ours and (imp.path, imp.target) not in LAZY_OURS_ALLOWED:
            out.append(
                Finding(
                    "lazy-ours",
                    _key("lazy-ours", imp),
                    f"{imp.where}: {imp.target} imported inside {imp.scope}; import it at the top: "
                    f"{imp.text}",
                )
            )
        elif imp.by_name and imp.path not in NAMED_IMPORTS:
            out.append(
                Finding(
                    "lazy-ours",
                    _key("lazy-ours", imp),
                    f"{imp.where}: {imp.target} named for a later import ({imp.text}); import it at the top, "
                    "or list the file in NAMED_IMPORTS with a reason",
                )
            )
    return out


def check_lazy_imports(scan: Scan) -> list[Finding]:
    """Inside a function, only the optional heavy dependencies of ``HEAVY`` (ruff PLC0415, allow-listed)."""
    out = []
    for imp in scan.imports:
        if _lazy(imp) and not imp.ours and imp.top not in HEAVY:
            out.append(
                Finding(
                    "lazy-import",
                    _key("lazy-import", imp),
                    f"{imp.where}: {imp.top} imported inside {imp.scope}, but it is not an optional heavy "
                    f"dependency (HEAVY); import it at the top: {imp.text}",
                )
            )
    return out


def ruff_ignored_files(root: Path, code: str = "PLC0415") -> set[str]:
    """The files for which pyproject.toml's ruff per-file-ignores switch ``code`` off (globs not expanded)."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return set()
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    ignores = config.get("tool", {}).get("ruff", {}).get("lint", {}).get("per-file-ignores", {})
    return {path for path, codes in ignores.items() if code in codes and not path.startswith("tests/")}


def _needs_lazy_import(imp: Import, root: Path) -> bool:
    """An import that must stay in its function for good: an optional heavy dependency at its edge."""
    if imp.ours:
        return (imp.path, imp.target) in LAZY_OURS_ALLOWED
    return imp.top in HEAVY and (imp.top not in EDGES or _edge_allowed(imp.path, EDGES[imp.top], root))


def check_ruff(scan: Scan) -> list[Finding]:
    """pyproject's ruff PLC0415 per-file ignores name exactly the files with a function-level import.

    Ruff switches a rule off per file, not per import, so ``lazy-ours`` and ``lazy-import`` check each
    import. Here: no file is missing (ruff would fail) or stale (the list only shrinks), and a file that is
    ignored although none of its function-level imports has to be there is a finding of its own.
    """
    lazy_files: dict[str, list[Import]] = {}
    for imp in scan.imports:
        if _lazy(imp):
            lazy_files.setdefault(imp.path, []).append(imp)
    ignored = ruff_ignored_files(scan.root)
    out = []
    for path, imports in sorted(lazy_files.items()):
        first = imports[0]
        if path not in ignored:
            out.append(
                Finding(
                    "ruff",
                    f"ruff {path} missing",
                    f"{first.where}: import inside {first.scope} ({first.text}); ruff PLC0415 will flag it: "
                    f'move it to the top, or, for an optional heavy dependency, add "{path}" = ["PLC0415"] '
                    "to pyproject.toml",
                )
            )
        if not any(_needs_lazy_import(imp, scan.root) for imp in imports):
            out.append(
                Finding(
                    "ruff",
                    f"ruff {path}",
                    f'pyproject.toml: "{path}" ignores PLC0415 only for imports that belong at the top '
                    f"(first: {first.where}: {first.text})",
                )
            )
    out += [
        Finding(
            "ruff",
            f"ruff {path} stale",
            f'pyproject.toml: "{path}" ignores PLC0415 but has no function-level import any more; remove it',
        )
        for path in sorted(ignored - set(lazy_files))
        if any(path == p or path.startswith(f"{p}/") for p in SCANNED)
    ]
    return out


CHECKS = {
    "layers": check_layers,
    "edges": check_edges,
    "cycles": check_cycles,
    "lazy-ours": check_lazy_ours,
    "lazy-import": check_lazy_imports,
    "ruff": check_ruff,
}


# ---------------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_scan() -> Scan:
    return scan_tree(REPO)


@pytest.mark.parametrize("rule", RULES)
def test_repo_follows_rule(rule: str, repo_scan: Scan) -> None:
    problems = [str(f) for f in CHECKS[rule](repo_scan)]
    if problems:
        pytest.fail(f"{len(problems)} broken '{rule}' rule(s):\n" + "\n".join(problems), pytrace=False)


def test_rule_tables_are_consistent() -> None:
    for layer, allowed in LAYERS.items():
        assert allowed <= EVERYTHING, f"{layer}: unknown layers {sorted(allowed - EVERYTHING)}"
    assert set(LAYERS) == EVERYTHING
    assert set(EDGES) <= HEAVY, "a module allowed only at an edge is an optional heavy dependency"
    for path in [*(p for p, _ in LAZY_OURS_ALLOWED), *NAMED_IMPORTS]:
        assert (REPO / path).is_file(), f"an allow-list names a missing file {path}"


def test_allow_lists_are_used(repo_scan: Scan) -> None:
    """An exception nobody needs any more is deleted."""
    lazy = {(imp.path, imp.target) for imp in repo_scan.imports if _lazy(imp)}
    named = {imp.path for imp in repo_scan.imports if imp.by_name}
    unused = [f"LAZY_OURS_ALLOWED {key}" for key in LAZY_OURS_ALLOWED if key not in lazy]
    unused += [f"NAMED_IMPORTS {path}" for path in NAMED_IMPORTS if path not in named]
    assert not unused, "unused exceptions, delete them: " + ", ".join(unused)


def test_scan_reads_the_whole_repo(repo_scan: Scan) -> None:
    files = {imp.path for imp in repo_scan.imports}
    for expected in ("core/config.py", "pipeline/cli/main.py", "build_engines.py"):
        assert expected in files
    for folder in SCANNED:
        assert any(f == folder or f.startswith(f"{folder}/") for f in files), f"nothing read in {folder}"
    named = [imp for imp in repo_scan.imports if imp.by_name and imp.path == "pipeline/cli/main.py"]
    assert named, "the CLI's lazy handlers are read as imports"


# -- the test of the test: a small tree with one broken rule each ------------------------------------------


def _tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    for name in ("core", "plugins", "engines", "synth", "training", "pipeline", "pipeline/cli"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "core" / "gst.py").write_text("import gi\n")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def _run(root: Path, rule: str) -> list[str]:
    return [str(f) for f in CHECKS[rule](scan_tree(root))]


def test_scanner_passes_a_clean_tree(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "core/config.py": "import json\n",
            "plugins/fusion.py": "from core import config\n",
            "engines/model.py": "from core.config import X\nfrom plugins.fusion import Y\n\n"
            "def load():\n    import torch\n",
            "pipeline/run.py": "from engines.model import M\nfrom . import heap\n",
            "pipeline/heap.py": "",
            "pipeline/cli/main.py": 'HANDLERS = {"train": "training.trainer:run_train"}\n',
            "training/trainer.py": "from engines import model\n",
            "pyproject.toml": '[tool.ruff.lint.per-file-ignores]\n"engines/model.py" = ["PLC0415"]\n',
        },
    )
    assert {rule: _run(root, rule) for rule in RULES} == {rule: [] for rule in RULES}


def test_scanner_reports_an_upward_import_with_file_and_line(tmp_path: Path) -> None:
    root = _tree(
        tmp_path, {"pipeline/run.py": "", "engines/build.py": "import json\nfrom pipeline import run\n"}
    )
    (problem,) = _run(root, "layers")
    assert problem.startswith("engines/build.py:2: engines may import only core, plugins, not pipeline")
    assert "from pipeline import run" in problem


def test_scanner_reports_training_imported_outside_the_cli(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "training/trainer.py": "",
            "pipeline/run.py": "def go():\n    from training import trainer\n",
            "pipeline/cli/train.py": "from training import trainer\n",
            "pipeline/cli/main.py": 'H = "pipeline.cli.train:run"\n',
            "pipeline/outputs/hub.py": 'H = "pipeline.cli.main:main"\n',
        },
    )
    problems = _run(root, "layers")
    assert len(problems) == 2
    assert problems[0].startswith("pipeline/outputs/hub.py:1: pipeline may import only")
    assert problems[1].startswith("pipeline/run.py:2: pipeline may import only core, engines, plugins, synth")


def test_scanner_reports_a_circle_with_its_path(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pipeline/a.py": "import json\nfrom pipeline.b import f\n",
            "pipeline/b.py": "from pipeline import c\n",
            "pipeline/c.py": "from typing import TYPE_CHECKING\nimport pipeline.a\n",
            # neither a typing-only nor a function-level import makes a circle
            "pipeline/d.py": "import typing\nif typing.TYPE_CHECKING:\n    from pipeline import e\n",
            "pipeline/e.py": "def f():\n    from pipeline import d\n",
        },
    )
    (problem,) = _run(root, "cycles")
    assert problem == (
        "import circle: pipeline.a (pipeline/a.py:2: from pipeline.b import f) -> "
        "pipeline.b (pipeline/b.py:1: from pipeline import c) -> "
        "pipeline.c (pipeline/c.py:2: import pipeline.a) -> pipeline.a"
    )


def test_scanner_reports_gi_outside_the_toolkit(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pipeline/cpu/graph.py": "import numpy\n\ndef loop():\n    from gi.repository import GLib\n",
            "pipeline/deepstream/graph.py": "import gi\n",
            "engines/backends/tensorrt.py": "def f():\n    from cuda.bindings import runtime\n",
            "engines/build.py": "import tensorrt as trt\n",
        },
    )
    problems = _run(root, "edges")
    assert len(problems) == 2
    assert problems[0].startswith(
        "engines/build.py:1: tensorrt may be imported only in engines/tensorrt_build.py"
    )
    assert problems[1].startswith("pipeline/cpu/graph.py:4: gi may be imported only in the GStreamer toolkit")
    assert "from gi.repository import GLib" in problems[1]


def test_scanner_finds_the_toolkit_as_a_package(tmp_path: Path) -> None:
    root = _tree(
        tmp_path, {"core/gst/__init__.py": "import gi\n", "core/gst/loop.py": "from gi import repository\n"}
    )
    (tmp_path / "core" / "gst.py").unlink()
    assert _run(root, "edges") == []


def test_scanner_reports_function_level_imports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "core/config.py": "",
            "plugins/fusion.py": (
                "class Fusion:\n"
                "    def load(self):\n"
                "        import json\n"
                "        from core import config\n"
                "        import torch\n"
            ),
            "pyproject.toml": '[tool.ruff.lint.per-file-ignores]\n"plugins/alerting.py" = ["PLC0415"]\n',
            "plugins/alerting.py": "",
        },
    )
    (ours,) = _run(root, "lazy-ours")
    assert ours.startswith("plugins/fusion.py:4: core.config imported inside Fusion.load")
    (other,) = _run(root, "lazy-import")
    assert other.startswith("plugins/fusion.py:3: json imported inside Fusion.load")
    missing, stale = _run(root, "ruff")
    assert missing.startswith("plugins/fusion.py:3: import inside Fusion.load")
    assert stale.startswith('pyproject.toml: "plugins/alerting.py" ignores PLC0415')


# ---------------------------------------------------------------------------------------------------------
# The report: `python tests/unit/test_layers.py`
# ---------------------------------------------------------------------------------------------------------


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scan = scan_tree(REPO)
    findings = {rule: CHECKS[rule](scan) for rule in RULES}
    for rule, found in findings.items():
        log.info("== %s: %d", rule, len(found))
        for finding in found:
            log.info("   %s", finding)
    # Not a rule (the lazy-ours rule forbids the imports that could hide one), but worth seeing.
    hidden = check_cycles(Scan(scan.root, scan.modules, [replace(i, scope="") for i in scan.imports]))
    log.info("== circles hidden by function-level imports: %d", len(hidden))
    for finding in hidden:
        log.info("   %s", finding)
    return 0


if __name__ == "__main__":
    sys.exit(main())
