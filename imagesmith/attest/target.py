"""Which lock an SBOM or provenance is made from: a spec's env.lock, or an image's label."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path

from imagesmith.attest.inventory import (
    DEB_LICENSES,
    DPKG_QUERY,
    VENV_LICENSES,
    InstalledDeb,
    parse_deb_licenses,
    parse_dpkg_query,
    parse_venv_licenses,
)
from imagesmith.engine.base import Engine
from imagesmith.errors import InputError, OperationError
from imagesmith.model.lock import Lock, parse_lock

# The label that carries the lock; the older prefix is still read so older images work.
LOCK_LABELS = ("dev.imagesmith.lock", "io.imagesmith.lock")


def is_spec_target(target: str) -> bool:
    """env.toml / env.lock (or any existing file) rather than an image reference."""
    return target.endswith((".toml", ".lock")) or Path(target).is_file()


def lock_from_labels(image: str, labels: Mapping[str, str]) -> Lock:
    """The lock an image carries in its labels; InputError naming the label when it has none."""
    from imagesmith.render.containerfile import decode_embedded_lock

    for label in LOCK_LABELS:
        embedded = labels.get(label)
        if embedded:
            break
    else:
        raise InputError(
            f"{image} was not built by imagesmith: it has no {' or '.join(LOCK_LABELS)} label"
        )
    try:
        text = decode_embedded_lock(embedded)
    except (ValueError, UnicodeDecodeError, zlib.error):
        raise InputError(f"{image}: its {label} label is damaged") from None
    return parse_lock(text, path=Path("env.lock"))


def lock_for_spec(target: str) -> Lock:
    """The up-to-date lock of env.toml (or the lock file itself when given env.lock)."""
    from imagesmith.model.lock import fresh_lock, read_lock
    from imagesmith.model.spec_loading import load_spec

    path = Path(target)
    if path.suffix == ".lock":
        return read_lock(path)
    return fresh_lock(load_spec(path))


def installed_debs(engine: Engine, image: str) -> tuple[InstalledDeb, ...]:
    """The Debian packages installed in `image`, read with dpkg-query in a throwaway container."""
    run = engine.run(image, DPKG_QUERY, user="0", network=False)
    found = parse_dpkg_query(run.output)
    if run.exit_code != 0 or not found:
        last = run.output.strip().splitlines()[-1:] or ["no output"]
        raise OperationError(
            f"{image}: cannot list its Debian packages with dpkg-query "
            f"(exit {run.exit_code}: {last[0][:200]})"
        )
    return found


def deb_licenses(engine: Engine, image: str) -> dict[str, str]:
    """SPDX license expressions of the image's Debian packages whose copyright file is
    machine-readable and names licenses Debian maps to SPDX (the rest stay unknown)."""
    run = engine.run(image, DEB_LICENSES, user="0", network=False)
    return parse_deb_licenses(run.output) if run.exit_code == 0 else {}


def venv_licenses(engine: Engine, image: str) -> dict[str, str]:
    """License expressions the Python distributions in the image's /opt/venv declare."""
    run = engine.run(image, VENV_LICENSES, user="0", network=False)
    if run.exit_code != 0:
        last = run.output.strip().splitlines()[-1:] or ["no output"]
        raise OperationError(
            f"{image}: cannot read its Python distributions' metadata "
            f"(exit {run.exit_code}: {last[0][:200]})"
        )
    return parse_venv_licenses(run.output)
