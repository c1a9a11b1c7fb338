"""The package's import graph has no cycle: every ``import`` of a ``drl_tune`` module — at module level AND
inside functions (a lazy import still ties the two modules together) — is an edge, read from the AST of every
module under ``drl_tune/``. Importing ``a.b.c`` also runs the packages ``a`` and ``a.b``, so those are edges too
(except a module's own parent packages, which Python has already started when the module runs)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "drl_tune"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str) -> str | None:  # drl_tune.training.config.ConfigError -> drl_tune.training.config
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                module = owner(target) if target.startswith("drl_tune") else None
                if module is None or module == name:
                    continue
                parts = module.split(".")
                for i in range(1, len(parts) + 1):
                    step = ".".join(parts[:i])
                    if step in mods and step != name and not name.startswith(step + "."):
                        graph[name].add(step)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return list(err.args[1])
    return []


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"drl_tune.training.config", "drl_tune.methods", "drl_tune.study.tune",
            "drl_tune.analysis.load"} <= set(graph)
    assert "drl_tune.methods" in graph["drl_tune.training.config"]  # the registry, imported at the top
    assert "drl_tune.study.tune" in graph["drl_tune.driver"]  # an in-function import counts as well
    assert "drl_tune.data" in graph["drl_tune.run"]  # importing drl_tune.data.cache runs the package drl_tune.data


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_would_be_found():
    graph = import_graph()
    graph["drl_tune.methods.drl"].add("drl_tune.training.config")  # what ConfigError's old home in config.py made
    assert find_cycle(graph)
