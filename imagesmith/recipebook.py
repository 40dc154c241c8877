"""The ready specs under recipes/: one folder each, with env.toml, README.md and what they need."""

from __future__ import annotations

import shutil
from pathlib import Path

from imagesmith.errors import InputError
from imagesmith.package_data import data_path


def available_recipes() -> dict[str, str]:
    """Recipe name -> the first sentence of its README."""
    root = data_path("recipes")
    found: dict[str, str] = {}
    for folder in sorted(p for p in root.iterdir() if (p / "env.toml").is_file()):
        readme = folder / "README.md"
        summary = ""
        if readme.is_file():
            body = [
                line.strip()
                for line in readme.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")
            ]
            summary = body[0].split(". ")[0].rstrip(".") if body else ""
        found[folder.name] = summary
    return found


def recipe_files(name: str) -> dict[Path, Path]:
    """Every file of the recipe (env.toml, README.md, anything beside them): relative -> source."""
    recipes = available_recipes()
    if name not in recipes:
        raise InputError(f"no recipe named {name!r}; available: {', '.join(recipes)}")
    folder = data_path("recipes", name)
    return {
        path.relative_to(folder): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def copy_recipe(name: str, directory: Path, *, force: bool) -> list[Path]:
    """Copy the recipe's files into `directory`; the paths written, env.toml first.

    Without `force`, nothing is written when any of them exists already (all are named).
    """
    files = recipe_files(name)
    targets = {directory / relative: source for relative, source in files.items()}
    existing = [target for target in targets if target.exists()]
    if existing and not force:
        names = ", ".join(str(target) for target in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        raise InputError(f"{names} already {verb}; pass --force to overwrite")
    from imagesmith.model.lock import write_error

    written: list[Path] = []
    for target, source in sorted(targets.items(), key=lambda item: item[0].name != "env.toml"):
        part = target.with_name(f".{target.name}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, part)
            part.chmod(source.stat().st_mode & 0o777 | 0o600)
            part.replace(target)
        except OSError as exc:
            part.unlink(missing_ok=True)
            for done in written:  # nothing half-done: the files this call added go again
                if done not in existing:
                    done.unlink(missing_ok=True)
            raise write_error(target, exc) from None
        written.append(target)
    return written
