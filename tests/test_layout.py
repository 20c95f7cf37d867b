"""The layout ARCHITECTURE.md describes: imports run one way (no cycles), the root holds only TreB1eN's
names and the commands, and nothing in the repository points outside it."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lower layers never import higher ones (a module may import its own layer and those below).
LAYERS = [
    {"utils"},
    {"config"},
    {"data"},
    {"model", "heads", "partial_fc", "verification", "identification"},
    {"faces"},
    {"inference"},
    {"evaluation"},
    {"training"},
    {"learner"},
]
COMMANDS = {"train", "eval", "lfw_eval", "megaface", "demo", "align", "embed", "verify", "export", "facebank",
            "face_verify", "infer_on_video", "take_pic", "crossval"}
# commands that live in their package (TreB1eN's `python data/prepare_data.py`): above every layer, like the others
PACKAGE_COMMANDS = {"data.prepare_data", "data.synthetic"}
ROOT_LIBRARIES = {"config", "learner", "model", "heads", "partial_fc", "verification", "identification", "utils"}
# the commands the open work adds at the root (TreB1eN's facebank names among them)
PLANNED_COMMANDS = {"align", "embed", "verify", "export", "crossval", "face_verify", "infer_on_video", "take_pic"}
LIBRARY_PACKAGES = ("data", "faces", "inference", "evaluation", "training")


def project_modules() -> dict[str, Path]:
    modules = {p.stem: p for p in ROOT.glob("*.py")}
    for package in LIBRARY_PACKAGES + ("perf", "experiments"):  # perf/, experiments/: commands, above every layer
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _runtime_imports(tree: ast.AST):
    """Import nodes, leaving out `if TYPE_CHECKING:` blocks (annotations only, never executed)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _runtime_imports(node)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (anywhere in it, lazy imports included)."""
    found = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module and not node.level else []
        found |= {n for n in names if n in known}
    return found


def layer_of(module: str) -> int | None:
    if module in PACKAGE_COMMANDS:
        return None
    top = module.split(".")[0]
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


GRAPH = {name: imports_of(path, set(project_modules())) for name, path in project_modules().items()}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if layer_of(m) is not None))
def test_imports_run_one_way(module):
    upward = [target for target in GRAPH[module]
              if layer_of(target) is None or layer_of(target) > layer_of(module)]
    assert not upward, f"{module} imports {upward}, which sit above it (ARCHITECTURE.md, 'Layers')"


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            assert state.get(target) != 1, " -> ".join(path + [module, target])
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_no_library_imports_a_command():
    commands = COMMANDS | PACKAGE_COMMANDS
    for module, targets in GRAPH.items():
        if layer_of(module) is not None:  # commands, perf/ and experiments/ may drive other commands
            assert not (targets & commands), f"{module} imports the command(s) {targets & commands}"


def test_the_root_holds_treb1en_names_and_commands_only():
    unexpected = {p.stem for p in ROOT.glob("*.py")} - ROOT_LIBRARIES - COMMANDS - PLANNED_COMMANDS
    assert not unexpected, f"{unexpected} at the root: a library belongs in a package named for its job"


def test_nothing_in_the_repository_points_outside_it():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    this = Path(__file__).relative_to(ROOT).as_posix()
    outside = ("../" + "shared", "DESIGN" + ".md", "NOTES-" + "synthetic")
    for name in files:
        path = ROOT / name
        if name == this or path.suffix not in (".py", ".md", ".txt", ".yaml", ".toml", "") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for needle in outside:
            assert needle not in text, f"{name} refers to {needle}, which a clone of the repository does not have"


def test_experiments_sit_above_every_layer():
    """experiments/ drives the Learner and the evaluation like a command; no library imports it."""
    assert "experiments.pgaml_vs_arcface" in GRAPH and layer_of("experiments.pgaml_vs_arcface") is None
    assert not any(t.startswith("experiments") for m, targets in GRAPH.items() if layer_of(m) is not None
                   for t in targets)
