"""The apt closure comes from the host: fetched and checked there, installed from those files.

One tiny spec (jq: three small .debs), locked once, built on Docker and on podman from a
host cache filled beforehand, with every package's recorded archive pointing at an
address nothing listens on: the build cannot have fetched a .deb from anywhere (the base
has no package lists either, and the Containerfile runs no `apt-get update`). The image
has the packages, no trace of the folder the .debs passed through, and the same digest on
both engines.
"""

from __future__ import annotations

import gzip
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.errors import OperationError
from imagesmith.inputs.debs import fetch_debs
from imagesmith.locking.resolve import lock_spec
from imagesmith.model.lock import read_lock, write_lock
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from imagesmith.pipeline.canonical_build import layout_dir
from tests.integration.conftest import ensure_test_base

pytestmark = pytest.mark.integration
UNREACHABLE = "http://127.0.0.1:9/debian"


def _layers(layout: Path) -> tuple[list[list[str]], list[str]]:
    """(entry names of each layer, created_by of each history entry) of a canonical image."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    names = []
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=gzip.open(blobs / layer["digest"][7:]), mode="r|") as tar:
            names.append([m.name for m in tar])
    return names, [h.get("created_by", "") for h in config["history"]]


def test_apt_installs_host_checked_debs_with_no_network_same_digest_on_both_engines(
    docker_engine: Engine,
    podman_engine: Engine,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = ensure_test_base(docker_engine, request)
    assert ensure_test_base(podman_engine, request) == base
    assert docker_engine.inspect_image(base).id == podman_engine.inspect_image(base).id
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "env.toml").write_text(
        f'name = "it-apt-offline"\n[base]\nimage = "{base}"\n[apt]\npackages = ["jq"]\n'
    )
    spec = load_spec(folder / "env.toml")
    lock = lock_spec(spec, engine=lambda: docker_engine)
    names = {p.name for p in lock.apt.packages}
    assert {"jq", "libjq1", "libonig5"} <= names
    for package in lock.apt.packages:
        assert package.fetchable and package.path and package.path.startswith("pool/")
        assert package.source in (
            "http://deb.debian.org/debian",
            "http://deb.debian.org/debian-security",
        )
        assert package.size and package.size > 0
    # The host cache filled from the real archive; then the archive "goes away".
    fetch_debs(lock.apt)
    offline = replace(
        lock,
        apt=replace(
            lock.apt,
            packages=tuple(replace(p, source=UNREACHABLE) for p in lock.apt.packages),
        ),
    )
    write_lock(offline, spec.lock_path)
    assert read_lock(spec.lock_path) == offline

    results = {}
    try:
        for engine in (docker_engine, podman_engine):
            output: list[str] = []
            results[engine.name] = build(spec, engine, no_cache=True, on_line=output.append)
            text = "\n".join(output)
            assert "http://" not in text and "apt: fetching" not in text
            assert "Setting up jq " in text
        assert results["docker"].digest == results["podman"].digest

        image = results["docker"].image_id
        for engine in (docker_engine, podman_engine):
            check = engine.run(
                image,
                [
                    "/bin/sh",
                    "-c",
                    "dpkg -s jq >/dev/null && echo jq-ok; test -e /.imagesmith-apt || echo gone; "
                    "apt-mark showauto; echo '{\"a\": 1}' | jq -c .a",
                ],
                network=False,
            )
            assert check.exit_code == 0, check.output
            lines = check.output.split()
            assert lines[:2] == ["jq-ok", "gone"] and lines[-1] == "1"
            assert {"libjq1", "libonig5"} <= set(lines) and "jq" not in lines[2:-1]

        # Nothing of the .debs in any layer: no COPY layer, no whiteout, no history entry.
        layers, history = _layers(layout_dir(results["docker"].digest))
        assert len(layers) == 2 and len(history) == 2
        assert not [n for layer in layers for n in layer if "imagesmith-apt" in n]
        assert not [h for h in history if "imagesmith-apt" in h and h.startswith("COPY")]

        # A .deb missing from the cache, the archive unreachable: a build that starts from
        # the system stage this machine built needs no .deb and gives the same image; one
        # that builds the stage (--no-cache) fails with one line naming every place.
        jq = next(p for p in offline.apt.packages if p.name == "jq")
        (tmp_path / "cache" / "imagesmith" / "debs" / str(jq.sha256)).unlink()
        again = build(spec, docker_engine)
        assert again.digest == results["docker"].digest
        with pytest.raises(OperationError) as caught:
            build(spec, docker_engine, no_cache=True)
        assert caught.value.lines() == [
            f"apt: jq {jq.version} ({jq.path}) not found; looked in: host cache "
            f"{tmp_path / 'cache' / 'imagesmith' / 'debs' / str(jq.sha256)} (absent); "
            f"{UNREACHABLE}/{jq.path} (cannot fetch: [Errno 111] Connection refused)"
        ]
    finally:
        for engine in (docker_engine, podman_engine):
            result = results.get(engine.name)
            if result is not None:
                for tag in result.tags:
                    engine.remove_image(tag, force=True)
                engine.remove_image(result.image_id, force=True)


def test_the_saved_image_loses_the_folder_too_on_both_engines(
    docker_engine: Engine, podman_engine: Engine, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The same rules when the layers come from `docker save` / `podman save` instead of
    the overlay store: the COPY layer and the whiteout go, one digest on both engines."""
    from imagesmith.image.canonical import canonicalize
    from imagesmith.pipeline.canonical_build import DROP_PATHS

    base = ensure_test_base(docker_engine, request)
    assert ensure_test_base(podman_engine, request) == base
    context = tmp_path / "context"
    (context / "apt").mkdir(parents=True)
    (context / "apt" / "a_1_all.deb").write_bytes(b"not really a deb")
    (context / "Containerfile").write_text(
        f"FROM {base}\nCOPY apt/ /.imagesmith-apt/\nRUN rm -rf /.imagesmith-apt && echo x > /x\n"
    )
    digests = {}
    for engine in (docker_engine, podman_engine):
        image_id = engine.build(context=context, tags=())
        try:
            engine.save(image_id, tmp_path / f"{engine.name}.tar")
        finally:
            engine.remove_image(image_id, force=True)
        image = canonicalize(
            tmp_path / f"{engine.name}.tar",
            tmp_path / engine.name,
            epoch=1_700_000_000,
            drop_paths=DROP_PATHS,
            write_archive=False,
        )
        assert image.dropped_layers == (1,)
        assert "layer 2: .wh..imagesmith-apt (whiteout of a dropped path: hides nothing)" in (
            image.removed
        )
        layers, history = _layers(image.layout)
        assert layers[-1] == ["x"] and len(history) == 2
        digests[engine.name] = image.manifest_digest
    assert digests["docker"] == digests["podman"]
