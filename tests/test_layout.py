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


MAX_CLASS_LINES, MAX_CLASS_METHODS, MAX_FUNCTION_LINES = 300, 20, 50


def _oversized(root: Path) -> list[str]:
    """Classes over 300 lines or 20 methods, functions over 50 lines, in every module under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ClassDef):
                methods = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
                if lines > MAX_CLASS_LINES or methods > MAX_CLASS_METHODS:
                    found.append(f"class {node.name} ({where}): {lines} lines, {methods} methods")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > MAX_FUNCTION_LINES:
                found.append(f"function {node.name} ({where}): {lines} lines")
    return found


def test_no_class_or_function_in_search_is_oversized():
    found = _oversized(SEARCH)
    assert not found, "split these (a class at most 300 lines and 20 methods, a function 50 lines):\n" + "\n".join(found)


def test_the_size_check_finds_an_oversized_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (pkg / "m.py").write_text(f"def long():\n{body}\n\n\nclass Small:\n    def f(self):\n        pass\n")
    found = _oversized(pkg)
    assert len(found) == 1 and found[0].startswith("function long")
