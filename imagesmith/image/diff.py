"""`diff_archives`: why two images are not the same, one line per difference (config
fields, layer counts, and per layer the files added, removed or changed)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesmith.errors import InputError
from imagesmith.image.config import rfc3339
from imagesmith.image.oci import ImageSource, open_image
from imagesmith.image.paths import sort_key
from imagesmith.image.tar_entries import entry_type, kept_xattrs, read_entries


@dataclass(frozen=True)
class _Facts:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    sha256: str
    link: str
    device: tuple[int, int]
    xattrs: tuple[tuple[str, str], ...]


_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.DIRTYPE: "directory",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
}


def _index_layer(src: ImageSource, i: int) -> dict[str, _Facts]:
    what = f"{src.description} layer {i}"
    facts: dict[str, _Facts] = {}
    stream = src.open_layer(i)
    try:
        with tarfile.open(fileobj=stream, mode="r:", encoding="utf-8") as tar:
            for path, m in read_entries(tar, what).items():
                digest = ""
                if m.isreg():
                    h = hashlib.sha256()
                    f = tar.extractfile(m)
                    assert f is not None
                    with f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                    digest = h.hexdigest()
                facts[path] = _Facts(
                    kind=_KINDS[entry_type(m)],
                    mode=m.mode & 0o7777,
                    uid=m.uid,
                    gid=m.gid,
                    mtime=int(m.mtime),
                    size=m.size if m.isreg() else 0,
                    sha256=digest,
                    link=m.linkname if (m.issym() or m.islnk()) else "",
                    device=(m.devmajor, m.devminor) if (m.ischr() or m.isblk()) else (0, 0),
                    xattrs=tuple(kept_xattrs(m).items()),
                )
    except tarfile.TarError as exc:
        raise InputError(f"{what} is not a valid tar: {exc}") from exc
    finally:
        stream.close()
    return facts


def _describe(f: _Facts) -> str:
    if f.kind == "file":
        return f"file, {f.size} bytes"
    if f.link:
        return f"{f.kind} -> {f.link}"
    return f.kind


def _facts_diff(a: _Facts, b: _Facts) -> list[str]:
    out: list[str] = []
    if a.kind != b.kind:
        out.append(f"type {_describe(a)} != {_describe(b)}")
    elif a.sha256 != b.sha256:
        out.append(f"content {a.sha256[:12]} ({a.size} bytes) != {b.sha256[:12]} ({b.size} bytes)")
    if a.mode != b.mode:
        out.append(f"mode {a.mode:04o} != {b.mode:04o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        out.append(f"owner {a.uid}:{a.gid} != {b.uid}:{b.gid}")
    if a.mtime != b.mtime:
        out.append(f"mtime {_iso(a.mtime)} != {_iso(b.mtime)}")
    if a.kind == b.kind and a.link != b.link:
        out.append(f"link target {a.link!r} != {b.link!r}")
    if a.device != b.device:
        out.append(f"device {a.device[0]},{a.device[1]} != {b.device[0]},{b.device[1]}")
    if a.xattrs != b.xattrs:
        out.append(f"xattrs {dict(a.xattrs)} != {dict(b.xattrs)}")
    return out


def _iso(t: int) -> str:
    try:
        return rfc3339(t)
    except (OverflowError, OSError, ValueError):
        return str(t)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not obj and prefix:
            out[prefix] = obj
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    fa = {k: v for k, v in _flatten(a).items() if not k.startswith("rootfs.diff_ids")}
    fb = {k: v for k, v in _flatten(b).items() if not k.startswith("rootfs.diff_ids")}
    lines: list[str] = []
    for key in sorted(fa.keys() | fb.keys()):
        if key not in fb:
            lines.append(f"config: {key}: only in a ({_short(fa[key])})")
        elif key not in fa:
            lines.append(f"config: {key}: only in b ({_short(fb[key])})")
        elif fa[key] != fb[key]:
            lines.append(f"config: {key}: {_short(fa[key])} != {_short(fb[key])}")
    return lines


def _diff_ids(cfg: Mapping[str, Any]) -> list[str]:
    rootfs = cfg.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    return [str(x) for x in ids] if isinstance(ids, list) else []


def diff_archives(a: Path, b: Path, *, max_per_layer: int = 100) -> list[str]:
    """Explain how two images differ, one human-readable line per difference.

    `a` and `b` can each be anything `canonicalize` reads (docker-archive, OCI
    archive, OCI layout directory). Reports config fields (dotted paths, e.g.
    ``config.config.Env``), layer counts, and per differing layer the files
    added, removed, or changed in content, type, mode, owner, mtime, link target,
    device numbers or xattrs (at most `max_per_layer` lines per layer). An empty
    list means the images are identical in content and metadata.
    """
    with contextlib.ExitStack() as stack:
        sa = stack.enter_context(open_image(Path(a)))
        sb = stack.enter_context(open_image(Path(b)))
        if sa.manifest is not None and sa.manifest == sb.manifest:
            return []
        ca, cb = sa.config_json(), sb.config_json()
        lines = [] if sa.config == sb.config else _config_diff(ca, cb)
        na, nb = len(sa.layer_names), len(sb.layer_names)
        if na != nb:
            lines.append(f"layers: a has {na}, b has {nb}")
        ida, idb = _diff_ids(ca), _diff_ids(cb)
        for i in range(max(na, nb)):
            if i >= na or i >= nb:
                side, src = ("b", sb) if i >= na else ("a", sa)
                entries = len(_index_layer(src, i))
                lines.append(f"layer {i}: only in {side} ({entries} entries)")
                continue
            same_ids = i < len(ida) and i < len(idb) and ida[i] == idb[i]
            if same_ids:
                da, db = sa.layer_digests[i], sb.layer_digests[i]
                if da is not None and db is not None and da != db:
                    lines.append(f"layer {i}: same content, different compression ({da} != {db})")
                continue
            lines.extend(_layer_diff(i, _index_layer(sa, i), _index_layer(sb, i), max_per_layer))
    return lines


def _layer_diff(i: int, fa: dict[str, _Facts], fb: dict[str, _Facts], limit: int) -> list[str]:
    found: list[str] = []
    for path in sorted(fa.keys() | fb.keys(), key=sort_key):
        if path not in fb:
            found.append(f"layer {i}: {path}: only in a ({_describe(fa[path])})")
        elif path not in fa:
            found.append(f"layer {i}: {path}: only in b ({_describe(fb[path])})")
        else:
            what = _facts_diff(fa[path], fb[path])
            if what:
                found.append(f"layer {i}: {path}: {'; '.join(what)}")
    if not found:
        return [f"layer {i}: same files, different tar bytes (entry order or header encoding)"]
    if len(found) > limit:
        extra = len(found) - limit
        found = [*found[:limit], f"layer {i}: ... and {extra} more differences"]
    return found
