"""The layers of imagesmith, as docs/architecture.md draws them, kept by its imports (every
import, at the top of a module or inside a function): each room (a subpackage) imports only
the rooms below it, the model knows no engine, the engines know no pipeline, and nothing
imports the command line (the package imagesmith.cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "imagesmith"

#: Knows nothing else of imagesmith.
FOUNDATION = {
    "imagesmith",
    "imagesmith.errors",
    "imagesmith.progress",
    "imagesmith.model.labels",
    "imagesmith.model.reference",
    "imagesmith.model.openpgp",
    "imagesmith.model.quantity",
    "imagesmith.model.slurmtime",
    "imagesmith.model.input_files",
    "imagesmith.model.memo",
    "imagesmith.model.sha256",
    "imagesmith.package_data",
    "imagesmith.userpath",
}
#: The spec and the lock: data and its rules, no engine, no network.
MODEL = FOUNDATION | {
    "imagesmith.model.spec",
    "imagesmith.model.spec_schema",
    "imagesmith.model.spec_checks",
    "imagesmith.model.spec_loading",
    "imagesmith.model.lock",
}
#: What an engine may use besides the model: image files (what `imagesmith.image.oci` held
#: before it was split: the formats, their byte streams, docker-archive writing) and the
#: registry client (and where the Docker CLI's config is).
ENGINE_MAY_USE = MODEL | {
    "imagesmith.engine.overlay",
    "imagesmith.cache.integrity",
    "imagesmith.image.oci",
    "imagesmith.image.streams",
    "imagesmith.image.docker_archive",
    "imagesmith.registry.client",
    "imagesmith.registry.docker_config",
}


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "recipes" in path.relative_to(PACKAGE).parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts).removesuffix(".__init__")
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[module] = {n for n in names if n.split(".")[0] == "imagesmith"} - {module}
    return found


IMPORTS = _imports()


@pytest.mark.parametrize(("layer", "allowed"), [(FOUNDATION, FOUNDATION), (MODEL, MODEL)])
def test_the_model_imports_only_the_model(layer: set[str], allowed: set[str]) -> None:
    wrong = {m: sorted(IMPORTS[m] - allowed) for m in layer if IMPORTS[m] - allowed}
    assert wrong == {}


def test_engines_know_no_pipeline() -> None:
    engines = [m for m in IMPORTS if m.startswith("imagesmith.engine")]
    assert {"imagesmith.engine.docker", "imagesmith.engine.podman"} <= set(engines)
    wrong = {
        m: sorted(d for d in IMPORTS[m] if not d.startswith("imagesmith.engine"))
        for m in engines
        if {d for d in IMPORTS[m] if not d.startswith("imagesmith.engine")} - ENGINE_MAY_USE
    }
    assert wrong == {}


def _is_cli(module: str) -> bool:
    """Whether `module` is the command line: the package imagesmith.cli or one of its modules."""
    return module == "imagesmith.cli" or module.startswith("imagesmith.cli.")


def test_nothing_imports_the_command_line() -> None:
    # `python -m imagesmith` (imagesmith/__main__.py) is the command line's other door; the
    # command line's own modules import one another.
    importers = [
        m for m, names in IMPORTS.items() if not _is_cli(m) and any(_is_cli(n) for n in names)
    ]
    assert importers == ["imagesmith.__main__"]
    assert any(_is_cli(n) for n in IMPORTS["imagesmith.cli.spec_commands"])  # the check sees them


def test_the_check_sees_imports_inside_functions() -> None:
    # engine/docker.py reads the Docker config path from the registry room lazily.
    assert "imagesmith.registry.docker_config" in IMPORTS["imagesmith.engine.docker"]


#: The rooms, lowest first: each may import the rooms before it, never one after it.
ROOMS = [
    "model",
    "render",
    "outputs",
    "cache",
    "registry",
    "engine",
    "image",
    "inputs",
    "locking",
    "attest",
    "pipeline",
    "cluster",
]
#: Top-level modules any room may use (the CLI's own, `cli.*` and `reports`, none may).
UNDER_EVERY_ROOM = {
    "imagesmith",
    "imagesmith.errors",
    "imagesmith.progress",
    "imagesmith.userpath",
    "imagesmith.package_data",
    "imagesmith.recipebook",
}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def test_the_rooms_are_the_package() -> None:
    # The command line (the package cli/) is no room: it is the top, above every room.
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} - {"cli"}
    assert rooms == set(ROOMS)
    top = {m for m in IMPORTS if _room(m) is None and not _is_cli(m)}
    assert top == UNDER_EVERY_ROOM | {"imagesmith.reports", "imagesmith.__main__"}
    assert "imagesmith.cli" in IMPORTS


def test_each_room_imports_only_the_rooms_below_it() -> None:
    wrong: dict[str, list[str]] = {}
    for module, names in IMPORTS.items():
        room = _room(module)
        if room is None:
            continue
        allowed = set(ROOMS[: ROOMS.index(room) + 1])
        for name in sorted(names - UNDER_EVERY_ROOM):
            if _room(name) not in allowed:
                wrong.setdefault(module, []).append(name)
    assert wrong == {}
