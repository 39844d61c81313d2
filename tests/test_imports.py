"""The package's import graph: no circle, and no arrow from a lower layer to a higher one.

Every import counts, also those inside functions (a lazy import still ties two modules);
only ``if TYPE_CHECKING:`` blocks are left out. The layers follow the loop (STYLE.md):
the run folder and other plumbing, then benchmarks -> evaluation -> knowledge ->
curriculum -> training -> loop, then the command line. ``cem.validate`` sits above the
benchmarks (its checks name the world's relations), below every stage that runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cem

PACKAGE = Path(cem.__file__).parent
# Lowest first. A module may import its own layer and those below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cem", "cem.errors", "cem.ui", "cem.signals", "cem.io", "cem.text"),
    ("cem.assets",),
    ("cem.choices", "cem.config", "cem.layout", "cem.records"),
    ("cem.models",),
    ("cem.benchmarks",),
    ("cem.validate", "cem.composition"),  # config checks that need no stage of their own
    ("cem.evaluation",),
    ("cem.knowledge",),
    ("cem.curriculum",),
    ("cem.training",),
    ("cem.loop",),
    ("cem.cli", "cem.__main__", "cem.assets.cli"),  # the commands (cem assets fetch builds indexes)
)


def module_of(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_of(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imported(path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``path`` imports (a name that is a module counts as one)."""
    out: set[str] = set()
    todo: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while todo:
        node = todo.pop()
        if _type_checking(node):
            continue
        todo.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "cem"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "cem":
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imported(p, known) - {m} for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    """The layer of ``module``: that of the longest name in ``LAYERS`` it is, or lies in."""
    best, rank = "", None
    for i, names in enumerate(LAYERS):
        for name in names:
            inside = module == name or module.startswith(name + ".")
            if inside and len(name) > len(best):
                best, rank = name, i
    assert rank is not None, f"{module} is in no layer of LAYERS; add it there"
    return rank


def test_the_graph_sees_lazy_imports():
    g = graph()
    assert "cem.training.train" in g["cem.loop.stages"]  # imported inside train_task
    assert "cem.layout" in g["cem.loop.stages"]


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]


def test_no_arrow_from_a_lower_layer_to_a_higher_one():
    g = graph()
    upward = sorted(f"{a} -> {b}" for a, deps in g.items() for b in deps if layer(b) > layer(a))
    assert upward == []


def test_training_does_not_import_the_command_line():
    g = graph()
    assert not any(b.startswith("cem.cli") for b in g["cem.training.train"])
