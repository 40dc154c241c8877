"""Find the files imagesmith ships (schemas, recipes, Containerfile.base).

Installed packages carry them inside `imagesmith/`; a source checkout keeps them at the
top of the repository, where `imagesmith/schemas` and `imagesmith/recipes` are links.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_path(*parts: str) -> Path:
    for root in (_PACKAGE, _PACKAGE.parent):
        candidate = root.joinpath(*parts)
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"imagesmith is missing its file {'/'.join(parts)}: reinstall it")
