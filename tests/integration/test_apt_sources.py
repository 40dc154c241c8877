"""The lab's own apt sources, against a signed repository the test makes and serves on
127.0.0.1 (dpkg-deb, dpkg-scanpackages, gpg), on both engines."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.errors import ImagesmithError
from imagesmith.inputs.debs import deb_cache
from imagesmith.model.lock import read_lock
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from imagesmith.pipeline.push import push
from tests.fixtures.apt_repo import LoopbackCA, SignedRepo
from tests.integration.conftest import ImageTracker, Registry

pytestmark = pytest.mark.registry

IMAGESMITH = shutil.which("imagesmith") or "imagesmith"


@pytest.fixture
def lab_repo(tmp_path: Path) -> Iterator[SignedRepo]:
    """A repository holding lab-tools 1.0, served on 127.0.0.1 for the test's duration."""
    if shutil.which("dpkg-scanpackages") is None or shutil.which("gpg") is None:
        pytest.skip("needs dpkg-dev and gnupg: bash scripts/install-host.sh")
    repo = SignedRepo(tmp_path / "repo", tmp_path / "gnupg")
    repo.add("lab-tools", "1.0")
    repo.publish()
    try:
        with repo.served():
            yield repo
    finally:
        repo.close()


def _spec(
    folder: Path, repo: SignedRepo, base: str, *, extra: str = "", key: str = "lab.asc"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "lab.asc").exists():
        repo.export_key(folder / "lab.asc")
    spec = folder / "env.toml"
    spec.write_text(
        f'name = "{folder.name}"\n[base]\nimage = "{base}"\n'
        '[apt]\npackages = ["lab-tools", "jq"]\n'
        f'[[apt.sources]]\nurl = "{repo.url}"\nsuites = ["stable"]\ncomponents = ["main"]\n'
        f'key = "{key}"\n{extra}'
    )
    return spec


@pytest.mark.integration
def test_a_lock_with_the_labs_own_package_still_builds_after_the_repository_moves_on(
    engine: Engine,
    base_image: str,
    registry: Registry,
    lab_repo: SignedRepo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    images: ImageTracker,
) -> None:
    """Lock lab-tools 1.0 from the lab's signed repository and jq from Debian, build, push
    with inputs; the repository replaces 1.0 by 1.1; with empty caches and no image left,
    the old lock builds the same digest, lab-tools 1.0 coming from the registry's input
    archive. Without the archive, or with a damaged .deb, the build stops naming it."""
    monkeypatch.setenv("IMAGESMITH_REGISTRY_USER", registry.username)
    monkeypatch.setenv("IMAGESMITH_REGISTRY_PASSWORD", registry.password)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-1"))
    name = f"it-aptsrc-{uuid.uuid4().hex[:8]}"
    repo_ref = f"{registry.host}/lab/{name}"
    spec_path = _spec(
        tmp_path / name, lab_repo, base_image, extra=f'[registry]\nrepository = "{repo_ref}"\n'
    )
    spec = load_spec(spec_path)
    try:
        first = build(spec, engine)
    except ImagesmithError as exc:  # what the repository saw tells a flaky network apart
        pytest.fail(f"{exc}\nthe repository served: {lab_repo.requests}")
    for tag in first.tags:
        images.add(tag)
    lock = read_lock(spec.lock_path)
    tools = next(p for p in lock.apt.packages if p.name == "lab-tools")
    assert (tools.version, tools.source) == ("1.0", lab_repo.url)
    assert tools.path == "pool/main/l/lab-tools/lab-tools_1.0_all.deb"
    (source,) = lock.apt.sources
    assert source.url == lab_repo.url and source.key == "lab.asc"
    assert len(source.fingerprints) == 1 and len(source.fingerprints[0]) == 40
    assert engine.run(first.tags[0], ["lab-tools"]).output.strip() == "lab-tools 1.0"
    push(spec, lock)

    # The repository moves on: 1.1 replaces 1.0, which is gone.
    lab_repo.deb_path("lab-tools", "1.0").unlink()
    lab_repo.add("lab-tools", "1.1")
    lab_repo.publish()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{tools.source}/{tools.path}", timeout=10)

    # An empty machine: no imagesmith cache, no image of this spec.
    for tag in first.tags:
        engine.remove_image(tag, force=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-2"))
    again = build(spec, engine, no_cache=True)
    assert again.digest == first.digest
    assert (deb_cache() / str(tools.sha256)).is_file()  # from the registry alone
    assert engine.run(again.tags[0], ["lab-tools"]).output.strip() == "lab-tools 1.0"

    # Without the archive (a repository that never had it), nothing serves lab-tools 1.0.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-3"))
    spec_path.write_text(spec_path.read_text().replace(repo_ref, f"{repo_ref}-none"))
    with pytest.raises(ImagesmithError) as caught:
        build(load_spec(spec_path), engine, no_cache=True)
    (line,) = str(caught.value).splitlines()  # jq still comes from Debian's archive
    assert line.startswith("apt: lab-tools 1.0 (pool/main/l/lab-tools/lab-tools_1.0_all.deb)")
    assert f"{tools.source}/{tools.path} (HTTP 404" in line
    assert "no input archive there" in line

    # A cached .deb with one byte changed is not used: dropped, and (nothing else has it)
    # the build stops naming the package.
    cached = tmp_path / "cache-2" / "imagesmith" / "debs" / str(tools.sha256)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-2"))
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cached.write_bytes(bytes(data))
    lines: list[str] = []
    with pytest.raises(ImagesmithError) as caught:
        build(load_spec(spec_path), engine, no_cache=True, on_line=lines.append)
    assert (
        f"cache: .deb lab-tools 1.0 sha256:{tools.sha256} was corrupt; fetching it again" in lines
    )
    assert str(caught.value).startswith("apt: lab-tools 1.0 ")
    assert not cached.exists()

    # A repository serving other bytes under 1.0's name: the build stops, naming the
    # package, the hash the lock pins and the one it got.
    altered = lab_repo.deb_path("lab-tools", "1.0")
    altered.write_bytes(bytes(data))
    with pytest.raises(ImagesmithError) as caught:
        build(load_spec(spec_path), engine, no_cache=True)
    message = str(caught.value)
    assert message.startswith(f"apt: lab-tools 1.0 from {tools.source}/{tools.path} does not")
    assert f"expected sha256:{tools.sha256}, got sha256:" in message
    assert not cached.exists()


@pytest.mark.integration
@pytest.mark.parametrize("at_url", [False, True], ids=["directory", "slash"])
def test_a_flat_repository_locks_and_builds(
    engine: Engine,
    base_image: str,
    lab_repo: SignedRepo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    images: ImageTracker,
    at_url: bool,
) -> None:
    """Flat sources: ``suites = ["lab-flat/"]`` (as CRAN's R builds are served) and
    ``suites = ["/"]`` with the directory in the URL (as NVIDIA's CUDA repository). The
    lock records each .deb's path relative to the source's URL, as apt reads a flat
    index, and the build fetches it from there."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lab_repo.publish_flat("lab-flat", at_url=at_url)
    url, suite, path = (
        (f"{lab_repo.url}/lab-flat", "/", "lab-tools_1.0_all.deb")
        if at_url
        else (lab_repo.url, "lab-flat/", "lab-flat/lab-tools_1.0_all.deb")
    )
    folder = tmp_path / f"it-flat-{uuid.uuid4().hex[:8]}"
    spec_path = _spec(folder, lab_repo, base_image)
    text = spec_path.read_text().replace('"lab-tools", "jq"', '"lab-tools"')
    text = text.replace(f'url = "{lab_repo.url}"', f'url = "{url}"')
    text = text.replace('suites = ["stable"]\ncomponents = ["main"]\n', f'suites = ["{suite}"]\n')
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    try:
        built = build(spec, engine)
    except ImagesmithError as exc:
        pytest.fail(f"{exc}\nthe repository served: {lab_repo.requests}")
    for tag in built.tags:
        images.add(tag)
    tools = next(p for p in read_lock(spec.lock_path).apt.packages if p.name == "lab-tools")
    assert (tools.source, tools.path) == (url, path)
    assert ("lab-flat/lab-tools_1.0_all.deb", 200) in lab_repo.requests
    assert engine.run(built.tags[0], ["lab-tools"]).output.strip() == "lab-tools 1.0"


@pytest.mark.integration
def test_an_https_source_is_checked_against_the_hosts_ca_certificates(
    engine: Engine,
    base_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    images: ImageTracker,
) -> None:
    """An https:// source (CRAN's, NVIDIA's) whose certificate the host trusts locks and
    builds, though the base image has no CA certificates: the probe's apt is given the
    host's. One the host does not trust is one line saying so, on lock and on build."""
    if shutil.which("dpkg-scanpackages") is None or shutil.which("gpg") is None:
        pytest.skip("needs dpkg-dev and gnupg: bash scripts/install-host.sh")
    ca = LoopbackCA(tmp_path / "ca")
    repo = SignedRepo(tmp_path / "repo", tmp_path / "gnupg")
    repo.add("lab-tools", "1.0")
    repo.publish()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        with repo.served(tls=ca):
            spec_path = _spec(tmp_path / f"it-https-{uuid.uuid4().hex[:8]}", repo, base_image)
            spec_path.write_text(spec_path.read_text().replace('"lab-tools", "jq"', '"lab-tools"'))
            spec = load_spec(spec_path)

            untrusted = subprocess.run(
                [IMAGESMITH, "lock", "--engine", engine.name, str(spec_path)],
                capture_output=True,
                text=True,
                env={**os.environ, "NO_COLOR": "1"},
                timeout=300,
            )
            assert untrusted.returncode == 1, untrusted.stderr
            assert "Traceback" not in untrusted.stderr
            assert (
                f"error: apt source {repo.url}: this host does not trust its HTTPS certificate"
                in untrusted.stderr
            )

            monkeypatch.setenv("SSL_CERT_FILE", str(ca.bundle))
            built = build(spec, engine)
            for tag in built.tags:
                images.add(tag)
            tools = next(p for p in read_lock(spec.lock_path).apt.packages if p.name == "lab-tools")
            assert tools.source == repo.url and repo.url.startswith("https://")
            assert engine.run(built.tags[0], ["lab-tools"]).output.strip() == "lab-tools 1.0"

            # The lock holds no trace of the host's certificates; the host's fetch of the
            # .deb checks the server's certificate too.
            assert "CERTIFICATE" not in spec.lock_path.read_text()
            monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-2"))
            monkeypatch.delenv("SSL_CERT_FILE")
            with pytest.raises(ImagesmithError) as caught:
                build(spec, engine, no_cache=True)
            assert "this host does not trust its HTTPS certificate" in str(caught.value)
    finally:
        repo.close()


@pytest.mark.integration
def test_bad_sources_get_one_line_each_and_the_right_exit(
    engine: Engine, base_image: str, lab_repo: SignedRepo, tmp_path: Path, images: ImageTracker
) -> None:
    """Through the CLI: a key that did not sign the Release or a suite that is not there is
    the spec's fault (exit 2); a source or mirror that cannot be reached is exit 1."""
    other = SignedRepo(tmp_path / "other", tmp_path / "gnupg-other", uid="Other <o@test>")
    folder = tmp_path / "lab"
    _spec(folder, lab_repo, base_image)
    other.export_key(folder / "other.gpg", armor=False)
    other.close()

    def lock(old: str, new: str) -> subprocess.CompletedProcess[str]:
        text = (folder / "env.toml").read_text()
        assert old in text
        spec = folder / "case.toml"
        spec.write_text(text.replace(old, new))
        env = {**os.environ, "NO_COLOR": "1"}
        return subprocess.run(
            [IMAGESMITH, "lock", "--engine", engine.name, str(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    def error(result: subprocess.CompletedProcess[str]) -> str:
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, result.stderr
        return lines[0]

    wrong_key = lock('key = "lab.asc"', 'key = "other.gpg"')
    assert wrong_key.returncode == 2
    assert error(wrong_key).startswith(
        f"error: apt source {lab_repo.url}: its Release is not signed by the key in other.gpg"
    )
    assert "NO_PUBKEY" in error(wrong_key)

    no_suite = lock('suites = ["stable"]', 'suites = ["oldstable"]')
    assert no_suite.returncode == 2
    assert f"apt source {lab_repo.url}: no such suite or component there" in error(no_suite)

    missing = lock('"lab-tools", "jq"', '"lab-toolz", "jq"')
    assert missing.returncode == 2
    assert error(missing) == (
        "error: apt: not available in the base image's Debian suite or the spec's "
        "[[apt.sources]]: lab-toolz"
    )

    unreachable = lock(lab_repo.url, "http://127.0.0.1:9/lab")
    assert unreachable.returncode == 1
    assert error(unreachable).startswith("error: apt source http://127.0.0.1:9/lab: cannot reach")

    # An archive caught between its Release and the indexes it lists (a mirror in the
    # middle of a sync) is tried again after a pause; while it stays so, exit 1.
    lab_repo.withhold_indexes(1)
    synced = lock('"lab-tools", "jq"', '"lab-tools", "jq"')
    assert synced.returncode == 0, synced.stderr
    assert "(a mirror being updated?); trying again in 2 s" in synced.stderr
    assert not lab_repo.withheld["dists/stable/main/binary-amd64/Packages"]
    (folder / "case.lock").unlink()
    lab_repo.withhold_indexes(10)
    half = lock('"lab-tools", "jq"', '"lab-tools", "jq"')
    lab_repo.withheld.clear()
    assert half.returncode == 1
    assert error(half) == (
        f"error: apt source {lab_repo.url}: its signed Release lists "
        "/dists/stable/main/binary-amd64/Packages but the server does not have it (a mirror "
        "being updated? try again later); apt says: Failed to fetch "
        f"{lab_repo.url}/dists/stable/main/binary-amd64/Packages 404 Not Found "
        f"[IP: 127.0.0.1 {lab_repo.url.rsplit(':', 1)[1]}]"
    )

    # A Release whose Valid-Until is past: apt refuses it, and so does the lock (exit 1).
    lab_repo.valid_until = time.time() - 3600
    lab_repo.publish()
    expired = lock('"lab-tools", "jq"', '"lab-tools", "jq"')
    lab_repo.valid_until = None
    lab_repo.publish()
    assert expired.returncode == 1
    assert error(expired).startswith(
        f"error: apt source {lab_repo.url}: its signed Release has expired (its Valid-Until "
        "is past), and apt refuses an expired Release"
    )

    # The mirror replaces deb.debian.org in the base's own sources.
    mirror = lock("[apt]\n", '[apt]\nmirror = "http://127.0.0.1:9/debian"\n')
    assert mirror.returncode == 1
    assert error(mirror).startswith("error: apt mirror http://127.0.0.1:9/debian: cannot reach")
    # A base whose sources name another archive (an Ubuntu base, a lab's own): the
    # mirror would replace nothing, and the lock would quietly not use it.
    elsewhere = images.derive(
        "elsewhere",
        f"FROM {base_image}\nRUN sed -i s/deb.debian.org/ftp.debian.org/ "
        "/etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null; true\n",
        tmp_path,
    )
    text = (folder / "env.toml").read_text()
    unused = lock(
        text[text.index("[base]") : text.index("[apt]") + 6],
        f'[base]\nimage = "{elsewhere}"\n[apt]\nmirror = "http://mirror.example.edu/debian"\n',
    )
    assert unused.returncode == 2, unused.stderr
    assert error(unused) == (
        "error: [apt] mirror http://mirror.example.edu/debian: the base's apt sources do not "
        "use deb.debian.org/debian, the archive a mirror replaces (an Ubuntu base, or one "
        "with sources of its own): drop mirror, or add the archive as [[apt.sources]]"
    )
