"""The code's shape, checked: stage scripts -> library, never back; no import circles; PPO's internals
stay inside rlhf/ppo; every library module has its test module. Every import counts, including
those inside functions (an import hidden in a function to dodge a circle is still a circle)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {module_name(p): p for folder in ("rlhf", "pipelines") for p in sorted((ROOT / folder).rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """The project modules ``path`` imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
    return {m for m in found if m in MODULES}


GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles() == []


def test_the_library_never_imports_the_stage_scripts_or_the_cli():
    library = [m for m in GRAPH if m.startswith("rlhf") and m != "rlhf.cli"]
    wrong = {m: sorted(d for d in GRAPH[m] if d.startswith("pipelines") or d == "rlhf.cli") for m in library}
    assert {m: d for m, d in wrong.items() if d} == {}
    stages = [m for m in GRAPH if m.startswith("pipelines")]
    assert {m: "rlhf.cli" for m in stages if "rlhf.cli" in GRAPH[m]} == {}


def test_only_the_ppo_stage_and_the_cli_reach_into_rlhf_ppo():
    outside = [m for m in GRAPH if not m.startswith("rlhf.rl")]
    users = sorted(m for m in outside if any(d.startswith("rlhf.rl") for d in GRAPH[m]))
    assert set(users) <= {"pipelines.rl", "rlhf.cli"}, users


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not MODULES[m].name == "__init__.py"))
def test_every_module_has_its_test_module(module):
    parts = module.split(".")
    folder = ROOT / "tests" / ("pipelines" if parts[0] == "pipelines" else "") / Path(*parts[1:-1])
    assert (folder / f"test_{parts[-1]}.py").is_file(), f"no tests for {module}"
