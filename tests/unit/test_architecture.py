"""The import rules of DESIGN.md, checked on the source: no cycle, analysis model-free, report on public names.

The graph is built from every ``import`` statement of every module (those inside functions too, since
a lazy import is still a dependency), at module granularity; importing ``a.b.c`` also runs the
``__init__`` of ``a.b``, so that edge is added unless the importer lives inside that package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kdlens"

#: shared bottom-layer infrastructure every layer may use
_INFRASTRUCTURE = ("kdlens._io", "kdlens._schema", "kdlens._tables")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[tuple[str, str]]:
    """(imported module, imported name or "") of every import statement in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {(alias.name, "") for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add((sub, "") if sub in MODULES else (base, alias.name))
    return {(m, n) for m, n in found if m == "kdlens" or m.startswith("kdlens.")}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        edges = set()
        for target, _ in _imports(module):
            resolved = _resolve(target)
            if resolved is None or resolved == module:
                continue
            edges.add(resolved)
            parts = resolved.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent in MODULES and parent != module and not module.startswith(parent + "."):
                    edges.add(parent)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_kdlens_modules():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("forbidden", ["kdlens.config", "kdlens.distill", "kdlens.models", "kdlens.teacher",
                                       "kdlens.sweep", "kdlens.eval"])
def test_the_analysis_layer_imports_no_engine_module(forbidden):
    graph = _graph()
    offenders = {m: sorted(t for t in targets if t == forbidden or t.startswith(forbidden + "."))
                 for m, targets in graph.items() if m.startswith("kdlens.analysis")}
    assert {m: t for m, t in offenders.items() if t} == {}


def _private(target: str, name: str) -> bool:
    parts = target.split(".")[1:] + ([name] if name else [])
    return any(p.startswith("_") for p in parts)


def test_reports_import_only_public_names_of_other_packages():
    bad = []
    for module in MODULES:
        if not module.startswith("kdlens.report"):
            continue
        for target, name in _imports(module):
            if target.startswith("kdlens.report") or target in _INFRASTRUCTURE or target == "kdlens":
                continue
            if _private(target, name):
                bad.append(f"{module}: {target} {name}".strip())
    assert bad == []


def test_importing_the_report_or_the_engine_packages_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, kdlens.report, kdlens.distill, kdlens.eval, kdlens.sweep, kdlens.analysis; "
            "from kdlens.distill import RunDir; from kdlens.eval import read_examples; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_kdlens_distill_is_the_training_function_whatever_the_import_order():
    import subprocess
    import sys

    code = ("from kdlens.distill import RunDir\nimport kdlens, kdlens.distill._loop as loop\n"
            "assert callable(kdlens.distill)\n"
            "calls = []\nloop.distill = lambda *a, **k: calls.append((a, k)) or 'run'\n"
            "import kdlens.distill as pkg\npkg.__dict__.pop('distill', None)\n"
            "assert kdlens.distill('cfg', callbacks=()) == 'run' and calls == [(('cfg',), {'callbacks': ()})]\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr
