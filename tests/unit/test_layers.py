"""The package's layers: no import cycle among ``cat_dspy`` modules, and every import points down the layers
(:data:`LAYERS`), function-level imports included.

Every ``import``/``from ... import`` statement of every module is read with :mod:`ast` (wherever it sits: module
level, inside functions, in try blocks), except those under ``if TYPE_CHECKING:``, which never run; a string constant
that names a ``cat_dspy`` module (a lazy table for :func:`importlib.import_module`) counts as an import too. A cycle,
even one closed only by a lazy import inside a function, means two modules that cannot be understood apart.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import cat_dspy

ROOT = Path(cat_dspy.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``cat_dspy`` modules ``name`` imports (a ``from pkg import sub`` counts as importing ``pkg.sub``)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "cat_dspy")
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            if not base or base.split(".")[0] != "cat_dspy":
                continue
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(base)
        elif isinstance(node, ast.Constant) and node.value in modules and node.value != "cat_dspy":
            found.add(node.value)  # a lazy table for importlib ({"eval": "cat_dspy.cli.eval"})
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "cat_dspy.lm.models" in graph["cat_dspy.modules.rollout"]  # imported inside a method only


def test_no_import_cycle_among_cat_dspy_modules():
    graph = import_graph()
    assert graph["cat_dspy"], "the package root names its exports"
    graph["cat_dspy"] = set()  # it imports them lazily, on first attribute access: never while a submodule loads
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


LAYERS = (
    ("cat_dspy.scoring", "cat_dspy.deprecation"),  # pure functions: answers, rewards, statistics
    ("cat_dspy.lm", "cat_dspy.signatures", "cat_dspy.adapters", "cat_dspy.jsonl_store", "cat_dspy.tracking",
     "cat_dspy.datasets", "cat_dspy.config"),  # engines, prompts, stores, data, the reward's options
    ("cat_dspy.modules", "cat_dspy.testing"),  # the DSPy modules (and the scripted engines that test them)
    ("cat_dspy.evaluation", "cat_dspy.optimization"),  # test time: evaluation, prompt optimization
    ("cat_dspy.rl",),  # training: the TRL rewards, GRPO and SFT entries
    ("cat_dspy.rewards", "cat_dspy"),  # facades of names (TRL's dotted paths, the package's exports)
    ("cat_dspy.cli", "cat_dspy.__main__"),  # the command line (python -m cat_dspy)
)
"""The layers, bottom first: a module imports its own layer and those below it, never one above."""


def layer_of(name: str) -> int:
    """The index in :data:`LAYERS` of the layer holding module ``name``."""
    for index, prefixes in enumerate(LAYERS):
        if any(name == p or (p != "cat_dspy" and name.startswith(p + ".")) for p in prefixes):
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The imports of ``graph`` that point to a higher layer."""
    return sorted((a, b) for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a))


def test_upward_arrows_finds_a_planted_one():
    graph = {"cat_dspy.scoring.rewards": {"cat_dspy.rl.reward"}, "cat_dspy.cli.solve": {"cat_dspy.modules.cat"}}
    assert upward_arrows(graph) == [("cat_dspy.scoring.rewards", "cat_dspy.rl.reward")]


def test_every_import_points_down_the_layers():
    assert upward_arrows(import_graph()) == []


def test_the_reward_facade_defines_nothing():
    tree = ast.parse((ROOT / "rewards.py").read_text())
    defined = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign))
               and not (isinstance(n, ast.Assign) and [ast.unparse(t) for t in n.targets] == ["__all__"])]
    assert defined == [], [ast.unparse(n)[:60] for n in defined]


def test_one_place_sets_process_wide_library_settings_at_import():
    def sets_environ(path: Path) -> bool:  # a module-level statement writes os.environ
        writes = ("os.environ.setdefault(", "os.environ[", "os.putenv(", "os.environ.update(")
        return any(isinstance(stmt, (ast.Expr, ast.Assign)) and ast.unparse(stmt).startswith(writes)
                   for stmt in ast.parse(path.read_text()).body)

    assert [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if sets_environ(p)] == ["__init__.py"]


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-``cat_dspy`` packages a module imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - {"cat_dspy", "__future__"}


def test_scoring_needs_no_lm_and_no_torch():
    graph, modules = import_graph(), all_modules()
    scoring = [name for name in graph if name.startswith("cat_dspy.scoring")]
    assert len(scoring) >= 5
    for name in scoring:
        assert all(dep.startswith("cat_dspy.scoring") for dep in graph[name]), (name, graph[name])
        heavy = third_party_imports(modules[name]) & {"dspy", "torch", "transformers", "litellm", "trl", "mlflow"}
        assert not heavy, (name, heavy)


def test_only_the_command_line_imports_the_command_line():
    for name, deps in import_graph().items():
        if not name.startswith("cat_dspy.cli") and name != "cat_dspy.__main__":  # python -m cat_dspy: the CLI
            assert not any(dep.startswith("cat_dspy.cli") for dep in deps), (name, deps)
