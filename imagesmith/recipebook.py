"""The ready specs under recipes/: one folder each, with env.toml and README.md."""

from __future__ import annotations

from imagesmith.errors import InputError
from imagesmith.resources import data_path


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


def recipe_text(name: str) -> str:
    recipes = available_recipes()
    if name not in recipes:
        raise InputError(f"no recipe named {name!r}; available: {', '.join(recipes)}")
    return (data_path("recipes", name, "env.toml")).read_text(encoding="utf-8")
