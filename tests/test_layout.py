"""The structure of ``search/``: no import cycles (counting imports inside functions too), and the
policy, record and feasibility rule load without Ray or torch."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SEARCH = Path(__file__).resolve().parents[1] / "search"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SEARCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The search.* modules ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    files = sorted(SEARCH.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    graph = {_module_name(f): _imports(f, modules) - {_module_name(f)} for f in files}
    # A package's __init__ runs before any of its modules: importing search.a.b imports search.a.
    for name in list(graph):
        graph[name] = {dep for dep in graph[name] if not name.startswith(dep + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_in_search():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_policy_record_and_feasibility_load_without_ray_or_torch():
    code = ("import sys; import search.sweep._policy, search.record, search.feasibility, search.sweep.backends; "
            "heavy = sorted(m for m in ('ray', 'torch', 'torchvision') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=SEARCH.parent)
    assert proc.returncode == 0, f"imported: {proc.stdout.strip()} {proc.stderr[-2000:]}"
