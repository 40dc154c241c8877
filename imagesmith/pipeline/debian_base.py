"""A Debian base image made on this machine: mmdebstrap a root filesystem, import it.

No public registry is needed: `FROM debian:bookworm` is replaced by an image built
`FROM scratch` from a root filesystem that mmdebstrap makes from the Debian archive.

Reproducibility: with SOURCE_DATE_EPOCH set, mmdebstrap writes the same rootfs.tar byte
for byte for the same options and the same archive content. The archive itself moves on
(point releases, security updates), so the rootfs changes exactly when Debian published
something new. The epoch only fixes timestamps; each suite gets a constant default (its
release date, below), so repeated runs agree without the caller choosing one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from imagesmith.cache.gc import cache_budget
from imagesmith.engine.base import TAIL_LINES, Engine
from imagesmith.errors import BuildError, EngineError, InputError
from imagesmith.model.labels import BASE_EPOCH, BASE_ROOTFS, BASE_SUITE
from imagesmith.progress import LineCallback

#: SOURCE_DATE_EPOCH per suite when none is given: the suite's first stable release
#: (x.0) at 00:00 UTC. A date that never changes, so neither does a rebuild's timestamps.
DEFAULT_EPOCHS: dict[str, int] = {
    "bullseye": 1628899200,  # Debian 11.0, 2021-08-14
    "bookworm": 1686355200,  # Debian 12.0, 2023-06-10
    "trixie": 1754697600,  # Debian 13.0, 2025-08-09
}
#: Suites that have -updates and -security suites in the archive.
STABLE_SUITES = frozenset(DEFAULT_EPOCHS)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEFAULT_REPOSITORY = "imagesmith/debian"

MMDEBSTRAP_HINT = "mmdebstrap is not installed: apt-get install mmdebstrap"

CONTAINERFILE_NAME = "Containerfile.base"
# The same text as Containerfile.base at the top of the repository, for installs that do
# not ship that file (tests/integration/test_base.py checks that they agree).
CONTAINERFILE_FALLBACK = """\
# imagesmith's Debian base image: a root filesystem made by mmdebstrap, nothing pulled.
# Made by `imagesmith base` (imagesmith/pipeline/debian_base.py); rootfs.tar sits beside it.
FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["bash"]
"""


@dataclass(frozen=True)
class BaseImage:
    ref: str
    image_id: str
    rootfs_sha256: str = ""


def default_tag(suite: str) -> str:
    return f"{DEFAULT_REPOSITORY}:{suite}"


def containerfile_path() -> Path | None:
    """Containerfile.base inside the installed package, else at the top of the repository."""
    here = Path(__file__).resolve().parent.parent  # the package; the repository is above
    for candidate in (here / CONTAINERFILE_NAME, here.parent / CONTAINERFILE_NAME):
        if candidate.is_file():
            return candidate
    return None


def containerfile_text() -> str:
    path = containerfile_path()
    return path.read_text() if path is not None else CONTAINERFILE_FALLBACK


def sources_lines(
    suite: str, *, mirror: str | None = None, security_mirror: str | None = None
) -> list[str]:
    """apt sources for the rootfs: the suite, and for stable suites its updates and security."""
    main = (mirror or DEFAULT_MIRROR).rstrip("/")
    lines = [f"deb {main} {suite} main"]
    if suite in STABLE_SUITES:
        security = (security_mirror or DEFAULT_SECURITY_MIRROR).rstrip("/")
        lines.append(f"deb {main} {suite}-updates main")
        lines.append(f"deb {security} {suite}-security main")
    return lines


def _epoch_for(suite: str, epoch: int | None) -> int:
    if epoch is not None:
        if epoch < 0:
            raise InputError(f"epoch must be a Unix time (seconds, >= 0), not {epoch}")
        return epoch
    if suite not in DEFAULT_EPOCHS:
        raise InputError(
            f"no default epoch for suite {suite!r} (known: {', '.join(DEFAULT_EPOCHS)}): "
            "pass an epoch"
        )
    return DEFAULT_EPOCHS[suite]


def make_rootfs(
    dest: Path,
    *,
    suite: str = "bookworm",
    epoch: int | None = None,
    mirror: str | None = None,
    security_mirror: str | None = None,
    on_line: LineCallback | None = None,
) -> str:
    """Write a minbase root filesystem tarball of `suite` to `dest`; return its sha256 (hex).

    Runs `SOURCE_DATE_EPOCH=N mmdebstrap --variant=minbase SUITE DEST SOURCES...`; the
    result has no /dev entries, /etc/hostname or /etc/resolv.conf (the engine provides
    those, and copying the host's would make the tarball differ between machines).
    """
    exe = shutil.which("mmdebstrap")
    if exe is None:
        raise EngineError(MMDEBSTRAP_HINT)
    if not suite or not suite.replace("-", "").isalnum():
        raise InputError(f"{suite!r} is not a Debian suite name (e.g. bookworm)")
    source_date_epoch = _epoch_for(suite, epoch)
    cmd = [
        exe,
        "--variant=minbase",
        "--format=tar",
        "--skip=output/dev",
        '--customize-hook=rm -f "$1/etc/hostname" "$1/etc/resolv.conf"',
        suite,
        str(dest),
        *sources_lines(suite, mirror=mirror, security_mirror=security_mirror),
    ]
    env = {**_clean_env(), "SOURCE_DATE_EPOCH": str(source_date_epoch)}
    returncode, tail = _run_mmdebstrap(cmd, env, dest, on_line)
    if returncode != 0:
        dest.unlink(missing_ok=True)
        errors = [line for line in tail if line.startswith("E:")]
        reason = errors[-1].removeprefix("E:").strip() if errors else f"exit code {returncode}"
        raise BuildError(
            f"mmdebstrap could not make a {suite} root filesystem: {reason}",
            step=f"mmdebstrap --variant=minbase {suite}",
            output_tail=list(tail),
        )
    return _sha256(dest)


def _run_mmdebstrap(
    cmd: list[str], env: dict[str, str], dest: Path, on_line: LineCallback | None
) -> tuple[int, deque[str]]:
    """Run mmdebstrap, each output line to `on_line`: its exit code and last lines.

    Interrupted, it is stopped the way it cleans up after itself, and `dest` removed.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
        )
    except FileNotFoundError:
        raise EngineError(MMDEBSTRAP_HINT) from None
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            tail.append(line)
            if on_line is not None:
                on_line(line)
        return proc.wait(), tail
    except BaseException:
        # mmdebstrap unmounts and removes its own temporary tree on SIGINT/SIGTERM.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        dest.unlink(missing_ok=True)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def make_base(
    engine: Engine,
    *,
    suite: str = "bookworm",
    tag: str | None = None,
    epoch: int | None = None,
    mirror: str | None = None,
    security_mirror: str | None = None,
    on_line: LineCallback | None = None,
) -> BaseImage:
    """Make the Debian `suite` base image with `engine`; tag it (imagesmith/debian:SUITE).

    `make_rootfs`, then `build_base` on its tarball. Temporary files are always removed.
    """
    source_date_epoch = _epoch_for(suite, epoch)
    cache_budget()  # a malformed IMAGESMITH_CACHE_MAX fails now, not after the build
    with tempfile.TemporaryDirectory(prefix="imagesmith-base-") as tmp:
        context = Path(tmp)
        digest = make_rootfs(
            context / "rootfs.tar",
            suite=suite,
            epoch=source_date_epoch,
            mirror=mirror,
            security_mirror=security_mirror,
            on_line=on_line,
        )
        return _build(engine, context, suite, source_date_epoch, digest, tag, on_line)


def build_base(
    engine: Engine,
    rootfs: Path,
    *,
    suite: str = "bookworm",
    tag: str | None = None,
    epoch: int | None = None,
    on_line: LineCallback | None = None,
) -> BaseImage:
    """Build the base image from a rootfs tarball `make_rootfs` wrote earlier; tag it.

    `suite` and `epoch` must be the ones the tarball was made with (they become labels).
    """
    source_date_epoch = _epoch_for(suite, epoch)
    cache_budget()  # a malformed IMAGESMITH_CACHE_MAX fails now, not after the build
    if not rootfs.is_file():
        raise InputError(f"no root filesystem tarball at {rootfs}")
    with tempfile.TemporaryDirectory(prefix="imagesmith-base-") as tmp:
        context = Path(tmp)
        try:
            os.link(rootfs, context / "rootfs.tar")
        except OSError:
            shutil.copyfile(rootfs, context / "rootfs.tar")
        digest = _sha256(context / "rootfs.tar")
        return _build(engine, context, suite, source_date_epoch, digest, tag, on_line)


def _build(
    engine: Engine,
    context: Path,
    suite: str,
    epoch: int,
    digest: str,
    tag: str | None,
    on_line: LineCallback | None,
) -> BaseImage:
    """`Containerfile.base` around `context/rootfs.tar`, labelled with suite, epoch, digest.

    The result is made canonical before it is tagged, so the same root filesystem gives
    the same image ID on Docker and on podman, and a lock pinning it works on both.
    """
    from imagesmith.pipeline.canonical_build import make_canonical

    ref = tag or default_tag(suite)
    (context / "Containerfile").write_text(containerfile_text())
    built_id = engine.build(
        context=context,
        # Labels the base carries, so a rebuild can be compared with it.
        labels={BASE_SUITE: suite, BASE_EPOCH: str(epoch), BASE_ROOTFS: digest},
        on_line=on_line,
    )
    work = context / "canonical"
    work.mkdir()
    canonical = make_canonical(
        engine, built_id, epoch=epoch, workdir=work, on_line=on_line or _quiet
    )
    engine.tag(canonical.image_id, ref)
    return BaseImage(ref=ref, image_id=canonical.image_id, rootfs_sha256=digest)


def _quiet(_: str) -> None:
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _clean_env() -> dict[str, str]:
    """The environment for mmdebstrap: ours, without locale settings that vary by machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
    env["LANG"] = "C.UTF-8"
    return env
