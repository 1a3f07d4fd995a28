"""The import graph shows the design: no import cycles, and no package imports one on a higher floor.

Every module of pipeline/ and exports/ is parsed (not imported); every import statement counts, at
module level, inside functions and under `if TYPE_CHECKING:`. The engine finds stage modules through
importlib (pipeline/engine/registry.py), which is no import statement and so no edge here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "exports")

# Floors, lowest first: a module imports from its own floor or lower ones, never a higher one. A module's
# floor is that of the longest prefix below that names it. "pipeline" alone covers the package itself
# and its top-level modules (errors, paths, hashing, ranges, redaction, hub, artifact, answers): the
# words every package uses, which import none of the packages. Moving code to a new package means one
# new row here.
FLOORS = {
    "pipeline": 0,             # top-level modules
    "pipeline.data": 1,        # data sets
    "pipeline.models": 1,      # the chain's model
    "pipeline.cards": 1,       # model cards (README.md) of artifacts
    "pipeline.trackers": 1,    # W&B, TensorBoard, MLflow, Trackio: where figures go besides metrics.jsonl
    "pipeline.llama_cpp": 2,   # the llama.cpp toolkit: runtime, server, HF -> GGUF converter, GGUF checks, Modelfile
    "pipeline.backends": 3,    # running a model for inference: the interface, transformers, GGUF, servers
    "pipeline.training": 4,    # what training stages share
    "pipeline.evaluation": 4,  # eval tasks and their scorers
    "pipeline.engine": 5,      # planning and running a chain (stage modules are found through importlib)
    "pipeline.stages": 6,      # stage kinds that train (train/), evaluate and serve
    "exports": 6,              # stage kinds that turn a model into another form: merge, prune, bnb, GPTQ, GGUF
    "pipeline.dashboard": 7,   # the web dashboard over run folders and the store (reads what the engine writes)
}


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's __init__)."""
    found = {}
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (file, is_package)
    return found


def internal_imports(known: dict[str, tuple[Path, bool]]) -> list[tuple[str, str, int]]:
    """(importer, imported module, line) for every import of a pipeline/exports module."""

    def owner(name: str) -> str | None:  # the module a dotted name is, or is in
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    edges = []
    for name, (file, is_package) in known.items():
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if isinstance(node, ast.Import):
                targets = [owner(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                # `from pipeline.data import arrow` imports the module pipeline.data.arrow
                targets = [owner(f"{base}.{alias.name}") or owner(base) for alias in node.names]
            else:
                continue
            edges += [(name, target, node.lineno) for target in dict.fromkeys(targets) if target and target != name]
    return edges


def floor_of(module: str) -> int:
    prefixes = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    assert prefixes, f"{module} has no floor: add its package to FLOORS in {Path(__file__).name}"
    return FLOORS[max(prefixes, key=len)]


def cycles(edges: list[tuple[str, str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path a -> ... -> a."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_path_around(sorted(c)[0], c, graph) for c in components]


def _path_around(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path start -> ... -> start inside a component (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start] + path[::-1][1:] + [start]
                if w not in came_from:
                    came_from[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


KNOWN = modules()
EDGES = internal_imports(KNOWN)


def test_the_graph_is_read():
    """A parser that found nothing would pass every check below."""
    assert {"pipeline.artifact", "pipeline.engine.registry", "pipeline.stages.train.sft", "exports.gguf"} <= set(KNOWN)
    assert len(EDGES) > 300
    assert ("pipeline.stages.train.sft", "pipeline.engine.registry") in {(a, b) for a, b, _ in EDGES}


def test_no_import_cycles():
    found = cycles(EDGES)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_from_a_higher_floor():
    upward = [f"{a} (floor {floor_of(a)}) imports {b} (floor {floor_of(b)}), line {line}"
              for a, b, line in EDGES if floor_of(b) > floor_of(a)]
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", sorted(KNOWN))
def test_every_module_has_a_floor(module):
    """A package directly under pipeline/ needs its own row; only top-level modules fall under "pipeline"."""
    prefix = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert prefix is not None, f"{module} has no floor in FLOORS"
    if prefix == "pipeline":
        assert module.count(".") <= 1, f"{module}: its package has no row in FLOORS"


def test_a_cycle_and_an_upward_import_are_named():
    """The checks above can fail: on a made-up graph they name what is wrong."""
    edges = [("pipeline.data.arrow", "pipeline.data.datasets", 1), ("pipeline.data.datasets", "pipeline.data.readers", 1),
             ("pipeline.data.readers", "pipeline.data.arrow", 1), ("pipeline.data.readers", "pipeline.paths", 1)]
    assert cycles(edges) == [["pipeline.data.arrow", "pipeline.data.datasets", "pipeline.data.readers",
                              "pipeline.data.arrow"]]
    assert floor_of("pipeline.backends.hf") > floor_of("pipeline.models.loading") > floor_of("pipeline.artifact")
