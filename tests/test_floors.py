"""The package's floors: imports run only downward. The floors are stated once, here (docs/architecture.md draws
them); every import of a ``drl_tune`` module — at module level or inside a function — is read from the AST
(``test_import_graph.import_graph``) and must land on its own floor or one below."""

from __future__ import annotations

import subprocess
import sys

from tests.test_import_graph import import_graph

# from the ground up; a module belongs to the floor of its longest listed prefix
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("drl_tune", "drl_tune.ground")),
    ("models", ("drl_tune.models",)),
    ("data", ("drl_tune.data",)),
    ("methods", ("drl_tune.methods",)),
    ("training", ("drl_tune.training",)),
    ("study", ("drl_tune.study", "drl_tune.compat")),
    ("analysis", ("drl_tune.analysis", "drl_tune.experiments")),
    ("driver", ("drl_tune.driver", "drl_tune.suite")),
    ("commands", ("drl_tune.run", "drl_tune.train", "drl_tune.confirm", "drl_tune.report", "drl_tune.doctor",
                  "drl_tune.bench", "drl_tune.benchmark")),
]


def floor_of(module: str) -> int:
    best, level = "", -1
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, level = prefix, index
    assert level >= 0, f"{module} is on no floor: add it to FLOORS (tests/test_floors.py) and docs/architecture.md"
    return level


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} ({FLOORS[floor_of(a)][0]}) imports {b} ({FLOORS[floor_of(b)][0]})"
                  for a, targets in graph.items() for b in targets if floor_of(b) > floor_of(a))


def test_every_module_is_on_a_floor_and_imports_only_downward():
    graph = import_graph()
    assert not upward_imports(graph), "\n".join(upward_imports(graph))


def test_an_upward_import_would_be_found():
    assert upward_imports({"drl_tune.ground.io": {"drl_tune.training.engine"}}) == [
        "drl_tune.ground.io (ground) imports drl_tune.training.engine (training)"]
    assert not upward_imports({"drl_tune.training.engine": {"drl_tune.ground.io", "drl_tune.methods"}})


def test_reading_data_loads_no_method_and_no_run_configuration():
    code = ("import sys, drl_tune.data, drl_tune.data.prepare\n"
            "loaded = sorted(m for m in sys.modules if m.startswith(('drl_tune.methods', 'drl_tune.training', "
            "'drl_tune.study')))\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_commands_are_thin_and_import_no_other_commands_privates():
    """A command parses, calls and prints: the study's orchestration is the driver's (drl_tune/driver.py), and no
    command imports a private name, or any name, of another command (the doctor's check aside)."""
    import ast
    from pathlib import Path

    commands = ("drl_tune.run", "drl_tune.train", "drl_tune.confirm", "drl_tune.report", "drl_tune.benchmark")
    root = Path(__file__).resolve().parent.parent
    for command in commands:
        tree = ast.parse((root / (command.replace(".", "/") + ".py")).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module not in commands, f"{command} imports {node.module}"
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{command} imports private {private} from {node.module}"
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "run_study" not in defined and "confirm_study" not in defined, command
