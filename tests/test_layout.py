"""The package's layout as a contract: one module per stage owning its command, one module that knows the run
folder, no import cycles, size limits, and one key for every result row."""
from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

from imagenet_kit import cli
from imagenet_kit.result_rows import KINDS
from tests.conftest import REPO

PACKAGE = REPO / "imagenet_kit"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
RUN_FOLDER_PARTS = {"checkpoints", "last.pt", "best.pt", "export", "model.json"}
MAX_FUNCTION_LINES, MAX_MODULE_LINES, MAX_CLI_LINES = 80, 300, 100
MAX_ENGINE_FUNCTION_LINES = 50  # the training loop and what it calls: each function read at a glance


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {id(n.body[0].value) for n in nodes if n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def _command_names(tree: ast.AST) -> set[int]:
    """``click.command("export")`` and the keys of cli.py's COMMANDS: a command's name, not a folder's."""
    named = {id(call.args[0]) for call in ast.walk(tree) if isinstance(call, ast.Call) and call.args
             and isinstance(call.func, ast.Attribute) and call.func.attr in ("command", "group")}
    registries = [node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and isinstance(node.value, ast.Dict) and any(getattr(t, "id", "").endswith("COMMANDS")
                                                                for t in node.targets)]
    return named | {id(key) for registry in registries for key in registry.keys}


def _names_a_run_folder_part(text: str) -> bool:
    """'best.pt', 'checkpoints/best.pt' or 'runs/*/export/model.json' does; 'an export folder' does not."""
    if text in RUN_FOLDER_PARTS:
        return True
    return any("/" in word and RUN_FOLDER_PARTS & set(word.strip("`'\".,:;()[]").split("/")) for word in text.split())


def test_run_folder_names_are_spelled_in_runs_py_only():
    offenders = []
    for path in MODULES:
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree) | _command_names(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                    and _names_a_run_folder_part(node.value)):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    spelled_in = {line.split(":")[0] for line in offenders}
    assert spelled_in == {"imagenet_kit/runs.py"}, "\n".join(o for o in offenders if "runs.py" not in o)


def test_the_check_itself_catches_a_spelled_out_path():
    assert _names_a_run_folder_part("best.pt") and _names_a_run_folder_part("export")
    assert _names_a_run_folder_part("looked for runs/*/export/model.json.")
    assert _names_a_run_folder_part("a run folder (uses `checkpoints/best.pt`)")
    assert not _names_a_run_folder_part("an export folder") and not _names_a_run_folder_part("model.ts")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_fit_on_a_screen(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{path.name}: {lines} lines"
    limit = MAX_ENGINE_FUNCTION_LINES if path.parent.name == "engine" else MAX_FUNCTION_LINES
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= limit, f"{path.name}:{node.lineno} {node.name}: {length} lines"


def test_nothing_shipped_names_the_development_machine():
    """Users have no ../shared/data and no fixed transfer limit: the package and its recipes name neither."""
    shipped = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".md", ".json")]
    assert len(shipped) > 50
    for path in shipped:
        text = path.read_text()
        assert "../shared" not in text and "64 MiB" not in text, path.relative_to(REPO)


def test_output_goes_through_the_two_streams_of_progress_py():
    """docs/development.md, "Output": progress on `console` (stderr), answers on `results` (stdout), nothing else
    prints."""
    for path in MODULES:
        if path.name == "progress.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                assert called not in ("print", "click.echo", "Console", "rich.console.Console"), \
                    f"{path.relative_to(REPO)}:{node.lineno} writes with {called}(); use progress.console or .results"


def test_cli_is_only_a_registry():
    source = (PACKAGE / "cli.py").read_text()
    assert source.count("\n") < MAX_CLI_LINES
    tree = ast.parse(source)
    commands = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                and any("command" in ast.unparse(d) for d in n.decorator_list)]
    assert commands == []  # the groups (cli, bench) only; every command lives with its stage


# Each stage of the workflow, the module named for it, and the command that module owns.
STAGES = {"convert": "imagenet_kit.data.convert", "lr-find": "imagenet_kit.engine.lr_find",
          "train": "imagenet_kit.engine.train", "eval": "imagenet_kit.engine.evaluate",
          "export": "imagenet_kit.serve.export", "demo": "imagenet_kit.serve.demo"}


@pytest.mark.parametrize("command, module", STAGES.items())
def test_each_stage_is_one_module_holding_its_command(command, module):
    path, attr = cli.COMMANDS[command].split(":")
    assert path == module
    registered = getattr(importlib.import_module(path), attr)
    assert registered.name == command and registered.callback.__module__ == module


def _imports(path: Path) -> set[str]:
    """Kit modules ``path`` imports anywhere in the file (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.startswith("imagenet_kit"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("imagenet_kit")}
    return found


# The stack docs/development.md's Layout section describes, bottom up: a module imports only from lower layers, its own
# package, and the top-level modules (layer 0). pipeline.py is a top-level module that sits on top.
LAYERS = {"config": 1, "data": 2, "models": 2, "optim": 3, "engine": 4, "serve": 5, "pipeline": 6, "bench": 7,
          "plan": 8, "preflight": 9}


def _layer(module: str) -> tuple[str, int]:
    part = module.split(".")[1] if "." in module else ""
    return part, LAYERS.get(part, 0)


def test_imports_run_down_the_layers_the_readme_describes():
    readme = " ".join((REPO / "docs" / "development.md").read_text().split())
    assert ("`config/` uses only the top-level modules, `data/` and `models/` use only those and `config/`, `optim/` "
            "also uses `models/`, `engine/` uses all three, `serve/` uses `engine/`, `pipeline.py` runs the stages, "
            "`bench/` measures them, `plan/` prices them from the measured rows (`result_rows.py`), and `preflight/` "
            "(which trains, times and prices) sits on top") in readme
    modules = {_name(p) for p in MODULES}
    for path in MODULES:
        importer, rank = _layer(_name(path))
        for target in _imports(path) & modules:
            package, target_rank = _layer(target)
            assert package == importer or target_rank < rank or target_rank == 0, \
                f"{_name(path)} (layer {rank}) imports {target} (layer {target_rank})"


def test_no_import_cycles():
    modules = {_name(p): p for p in MODULES}
    graph = {name: {m for m in _imports(path) if m in modules and m != name and not modules[m].name == "__init__.py"}
             for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            assert state.get(target) != "open", "import cycle: " + " -> ".join([*trail, name, target])
            if target not in state:
                visit(target, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_every_committed_result_row_has_a_kind_and_no_other_key_for_it():
    for path in sorted((REPO / "bench" / "results").glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            row = json.loads(line)
            assert row.get("kind") in KINDS, f"{path.name}:{number}"
            assert "bench" not in row, f"{path.name}:{number}"


def test_no_module_of_the_package_serves_only_the_development_host():
    """The GPU bundle (FFCV carried to a bare GPU host) and the image check are tools/, not the kit users install."""
    names = {path.name for path in MODULES}
    assert not {"gpu_bundle.py", "shared_libraries.py", "image_check.py"} & names
    assert (REPO / "tools" / "gpu_bundle.py").is_file() and (REPO / "tools" / "shared_libraries.py").is_file()


def test_plan_reads_the_bench_rows_without_importing_bench():
    """plan prices from measured rows (result_rows.py) and cites bench profiles' statistics from there too: the
    layer numbers would allow plan/ to import bench/, the design does not (docs/development.md, Layout)."""
    plan_modules = [p for p in MODULES if _name(p).startswith("imagenet_kit.plan")]
    assert plan_modules
    for path in plan_modules:
        assert not {m for m in _imports(path) if m.startswith("imagenet_kit.bench")}, _name(path)
