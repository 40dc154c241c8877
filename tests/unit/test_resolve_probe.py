"""Reading the base's answer: where each .deb of the closure lives, from apt's own output.

The probe's output below is what bookworm's apt printed inside the test base (2026-12-01):
`Inst` lines, `apt-cache show` records and `apt-get download --print-uris` lines, with an
epoch (git), a package from the security archive, and one apt printed no URL for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import pytest

from imagesmith.engine.base import Engine, ImageInfo, RunResult
from imagesmith.errors import InputError, ResolveError
from imagesmith.locking.apt_probe import BaseProbe, probe_base
from imagesmith.locking.resolve import resolve_base
from imagesmith.model.lock import BaseImageLock
from imagesmith.model.spec_loading import load_spec

FIRST = "@@SUITE bookworm\n@@ARCH amd64\n@@GLIBC 2.36\n"
GIT_SHA = "637a85ddd6247fab13bdd0592f2f39aff04ce4dbf0655d3ab553ac359a38ce6f"
PERL_SHA = "3ed38ffa8320e9bf7597cefa01b6a6ace4a08ccc77cdfd15ef7d8b711dea7166"
CLOSURE = f"""{FIRST}\
@@ Inst git (1:2.39.5-0+deb12u3 Debian:12.15/oldstable [amd64])
@@ Inst perl-modules-5.36 (5.36.0-7+deb12u4 Debian-Security:12/oldstable-security [all])
@@SHA git 1:2.39.5-0+deb12u3 {GIT_SHA} pool/main/g/git/git_2.39.5-0+deb12u3_amd64.deb
@@SHA perl-modules-5.36 5.36.0-7+deb12u4 {PERL_SHA} \
pool/updates/main/p/perl/perl-modules-5.36_5.36.0-7+deb12u4_all.deb
@@URI 'http://deb.debian.org/debian/pool/main/g/git/git_2.39.5-0%2bdeb12u3_amd64.deb' \
git_1%3a2.39.5-0+deb12u3_amd64.deb 7264380 SHA256:{GIT_SHA}
@@URI 'http://deb.debian.org/debian-security/pool/updates/main/p/perl/\
perl-modules-5.36_5.36.0-7%2bdeb12u4_all.deb' perl-modules-5.36_5.36.0-7+deb12u4_all.deb \
2817356 SHA256:{PERL_SHA}
"""


class ProbeEngine:
    """Answers the probe's two runs (without packages, then with) with fixed output."""

    def __init__(self, closure: str, first: str = FIRST) -> None:
        self.closure, self.first = closure, first

    def run(
        self,
        image: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        network: bool = True,
        host_network: bool = False,
    ) -> RunResult:
        return RunResult(0, self.closure if env and env.get("PKGS") else self.first)


def probe(tmp_path: Path, closure: str) -> BaseProbe:
    (tmp_path / "env.toml").write_text(
        'name = "p"\n[base]\nimage = "b"\n[apt]\npackages = ["git"]\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    base = BaseImageLock(reference="b", repository="b", digest="sha256:" + "1" * 64, local=True)
    engine = cast(Engine, ProbeEngine(closure))
    return probe_base(engine, base, spec, "linux/amd64", lambda _: None)


def test_each_package_records_its_archive_path_size_and_source(tmp_path: Path) -> None:
    found = probe(tmp_path, CLOSURE)
    git, perl = found.apt_closure
    assert (git.name, git.version, git.sha256, git.requested) == (
        "git",
        "1:2.39.5-0+deb12u3",
        GIT_SHA,
        True,
    )
    assert git.path == "pool/main/g/git/git_2.39.5-0+deb12u3_amd64.deb"  # '+' unquoted
    assert (git.size, git.source) == (7264380, "http://deb.debian.org/debian")
    assert perl.path == "pool/updates/main/p/perl/perl-modules-5.36_5.36.0-7+deb12u4_all.deb"
    assert (perl.source, perl.requested) == ("http://deb.debian.org/debian-security", False)


def test_a_package_apt_gives_no_url_for_is_a_clear_error(tmp_path: Path) -> None:
    without_perl_url = CLOSURE[: CLOSURE.index("@@URI 'http://deb.debian.org/debian-security")]
    with pytest.raises(ResolveError, match=r"does not say where to fetch perl-modules-5.36="):
        probe(tmp_path, without_perl_url)


class Resolving(Exception):
    """The engine was asked for: resolution ran instead of keeping the previous pins."""


def _no_engine() -> Engine:
    raise Resolving


def test_a_previous_lock_without_deb_paths_is_resolved_again(example_dir: Path) -> None:
    from dataclasses import replace

    from imagesmith.locking.resolve import inputs_hash, lock_spec
    from tests.fixtures.make_lock import make_lock

    spec = load_spec(example_dir / "env.toml")
    current = replace(make_lock(spec.path), inputs_hash=inputs_hash(spec, "linux/amd64"))
    lines: list[str] = []
    # Complete pins and unchanged inputs: kept, no engine, no network.
    assert lock_spec(spec, engine=_no_engine, previous=current, on_line=lines.append) == current
    old = replace(
        current,
        apt=replace(
            current.apt,
            packages=tuple(replace(p, path=None, source=None) for p in current.apt.packages),
        ),
    )
    with pytest.raises(Resolving):
        lock_spec(spec, engine=_no_engine, previous=old, on_line=lines.append)
    assert lines == ["apt: the previous lock does not say where its .debs live; resolving again"]


CURL_SHA = "af7af42226d21bcbf87cf62a9e158bd5dfbd051ebbde8818ca441dc8085f67af"
CURL_SHA512 = (
    "d69dbc5bc987bcce13b6a84a1bcb78e539812065f8951753e0bec1d39607533a"
    "dfb70ed4ff17f3e9ba7889a5063a7e0681e518118d29d5e110279e0bcdc537e8"
)
# What Ubuntu 24.04's apt printed inside a noble base (2026-12-03): print-uris gives the
# index's strongest hash, SHA512, where Debian's gives SHA256.
NOBLE_FIRST = "@@SUITE noble\n@@ARCH amd64\n@@GLIBC 2.39\n"
NOBLE = f"""{NOBLE_FIRST}\
@@ Inst curl (8.5.0-2ubuntu10 Ubuntu:24.04/noble [amd64])
@@SHA curl 8.5.0-2ubuntu10 {CURL_SHA} pool/main/c/curl/curl_8.5.0-2ubuntu10_amd64.deb
@@URI 'http://archive.ubuntu.com/ubuntu/pool/main/c/curl/curl_8.5.0-2ubuntu10_amd64.deb' \
curl_8.5.0-2ubuntu10_amd64.deb 226572 SHA512:{CURL_SHA512}
"""


def test_an_ubuntu_base_whose_apt_prints_sha512_is_pinned_by_the_indexs_sha256(
    tmp_path: Path,
) -> None:
    (tmp_path / "env.toml").write_text(
        'name = "p"\n[base]\nimage = "b"\n[apt]\npackages = ["curl"]\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    base = BaseImageLock(reference="b", repository="b", digest="sha256:" + "1" * 64, local=True)
    found = probe_base(
        cast(Engine, ProbeEngine(NOBLE, NOBLE_FIRST)), base, spec, "linux/amd64", print
    )
    (curl,) = found.apt_closure
    assert (curl.sha256, curl.size) == (CURL_SHA, 226572)
    assert (curl.source, curl.path) == (
        "http://archive.ubuntu.com/ubuntu",
        "pool/main/c/curl/curl_8.5.0-2ubuntu10_amd64.deb",
    )
    assert (found.suite, found.wheel_platform) == ("noble", "x86_64-manylinux_2_39")


class HeldEngine:
    """An engine holding one image built for `architecture`, never pushed."""

    def __init__(self, architecture: str) -> None:
        self.architecture = architecture

    def image_exists(self, ref: str) -> bool:
        return True

    def inspect_image(self, ref: str) -> ImageInfo:
        return ImageInfo(id="sha256:" + "2" * 64, architecture=self.architecture, os="linux")


def test_a_base_made_here_is_locked_for_its_own_platform_only() -> None:
    held = cast(Engine, HeldEngine("amd64"))
    base = resolve_base("lab/base:1", held, "linux/amd64")
    assert (base.local, base.digest) == (True, "sha256:" + "2" * 64)
    with pytest.raises(
        InputError,
        match=r"^base lab/base:1 is a linux/amd64 image made here, "
        r"not a linux/arm64 one: .* \(make a linux/arm64 base, or lock for "
        r"linux/amd64\)$",
    ):
        resolve_base("lab/base:1", held, "linux/arm64")
