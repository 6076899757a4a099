"""The package's shape, read from the source: one import package whose rooms import one way.

    core <- storage, envs, gpu <- compute <- postprocess <- pipeline <- ops <- cli

A room imports its own modules and rooms to its left, never one to its right or beside it;
nothing in ``gpuflow`` imports the top-level faces (``flows/``, ``blocks/``,
``deployments/``) or the tests. Imports inside functions count too: a lazy import is an
import. ``docs/architecture.md`` explains the rooms.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gpuflow"
LAYERS: dict[str, int] = {
    "core": 0,
    "storage": 1,
    "envs": 1,
    "gpu": 1,
    "compute": 2,
    "postprocess": 3,
    "pipeline": 4,
    "ops": 5,
    "cli": 6,
}
FACES = ("flows", "blocks", "deployments", "tests")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, module: str, *, runtime_only: bool) -> Iterator[str]:
    """Every module ``path`` imports (relative imports resolved); with ``runtime_only``,
    only those imported when the module itself is, at its top level and not for typing."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if runtime_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "gpuflow" else None


def test_every_room_of_the_package_has_a_layer() -> None:
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert rooms == set(LAYERS), "a new room needs its place in LAYERS and docs/architecture.md"
    assert loose == [], f"modules belong in a room, not at the package's top: {loose}"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_imports_run_one_way(module: str) -> None:
    room = _room(module)
    wrong = []
    for imported in set(_imports(_modules()[module], module, runtime_only=False)):
        if imported.split(".")[0] in FACES:
            wrong.append(f"{imported} (a top-level face or the tests)")
        target = _room(imported)
        if room is None or target is None or target == room or target not in LAYERS:
            continue
        if LAYERS[target] >= LAYERS[room]:
            wrong.append(f"{imported} ({target} is not below {room})")
    assert not wrong, f"{module} imports against the direction: {sorted(set(wrong))}"


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph = {
        name: {
            imported
            for imported in _imports(path, name, runtime_only=True)
            if imported in modules and imported != name
        }
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for child in sorted(graph[name]):
            if state.get(child) == "open":
                cycles.append([*trail[trail.index(child) :], child])
            elif child not in state:
                visit(child, [*trail, child])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """The rules above can fail: an import from a higher room is reported."""
    source = tmp_path / "leases.py"
    source.write_text("def f():\n    from gpuflow.pipeline.stack import GpuflowStack\n")
    imported = set(_imports(source, "gpuflow.gpu.leases", runtime_only=False))
    assert "gpuflow.pipeline.stack" in imported
    assert LAYERS[_room("gpuflow.pipeline.stack") or ""] > LAYERS["gpu"]
    assert set(_imports(source, "gpuflow.gpu.leases", runtime_only=True)) == set()
