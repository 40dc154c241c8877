"""The apt closure on the host: every .deb the lock pins, fetched, checked and cached.

Like the wheels, the .debs are fetched on the host and checked against the lock's
sha256 before the build sees them; the image's apt step then installs exactly those
files from the build context and reaches no network (`imagesmith.render.containerfile`).

Places tried for each .deb, in order: the host cache (`~/.cache/imagesmith/debs/SHA256`,
content-addressed, so any lock that pins the same file shares it); the lock's input
archive in the lab's registry (`imagesmith.inputs.archive`), when `[registry] repository`
is set; the archive the lock resolved it from (`source` + `path`); snapshot.debian.org
when the lock has an `[apt] snapshot`. Downloads run in parallel, resume a `.partial`
file left by an interrupted one (HTTP Range), and are hashed as they stream: a file that
does not match stops the build. A cached file that no longer matches is fetched again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import os
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from imagesmith.engine.base import disk_full_message
from imagesmith.errors import LockError, OperationError
from imagesmith.inputs.httpget import Fetcher, HTTPStatusError
from imagesmith.model.lock import AptLock, AptPackage
from imagesmith.progress import LineCallback

if TYPE_CHECKING:
    from imagesmith.inputs.archive import Archive

SNAPSHOT_ARCHIVE = "http://snapshot.debian.org/archive"
_WORKERS = 8
_CHUNK = 1 << 20
_TIMEOUT = 30


def deb_cache() -> Path:
    from imagesmith.inputs.context import cache_dir

    return cache_dir() / "debs"


class HashMismatch(OperationError):
    """A downloaded .deb is not the one the lock pins."""


@dataclass(frozen=True)
class _Missing:
    package: AptPackage
    tried: tuple[str, ...]
    """Each place looked, with why it did not serve the file."""


def places(
    package: AptPackage, snapshot: str | None, snapshot_archive: str = SNAPSHOT_ARCHIVE
) -> list[str]:
    """The URLs a .deb is fetched from, in order (the host cache comes before them all)."""
    assert package.path is not None and package.source is not None
    urls = [f"{package.source}/{package.path}"]
    if snapshot:
        for archive in ("debian", "debian-security"):
            url = f"{snapshot_archive}/{archive}/{snapshot}/{package.path}"
            if url not in urls:
                urls.append(url)
    return urls


def _check_lock(apt: AptLock) -> None:
    problems = []
    for p in apt.packages:
        if not p.fetchable:
            problems.append(
                f"env.lock: apt package {p.name} {p.version} does not say where its .deb lives "
                "(a lock from an older imagesmith); run `imagesmith lock` to pin it again"
            )
        elif p.path is not None and (p.path.startswith("/") or ".." in p.path.split("/")):
            problems.append(f"env.lock: apt package {p.name}: unsafe path {p.path!r}")
    if problems:
        raise LockError("\n".join(problems))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_debs(
    apt: AptLock,
    *,
    on_line: LineCallback | None = None,
    cache: Path | None = None,
    workers: int = _WORKERS,
    snapshot_archive: str = SNAPSHOT_ARCHIVE,
    archive: Archive | None = None,
) -> dict[str, Path]:
    """Every .deb the lock pins, checked against its sha256: {package name: cached file}.

    Raises HashMismatch when a download is not the file the lock pins, OperationError
    listing each package no place had (and every place looked), LockError for a lock
    that does not say where its .debs live. Progress goes to `on_line` from the calling
    thread only. `archive`: the lock's input archive in the lab's registry, looked in
    after the host cache and before the archives the lock names.
    """
    say = on_line or (lambda _: None)
    _check_lock(apt)
    root = cache or deb_cache()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OperationError(f"apt: cannot write {root}: {exc.strerror or exc}") from None
    packages = sorted(apt.packages, key=lambda p: p.name)
    fetcher = Fetcher(timeout=_TIMEOUT)
    with (
        contextlib.closing(fetcher),
        ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="debs") as pool,
    ):
        found, todo, corrupted = _from_cache(pool, root, packages, say)
        if todo:
            size = sum(p.size or 0 for p in todo)
            say(f"apt: fetching {len(todo)} .debs ({size / 1e6:.1f} MB) on the host")
            started = time.monotonic()
            urls = [places(p, apt.snapshot, snapshot_archive) for p in todo]
            found.update(_fetch_all(pool, fetcher, root, todo, urls, archive, corrupted))
            say(f"apt: fetched {len(todo)} .debs in {time.monotonic() - started:.1f} s")
    return {p.name: found[p.name] for p in packages}


def _from_cache(
    pool: ThreadPoolExecutor, root: Path, packages: list[AptPackage], say: LineCallback
) -> tuple[dict[str, Path], list[AptPackage], set[str]]:
    """({package name: cached file} for those the cache holds intact, the packages to
    fetch, the names of those whose cached file was corrupt)."""
    found: dict[str, Path] = {}
    # The cache first: each file hashed again (a disk can rot; an edit must not pass).
    checked = list(pool.map(lambda p: _cached(root, p), packages))
    todo: list[AptPackage] = []
    corrupted: set[str] = set()
    for package, (path, corrupt) in zip(packages, checked, strict=True):
        if path is not None:
            found[package.name] = path
            continue
        if corrupt:
            corrupted.add(package.name)
            say(
                f"cache: .deb {package.name} {package.version} sha256:{package.sha256} "
                "was corrupt; fetching it again"
            )
        todo.append(package)
    return found, todo, corrupted


def _fetch_all(
    pool: ThreadPoolExecutor,
    fetcher: Fetcher,
    root: Path,
    todo: list[AptPackage],
    urls: list[list[str]],
    archive: Archive | None,
    corrupted: set[str],
) -> dict[str, Path]:
    """{package name: cached file} for each of `todo`, fetched from the places `urls`
    names for it; HashMismatch or OperationError (every package no place had) once all
    are done."""
    futures = [
        pool.submit(_fetch, fetcher, root, p, u, archive) for p, u in zip(todo, urls, strict=True)
    ]
    fetched: dict[str, Path] = {}
    missing: list[_Missing] = []
    mismatch: HashMismatch | None = None
    for package, future in zip(todo, futures, strict=True):
        try:
            result = future.result()
        except HashMismatch as exc:
            mismatch = mismatch or exc
            continue
        if isinstance(result, _Missing):
            missing.append(result)
        else:
            fetched[package.name] = result
    if mismatch is not None:
        raise mismatch
    if missing:
        raise OperationError(
            "\n".join(_missing_line(m, root, m.package.name in corrupted) for m in missing)
        )
    return fetched


def _missing_line(missing: _Missing, root: Path, corrupt: bool) -> str:
    p = missing.package
    state = "corrupt: removed" if corrupt else "absent"
    looked = "; ".join([f"host cache {root / str(p.sha256)} ({state})", *missing.tried])
    return f"apt: {p.name} {p.version} ({p.path}) not found; looked in: {looked}"


def _cached(root: Path, package: AptPackage) -> tuple[Path | None, bool]:
    """(the cached file when it matches, whether a cached file was there but corrupt)."""
    path = root / str(package.sha256)
    try:
        if _sha256_file(path) == package.sha256:
            return path, False
    except FileNotFoundError:
        return None, False
    except OSError:
        pass
    with contextlib.suppress(OSError):
        path.unlink()
    return None, True


def _fetch(
    fetcher: Fetcher,
    root: Path,
    package: AptPackage,
    urls: list[str],
    archive: Archive | None = None,
) -> Path | _Missing:
    """Download one .deb into the cache; _Missing when no place has it."""
    final = root / str(package.sha256)
    partial = final.with_name(final.name + ".partial")
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _write_error(root, exc) from None
    with os.fdopen(fd, "r+b") as out:
        # One process per file: another build fetching it too waits, then finds it done.
        fcntl.flock(out.fileno(), fcntl.LOCK_EX)
        if final.is_file() and _cached(root, package)[0] is not None:
            if not os.fstat(out.fileno()).st_size:
                partial.unlink(missing_ok=True)
            return final
        tried = []
        if archive is not None:
            reason = archive.fetch(f"sha256:{package.sha256}", final, mode=0o644)
            if reason is None:
                if not os.fstat(out.fileno()).st_size:
                    partial.unlink(missing_ok=True)
                return final
            tried.append(reason)
        for url in urls:
            try:
                reason = _download(fetcher, url, out, package)
            except HashMismatch:
                partial.unlink(missing_ok=True)
                raise
            if reason is None:
                os.chmod(partial, 0o644)  # the build's apt reads it as user _apt
                os.replace(partial, final)
                return final
            tried.append(f"{url} ({reason})")
        return _Missing(package, tuple(tried))


def _download(fetcher: Fetcher, url: str, out: BinaryIO, package: AptPackage) -> str | None:
    """Fetch `url` into `out`, resuming what it holds; None when done, else why not.

    Raises HashMismatch when the complete file is not the one the lock pins.
    """
    digest = hashlib.sha256()
    out.seek(0)
    while chunk := out.read(_CHUNK):
        digest.update(chunk)
    have = out.tell()
    if have and digest.hexdigest() == package.sha256:  # complete, but never renamed
        return None
    headers = {"User-Agent": "imagesmith"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with fetcher.get(url, headers) as response:
            if have and response.status != 206:  # the server sends it whole: start over
                digest, have = hashlib.sha256(), 0
                out.seek(0)
                out.truncate()
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            # http.client ends a body cut short as if it were complete: what it still
            # expected says whether it was (None: the server sent no length).
            missing: int | None = response.length
    except HTTPStatusError as exc:
        if exc.code == 416 and have:  # the partial file is longer than the real one
            return _start_over(fetcher, url, out, package)
        return str(exc)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise OperationError(f"apt: {disk_full_message(str(deb_cache()))}") from None
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (
                f"this host does not trust its HTTPS certificate ({exc.verify_message}: add "
                "its CA to the host's, or name a bundle with SSL_CERT_FILE)"
            )
        return f"cannot fetch: {exc}"
    finally:
        out.flush()
        os.fsync(out.fileno())
    size = out.tell()
    if (missing or 0) > 0 or (missing is None and size < (package.size or 0)):
        # Kept, to resume from.
        return f"cannot fetch: the connection closed after {size} of {package.size} bytes"
    actual = digest.hexdigest()
    if actual != package.sha256:
        if have:  # the bytes kept from before may be the bad ones: once more, from zero
            return _start_over(fetcher, url, out, package)
        raise HashMismatch(
            f"apt: {package.name} {package.version} from {url} does not match env.lock: "
            f"expected sha256:{package.sha256}, got sha256:{actual}"
        )
    return None


def _start_over(fetcher: Fetcher, url: str, out: BinaryIO, package: AptPackage) -> str | None:
    out.seek(0)
    out.truncate()
    return _download(fetcher, url, out, package)


def _write_error(root: Path, exc: OSError) -> OperationError:
    if exc.errno == errno.ENOSPC:
        return OperationError(f"apt: {disk_full_message(str(root))}")
    return OperationError(f"apt: cannot write {root}: {exc.strerror or exc}")


def context_names(apt: AptLock) -> dict[str, str]:
    """{package name: the file name its .deb has in the build context}."""
    return {p.name: Path(str(p.path)).name for p in apt.packages}
