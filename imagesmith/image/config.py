"""The canonical image config: what is kept of the engine's config, ``Env`` sorted, times
set to the epoch, one history entry per layer with ``created_by`` spelled alike for docker
and podman. See docs/canonical.md."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from imagesmith.errors import InputError

#: Labels an engine adds by itself.
BUILDER_LABELS = frozenset({"io.buildah.version"})

_CONFIG_KEYS = (
    "Cmd",
    "Entrypoint",
    "Env",
    "ExposedPorts",
    "Healthcheck",
    "Labels",
    "OnBuild",
    "Shell",
    "StopSignal",
    "User",
    "Volumes",
    "WorkingDir",
)
_TOP_KEYS = ("architecture", "os", "variant", "os.version", "os.features", "author")


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_NOP = re.compile(r"^/bin/sh -c #\(nop\)\s*")
_CONTENT_HASH = re.compile(r"\b(file|dir|multi):[0-9a-f]{64}\b")
_BUILD_ARGS = re.compile(r"^\|(\d+) ")


def normalize_created_by(created_by: str) -> str:
    """One spelling of a history ``created_by`` for docker (classic and BuildKit) and podman.

    >>> normalize_created_by("/bin/sh -c #(nop)  CMD [\\"bash\\"]")
    'CMD ["bash"]'
    >>> normalize_created_by("/bin/sh -c apt-get update")
    'RUN apt-get update'
    """
    s = created_by.strip()
    if s.endswith("# buildkit"):
        s = s[: -len("# buildkit")].rstrip()
    m = _BUILD_ARGS.match(s)
    if m:  # docker's classic builder prefixes RUN with "|N K=V ..." for build args
        parts = s.split(" ")
        s = " ".join(parts[1 + int(m.group(1)) :])
    m2 = _NOP.match(s)
    if m2:
        s = " ".join(s[m2.end() :].split())
    elif s.startswith("/bin/sh -c "):
        s = "RUN " + s[len("/bin/sh -c ") :]
    elif s.startswith("RUN /bin/sh -c "):
        s = "RUN " + s[len("RUN /bin/sh -c ") :]
    return _CONTENT_HASH.sub(r"\1", s)


def layer_created_by(raw: Mapping[str, Any], layer_count: int) -> list[str | None]:
    """Each layer's normalised ``created_by``; all None when the history does not line up
    with the layers."""
    history = raw.get("history")
    if not isinstance(history, list):
        return [None] * layer_count
    non_empty = [h for h in history if isinstance(h, dict) and not h.get("empty_layer")]
    if len(non_empty) != layer_count:
        return [None] * layer_count
    out: list[str | None] = []
    for h in non_empty:
        cb = h.get("created_by")
        out.append(normalize_created_by(cb) if isinstance(cb, str) and cb.strip() else None)
    return out


def _nonempty(value: object) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def canonical_config(
    raw: Mapping[str, Any],
    *,
    diff_ids: Sequence[str],
    created_by: Sequence[str | None],
    epoch: int,
    what: str = "image",
) -> dict[str, Any]:
    """The canonical config for `raw` with new layers (the rules: docs/canonical.md)."""
    for key in ("architecture", "os"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise InputError(f"{what}: image config has no {key!r}")
    out: dict[str, Any] = {k: raw[k] for k in _TOP_KEYS if _nonempty(raw.get(k))}
    inner = raw.get("config") or {}
    if not isinstance(inner, dict):
        raise InputError(f"{what}: image config field 'config' is not an object")
    cfg: dict[str, Any] = {}
    for key in _CONFIG_KEYS:
        value = inner.get(key)
        if key == "Labels" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in BUILDER_LABELS}
        if key == "Env" and isinstance(value, list):
            # Names are unique once built, so order carries no meaning; the engines differ
            # in it (Docker overwrites PATH in place, podman moves it to the end).
            value = sorted(value, key=lambda item: str(item).partition("=")[0])
        if _nonempty(value):
            cfg[key] = value
    if cfg:
        out["config"] = cfg
    created = rfc3339(epoch)
    out["created"] = created
    history: list[dict[str, Any]] = []
    for cb in created_by:
        entry: dict[str, Any] = {"created": created}
        if cb:
            entry["created_by"] = cb
        history.append(entry)
    out["history"] = history
    out["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    return out
