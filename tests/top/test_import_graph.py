"""Imports flow one way through the layers of agro_jax (and data_factory), at any depth (function-level imports
included), with no circle: sql, scale, data < model < rl < rollout < data_factory < train < eval < top level."""

import ast
import pathlib

import pytest
from helpers import REPO_ROOT

# Lower number = lower layer. A module may import its own layer or lower ones; circles are checked separately.
LEVELS = {
    "agro_jax.errors": 0,  # UsageError: raised by any layer for a user's mistake, printed by the CLI as one line
    "agro_jax.sql": 0,
    "agro_jax.scale": 0,
    "agro_jax.data": 0,
    "agro_jax.model": 1,
    "agro_jax.rl": 2,
    "agro_jax.rollout": 3,
    "data_factory": 4,  # its model-in-the-loop steps use the rollout package; only the top level runs it
    "agro_jax.train": 5,
    "agro_jax.eval": 6,
}
TOP = 7  # agro_jax/{cli,config,pipeline,sweep,...}.py: entry points


def level(module: str) -> int:
    for prefix, lvl in LEVELS.items():
        if module == prefix or module.startswith(prefix + "."):
            return lvl
    if module.startswith("agro_jax"):
        return TOP
    raise KeyError(module)


def module_name(path: pathlib.Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (resolved to existing modules; `from pkg import mod` -> pkg.mod)."""
    files = [*REPO_ROOT.glob("agro_jax/**/*.py"), *REPO_ROOT.glob("data_factory/**/*.py")]
    mods = {module_name(f): f for f in files}
    graph = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            deps.update(t for t in targets if t in mods)
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}  # a package's own __init__
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {d}" for m, ds in graph.items() for d in ds if level(d) > level(m))


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_upward_import():
    assert upward_imports(import_graph()) == []


def test_checker_catches_a_circle_and_an_upward_import():
    graph = {"agro_jax.rl.grpo": {"agro_jax.rollout.loop"}, "agro_jax.rollout.loop": {"agro_jax.rl.grpo"}}
    assert find_cycle(graph) == ["agro_jax.rl.grpo", "agro_jax.rollout.loop", "agro_jax.rl.grpo"]
    assert upward_imports(graph) == ["agro_jax.rl.grpo -> agro_jax.rollout.loop"]


@pytest.mark.parametrize(
    "package", sorted(p for p in LEVELS if p.startswith("agro_jax.") and (REPO_ROOT / p.replace(".", "/")).is_dir())
)
def test_each_subpackage_says_what_it_does(package):
    init = REPO_ROOT / package.replace(".", "/") / "__init__.py"
    tree = ast.parse(init.read_text())
    doc = ast.get_docstring(tree)
    assert doc and len(doc.splitlines()) <= 8, f"{init}: a docstring of a few lines"
    assert all(isinstance(n, ast.Expr) for n in tree.body), f"{init}: the docstring and nothing else"
