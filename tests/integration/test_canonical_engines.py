"""Canonical images from real engines: docker 20.10 and podman 4.3, built twice each.

The same small apt Containerfile is built with ``--no-cache`` twice on each engine,
saved, and canonicalised. Expected: one manifest digest per engine across rebuilds,
and the same digest on both engines; the canonical docker-archive loads back into
either engine with image ID == config digest and runs; a push of the OCI layout to a
registry (skopeo) keeps the manifest digest, and both engines pull it by digest.

The RUN step removes the files apt, dpkg and ldconfig rewrite with run-dependent
bytes on every install (seen varying between two builds: var/cache/apt/pkgcache.bin,
var/cache/apt/srcpkgcache.bin, var/cache/ldconfig/aux-cache, var/log/apt/history.log,
var/log/apt/term.log, var/log/dpkg.log, var/log/alternatives.log). Without that line
the digests differ in exactly those files (`diff_archives` names them).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from imagesmith.engine.base import Engine
from imagesmith.image.canonical import CanonicalImage, canonicalize
from imagesmith.image.diff import diff_archives
from imagesmith.pipeline.debian_base import build_base

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.podman]

EPOCH = 1_700_000_000
SUITE = "bookworm"
TEST_REPOSITORY = "imagesmith-it"  # conftest's prefix for throwaway images
ENGINES = ("docker", "podman")

CONTAINERFILE = """\
FROM {base}
RUN apt-get update \\
 && apt-get install -y --no-install-recommends tzdata ca-certificates less \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log \\
           /var/log/alternatives.log /var/cache/ldconfig/aux-cache
ENV TZ=Etc/UTC LANG=C.UTF-8
LABEL org.example.lab="canon-test"
USER 1000:1000
"""


@pytest.fixture(scope="module")
def engines(docker_engine: Engine, podman_engine: Engine) -> dict[str, Engine]:
    return {"docker": docker_engine, "podman": podman_engine}


@pytest.fixture(scope="module")
def base_ref(engines: dict[str, Engine], request: pytest.FixtureRequest) -> str:
    """One Debian base, the same image on both engines: built on each from this session's
    root filesystem (the suite's usual base may have been made on another day on one of
    them, from other Debian packages)."""
    ref = f"{TEST_REPOSITORY}/debian-shared:{SUITE}"
    rootfs, _ = request.getfixturevalue("session_rootfs")
    ids = {build_base(engine, rootfs, suite=SUITE, tag=ref).image_id for engine in engines.values()}
    assert len(ids) == 1, ids
    return ref


@pytest.fixture(scope="module")
def builds(
    engines: dict[str, Engine], base_ref: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, int], CanonicalImage]]:
    """Two ``--no-cache`` builds per engine, each saved, removed and canonicalised."""
    work = tmp_path_factory.mktemp("canonical-engines")
    context = work / "context"
    context.mkdir()
    (context / "Containerfile").write_text(CONTAINERFILE.format(base=base_ref))
    results: dict[tuple[str, int], CanonicalImage] = {}
    for name, engine in engines.items():
        for n in (1, 2):
            tag = f"{TEST_REPOSITORY}/canon-build:{name}{n}-{uuid.uuid4().hex[:8]}"
            archive = work / f"{name}{n}.tar"
            try:
                engine.build(context=context, tags=[tag], no_cache=True)
                engine.save(tag, archive)
            finally:
                engine.remove_image(tag, force=True)
            started = time.monotonic()
            image = canonicalize(
                archive,
                work / f"{name}{n}",
                epoch=EPOCH,
                repo_tags=[f"{TEST_REPOSITORY}/canon:{name}{n}-{uuid.uuid4().hex[:8]}"],
            )
            print(
                f"{name} build {n}: canonicalize {time.monotonic() - started:.1f} s, "
                f"{archive.stat().st_size / 1e6:.0f} MB saved -> "
                f"{sum(image.layer_sizes) / 1e6:.0f} MB gzip, {image.manifest_digest}"
            )
            archive.unlink()
            results[(name, n)] = image
    yield results
    shutil.rmtree(work, ignore_errors=True)


def _explain(a: CanonicalImage, b: CanonicalImage) -> str:
    lines = diff_archives(a.layout, b.layout) or ["(no difference found by diff_archives)"]
    return f"{a.manifest_digest} != {b.manifest_digest}:\n" + "\n".join(lines)


@pytest.mark.parametrize("name", ENGINES)
def test_rebuild_on_one_engine_is_identical(
    builds: dict[tuple[str, int], CanonicalImage], name: str
) -> None:
    first, second = builds[(name, 1)], builds[(name, 2)]
    assert first.manifest_digest == second.manifest_digest, _explain(first, second)
    assert first.config_digest == second.config_digest


def test_docker_and_podman_build_the_same_image(
    builds: dict[tuple[str, int], CanonicalImage],
) -> None:
    docker, podman = builds[("docker", 1)], builds[("podman", 1)]
    assert docker.manifest_digest == podman.manifest_digest, _explain(docker, podman)


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("built_by", ENGINES)
def test_canonical_archive_loads_and_runs(
    builds: dict[tuple[str, int], CanonicalImage],
    engines: dict[str, Engine],
    name: str,
    built_by: str,
) -> None:
    image = builds[(built_by, 1)]
    engine = engines[name]
    assert image.archive is not None
    (tag,) = image.repo_tags
    try:
        loaded = engine.load(image.archive)
        assert _sha(loaded) == image.config_digest
        assert _sha(engine.inspect_image(tag).id) == image.config_digest
        result = engine.run(
            tag, ["sh", "-c", "id -u; cat /etc/timezone; ls /etc/ssl/certs | wc -l"]
        )
        assert result.exit_code == 0, result.output
        uid, timezone, certs = result.output.split()[-3:]
        assert (uid, timezone) == ("1000", "Etc/UTC")
        assert int(certs) > 100
    finally:
        engine.remove_image(tag, force=True)


def _sha(image_id: str) -> str:
    return image_id if image_id.startswith("sha256:") else "sha256:" + image_id


@pytest.mark.registry
def test_pushed_layout_keeps_its_digest_and_pulls_on_both_engines(
    builds: dict[tuple[str, int], CanonicalImage],
    engines: dict[str, Engine],
    open_registry: str,
) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.skip("needs skopeo: apt-get install skopeo")
    image = builds[("docker", 1)]
    repo = f"{open_registry}/{TEST_REPOSITORY}/canon"
    subprocess.run(
        [
            skopeo,
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{image.layout}",
            f"docker://{repo}:pushed",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    raw = subprocess.run(
        [skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{repo}:pushed"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    assert raw == (image.layout / "blobs" / "sha256" / image.manifest_digest[7:]).read_bytes()
    by_digest = f"{repo}@{image.manifest_digest}"
    for engine in engines.values():
        try:
            assert _sha(engine.pull(by_digest)) == image.config_digest
        finally:
            engine.remove_image(by_digest, force=True)
