"""Python resolution against the real package index (network, no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesmith.errors import ResolveError
from imagesmith.inputs.context import fetch_wheels
from imagesmith.locking.python_pins import resolve_python
from imagesmith.model.spec import spec_from_valid_data

pytestmark = pytest.mark.integration


def _spec(*requirements: str) -> object:
    data = {
        "name": "x",
        "base": {"image": "debian"},
        "python": {"requirements": list(requirements)},
    }
    return spec_from_valid_data(data, path=Path("/nonexistent/env.toml"))


def test_sdist_only_packages_are_flagged_and_refused_at_build() -> None:
    lock = resolve_python(
        _spec("librabbitmq==2.0.0", "requests"),  # type: ignore[arg-type]
        python_version="3.11",
        wheel_platform="x86_64-manylinux_2_36",
    )
    flagged = {p.name for p in lock.packages if p.sdist_only}
    assert flagged == {"librabbitmq"}
    assert {"requests", "urllib3", "amqp"} <= {p.name for p in lock.packages}
    with pytest.raises(
        ResolveError, match="no wheel for x86_64-manylinux_2_36 / Python 3.11: librabbitmq==2.0.0"
    ):
        fetch_wheels(lock)


def test_other_platform_resolves_for_arm64() -> None:
    lock = resolve_python(
        _spec("numpy>=2"),  # type: ignore[arg-type]
        python_version="3.11",
        wheel_platform="aarch64-manylinux_2_36",
    )
    (numpy,) = lock.packages
    assert numpy.name == "numpy" and not numpy.sdist_only and numpy.hashes


@pytest.mark.parametrize("glibc", ["2_41", "2_99"])
def test_a_glibc_newer_than_uv_knows_resolves_for_the_newest_it_knows(glibc: str) -> None:
    """Debian 13 has glibc 2.41, which uv 0.13 does not know as a platform: the lock is
    still made (for the newest manylinux uv knows below it), names the image's own
    platform, and its wheels are fetched for that platform."""
    lock = resolve_python(
        _spec("pyyaml"),  # type: ignore[arg-type]
        python_version="3.13",
        wheel_platform=f"x86_64-manylinux_{glibc}",
    )
    assert lock.platform == f"x86_64-manylinux_{glibc}"
    (pyyaml,) = lock.packages
    assert not pyyaml.sdist_only and pyyaml.hashes
    (wheel,) = (fetch_wheels(lock) / "wheels").glob("*.whl")
    assert "cp313" in wheel.name and "manylinux" in wheel.name


def test_a_python_change_keeps_base_and_apt_pins_without_an_engine(tmp_path: Path) -> None:
    import shutil

    from imagesmith.locking.resolve import lock_spec
    from imagesmith.model.lock import write_lock
    from imagesmith.model.spec_loading import load_spec
    from tests.conftest import EXAMPLE
    from tests.fixtures.make_lock import make_lock

    folder = tmp_path / "lab"
    shutil.copytree(EXAMPLE, folder)
    path = folder / "env.toml"
    previous = make_lock(path)
    write_lock(previous, folder / "env.lock")

    def no_engine() -> object:
        raise AssertionError("a Python-only change must not touch the engine")

    path.write_text(path.read_text().replace('"pyyaml"', '"pyyaml==6.0.1"'))
    new = lock_spec(load_spec(path), engine=no_engine, previous=previous)  # type: ignore[arg-type]
    assert new.base == previous.base and new.apt == previous.apt
    assert new.python is not None
    assert {p.name: p.version for p in new.python.packages}["pyyaml"] == "6.0.1"

    path.write_text(path.read_text().replace('"git", ', ""))  # an apt change: resolve again
    with pytest.raises(AssertionError, match="must not touch the engine"):
        lock_spec(load_spec(path), engine=no_engine, previous=new)  # type: ignore[arg-type]


def test_a_requirements_files_hashes_narrow_the_pins_and_a_wrong_one_stops_the_lock(
    tmp_path: Path,
) -> None:
    """pip's hash-checking mode: a requirements_file (as pip-compile writes it) that gives
    --hash options leaves in the lock only the files they allow, so the build downloads no
    other; a hash the index serves for no file of the version is one line."""
    from imagesmith.model.spec_loading import load_spec

    free = resolve_python(
        _spec("idna==3.7"),  # type: ignore[arg-type]
        python_version="3.11",
        wheel_platform="x86_64-manylinux_2_36",
    )
    (idna,) = free.packages
    assert len(idna.hashes) >= 2  # the wheel and the sdist, at least
    chosen = idna.hashes[0].removeprefix("sha256:")
    (tmp_path / "requirements.txt").write_text(
        f"idna==3.7 \\\n    --hash=sha256:{chosen} \\\n    --hash=sha256:{'0' * 64}\n"
    )
    (tmp_path / "env.toml").write_text(
        'name = "x"\n[base]\nimage = "debian"\n[python]\nrequirements_file = "requirements.txt"\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    narrowed = resolve_python(spec, python_version="3.11", wheel_platform="x86_64-manylinux_2_36")
    assert [(p.name, p.hashes) for p in narrowed.packages] == [("idna", (f"sha256:{chosen}",))]

    (tmp_path / "requirements.txt").write_text(f"idna==3.7 --hash=sha256:{'0' * 64}\n")
    with pytest.raises(ResolveError) as caught:
        resolve_python(
            load_spec(tmp_path / "env.toml"),
            python_version="3.11",
            wheel_platform="x86_64-manylinux_2_36",
        )
    assert str(caught.value) == (
        "python: idna 3.7: none of the files the index serves for it has a sha256 that "
        "requirements_file's --hash options allow"
    )
