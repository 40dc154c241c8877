"""Paths inside a layer: how they are cleaned and ordered, which are whiteouts, and which
are the engine's noise (mount-point placeholders, volatile apt/dpkg files).

The rules are described in docs/canonical.md."""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
from collections.abc import Callable, Iterator

from imagesmith.errors import InputError

#: Zero-size files the runtime bind-mounts over; removed from layers above the first.
PLACEHOLDER_FILES = frozenset(
    {"etc/hostname", "etc/hosts", "etc/resolv.conf", "run/.containerenv", ".dockerenv"}
)
#: Runtime mount-point directories; removed from layers above the first when empty there.
MOUNTPOINT_DIRS = frozenset({"proc", "sys", "dev"})
#: Files that apt, dpkg and ldconfig rewrite with run-dependent bytes on every install
#: (seen varying between two ``--no-cache`` builds of the same apt step on docker 20.10
#: and podman 4.3). For `canonicalize`'s opt-in ``drop_paths``; better removed in the
#: Containerfile's own RUN step (``rm -f`` / ``rm -rf`` of the same paths).
VOLATILE_PATHS = (
    "var/cache/apt/*.bin",
    "var/cache/ldconfig/aux-cache",
    "var/log/apt/*",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
)

#: The prefix of a whiteout: ``D/.wh.NAME`` hides ``D/NAME`` of the layers below.
WHITEOUT = ".wh."
#: The opaque marker: ``D/.wh..wh..opq`` hides everything the layers below hold in ``D``.
OPAQUE = ".wh..wh..opq"


def clean_path(name: str, what: str) -> str | None:
    """Archive-relative path without ``./``, leading or trailing ``/``; None for the root."""
    p = name
    while p.startswith("./"):
        p = p[2:]
    p = p.strip("/")
    if p in ("", "."):
        return None
    parts = [c for c in p.split("/") if c not in ("", ".")]
    if ".." in parts:
        raise InputError(f"{what}: unsafe path {name!r} in layer")
    return "/".join(parts) or None


def _rank(component: str) -> int:
    if component == OPAQUE:
        return 0
    if component.startswith(WHITEOUT):
        return 1
    return 2


def sort_key(path: str) -> tuple[tuple[int, bytes], ...]:
    """Component by component, so parents come first; in a directory the opaque marker,
    then whiteouts, then other names, each in byte order."""
    return tuple((_rank(c), c.encode("utf-8", "surrogateescape")) for c in path.split("/"))


def is_whiteout(path: str) -> bool:
    """Whether `path` is a whiteout or an opaque marker."""
    return posixpath.basename(path).startswith(WHITEOUT)


@functools.lru_cache(maxsize=8)
def path_matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a path matches any of the fnmatch `patterns` (one compiled expression)."""
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")
    return lambda path: regex.match(path) is not None


def ancestors(path: str) -> Iterator[str]:
    """The directories above `path`, nearest first (``a/b/c`` -> ``a/b``, ``a``)."""
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        yield path
