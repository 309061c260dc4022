"""No import cycles between our own modules, lazy ones included.

An import inside a function, or under `if TYPE_CHECKING:`, hides a cycle from Python's import machinery but
not from a reader: a → b → a still means neither file can be read, tested or changed without the other.
So every import statement counts, wherever it sits: `import x`, `from x import y`, `from toyworld import y`,
and `importlib.import_module("x")` / `__import__("x")` with a constant name.

Our modules: the flat top-level files (`model`), the toyworld scripts (`toyworld.people`, imported as
`from toyworld import people`) and the bench scripts (`bench/published`, imported by bare name from bench/,
which puts itself on sys.path). Everything else (torch, numpy, ...) is not ours and is ignored.
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_our_modules_import_each_other_without_a_cycle():
    graph = import_graph(ROOT)
    assert {"model", "lora", "train", "toyworld.pretrain", "bench/published"} <= set(graph)  # the walk saw them
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (lazy imports count): " + "; ".join(" -> ".join(c) for c in cycles)


def test_a_lazy_or_type_checking_import_closes_a_cycle(tmp_path):
    # a imports b at the top; b imports a inside a function; c imports a only for type checking; d is clean.
    (tmp_path / "a.py").write_text("import os\nimport b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import g\n    return g\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import d\n")
    (tmp_path / "d.py").write_text("import importlib\nmod = importlib.import_module('c')\n")
    (tmp_path / "e.py").write_text("import a, d\n")  # imports both cycles, closes neither
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}, "e": {"a", "d"}}
    assert import_cycles(graph) == [["a", "b", "a"], ["c", "d", "c"]]


def test_toyworld_and_bench_scripts_are_named_as_they_import_each_other(tmp_path):
    (tmp_path / "toyworld").mkdir()
    (tmp_path / "bench").mkdir()
    (tmp_path / "model.py").write_text("def load():\n    from toyworld.world import World\n")
    (tmp_path / "toyworld" / "world.py").write_text("from toyworld import people\nimport numpy\n")
    (tmp_path / "toyworld" / "people.py").write_text("import model\n")
    (tmp_path / "bench" / "published.py").write_text("import model\n")
    (tmp_path / "bench" / "bench_step.py").write_text("import published as P\nfrom bench_other import x\n")
    graph = import_graph(tmp_path)
    assert graph == {"model": {"toyworld.world"}, "toyworld.world": {"toyworld.people"},
                     "toyworld.people": {"model"}, "bench/published": {"model"},
                     "bench/bench_step": {"bench/published"}}
    assert import_cycles(graph) == [["model", "toyworld.world", "toyworld.people", "model"]]


# ---------------------------------------------------------------------- the walk

def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the modules of ours it imports anywhere in its file}, over root's *.py, toyworld/*.py, bench/*.py."""
    files = {path.stem: path for path in root.glob("*.py")}
    files.update({f"toyworld.{path.stem}": path for path in (root / "toyworld").glob("*.py")})
    files.update({f"bench/{path.stem}": path for path in (root / "bench").glob("*.py")})
    graph = {}
    for name, path in files.items():
        in_bench = name.startswith("bench/")
        imported = {_ours(target, files, in_bench) for target in _imported_names(path)}
        graph[name] = imported - {None, name}
    return graph


def _imported_names(path: Path):
    """Every dotted name the file imports, at any depth of its syntax tree."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module  # from toyworld.world import World
            yield from (f"{node.module}.{alias.name}" for alias in node.names)  # from toyworld import world
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and _called_name(node.func) in ("import_module", "__import__")):
            yield node.args[0].value


def _called_name(func) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _ours(target: str, files: dict, in_bench: bool) -> str | None:
    """The module of ours that `target` names, or None. Bench scripts see bench/ first (it is their sys.path[0])."""
    if target in files and "." in target:  # toyworld.people
        return target
    top = target.split(".")[0]
    if in_bench and f"bench/{top}" in files:
        return f"bench/{top}"
    return top if top in files and top != "toyworld" else None


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] for each group of modules that import each other (strongly connected
    components, Tarjan's algorithm), starting at the group's first module in sorted order."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_cycle_through(min(group), group, graph) for group in groups)


def _cycle_through(start: str, group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path start -> ... -> start inside `group` (breadth first, neighbours in sorted order)."""
    previous, frontier = {}, [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]  # path: node, its predecessor, ..., start
                if nxt not in previous:
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not a cycle")


def test_no_module_of_ours_hides_another_package():
    """`python toyworld/x.py` puts toyworld/ first on sys.path (and `python train.py` the root), so a file of ours
    named like a module someone imports hides it: toyworld/tabulate.py once hid the package torch._dynamo imports
    at exit on the GPU machine. Ours against the standard library, what is installed, and what torch and
    diffusers import only on GPU machines."""
    import importlib.metadata
    import sys as system

    ours = {p.stem for folder in (ROOT, ROOT / "toyworld", ROOT / "bench") for p in folder.glob("*.py")}
    theirs = set(system.stdlib_module_names) | set(importlib.metadata.packages_distributions())
    theirs |= {"tabulate", "triton", "flash_attn", "xformers", "sympy", "networkx", "jinja2", "filelock", "fsspec"}
    assert not ours & theirs
