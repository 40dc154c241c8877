"""Lock -> Containerfile: a pure function, same lock, same bytes, on any machine.

Stages, ordered by how often their inputs change:
  system  the pinned base, the whole apt closure (installed once, from the .debs the host
          fetched and checked: `COPY apt/`, then one RUN with no index and no network)
          and the user;
  final   system + /opt/venv + the spec's files, commands, env and labels.
The venv arrives as one ADD of the tree the host installed from the hashed wheels
(`imagesmith.inputs.venv`, a tar the engine extracts), then one RUN makes the venv's own files
and the bytecode; no pip runs in the image and no wheel file enters a layer. A change to
the Python pins reruns those two steps only; apt stays cached.

SOURCE_DATE_EPOCH is written into the commands that need it (`export`), not passed as a
build argument: a stage that opens with `ARG` has a first step every spec on the same
base shares, and podman 4.3 serves the oldest of such look-alike cache entries, which
then has none of this spec's later steps.
"""

from __future__ import annotations

import binascii
import json
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from imagesmith import __version__
from imagesmith.errors import InputError, LockError
from imagesmith.model import labels
from imagesmith.model.lock import Lock, parse_lock

VENV = "/opt/venv"
CONTEXT_PYTHON = "python"
CONTEXT_COPY = "copy"
CONTEXT_APT = "apt"
#: Where the system stage's COPY puts the .debs; removed again in the same stage's RUN.
APT_FOLDER = "/.imagesmith-apt"
#: What the canonical form leaves out of every layer above the base (image/paths.py,
#: docs/canonical.md): the COPY layer of the .debs, and the RUN layer's whiteout for their
#: folder.
APT_DROP_PATHS = (APT_FOLDER.lstrip("/"), APT_FOLDER.lstrip("/") + "/*")

# Files apt, dpkg and ldconfig write that differ from one build to the next.
_APT_NOISE = (
    "/var/lib/apt/lists/*",
    "/var/cache/apt/*.bin",
    "/var/cache/apt/archives/*.deb",
    "/var/cache/apt/archives/partial",
    "/var/cache/debconf/*-old",
    "/var/lib/dpkg/*-old",
    "/var/log/apt",
    "/var/log/dpkg.log",
    "/var/log/alternatives.log",
    "/var/cache/ldconfig/aux-cache",
)
# Same for useradd (lastlog/faillog are sparse files keyed by uid; backups of the tables).
_USER_NOISE = (
    "/etc/group-",
    "/etc/gshadow-",
    "/etc/passwd-",
    "/etc/shadow-",
    "/etc/subgid-",
    "/etc/subuid-",
    "/var/log/faillog",
    "/var/log/lastlog",
)

# What may stand unquoted on a shell line: no expansion, no word splitting, no globbing.
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-][A-Za-z0-9_@%+=:,./~-]*$")


def quote_value(value: str) -> str:
    """A Containerfile ENV/LABEL value that reads back as `value`, byte for byte.

    Inside double quotes the builder unescapes only \\\\, \\" and \\$; everything else,
    unicode included, passes through literally.
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    if len(escaped) > _MAX_CHUNK and "\\" not in escaped:
        # Builders read at most 64 KiB a physical line (Docker refuses more, podman 4.3
        # silently drops the instruction); a backslash-newline joins lines even inside
        # quotes, so a long value (the embedded lock) is split without changing it.
        chunks = [escaped[i : i + _MAX_CHUNK] for i in range(0, len(escaped), _MAX_CHUNK)]
        escaped = "\\\n".join(chunks)
    return f'"{escaped}"'


_MAX_CHUNK = 16384


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def needs_build_arg(value: str) -> bool:
    """Whether a Containerfile line cannot spell `value`: newlines, tabs..., or a value too
    long for one line that has escapes (which quote_value cannot split safely)."""
    if _CONTROL.search(value) is not None:
        return True
    return len(value) > _MAX_CHUNK // 2 and any(c in value for c in '\\"$')


def _env_arg(name: str) -> str:
    return f"IMAGESMITH_ENV_{name}"


def _label_arg(index: int) -> str:
    return f"IMAGESMITH_LABEL_{index}"


def build_args(lock: Lock) -> dict[str, str]:
    """The build arguments the Containerfile expects, all taken from the lock.

    A value a Containerfile line cannot spell (a newline, a tab) travels as a build
    argument and is expanded by ENV/LABEL, which never re-parses what it expands.
    """
    args: dict[str, str] = {}
    spec = lock.spec
    for name, value in sorted(spec.env.items()):
        if needs_build_arg(value):
            args[_env_arg(name)] = value
    for index, (_, value) in enumerate(sorted(image_labels(lock).items())):
        if needs_build_arg(value):
            args[_label_arg(index)] = value
    return args


def exec_form(words: Iterable[str]) -> str:
    return json.dumps(list(words), ensure_ascii=False)


def _continued(lines: list[str], indent: str = "    ") -> str:
    return (" \\\n" + indent).join(lines)


def _shell_word(word: str) -> str:
    if not _SAFE_WORD.match(word):
        raise LockError(
            f"env.lock: refusing to put {word!r} on a shell line; run `imagesmith lock`"
        )
    return word


def embedded_lock(lock: Lock) -> str:
    """The lock, compressed into a label value an image carries (`imagesmith inspect`)."""
    # binascii, not base64 (the same bytes): base64's import is 1 ms of `render`.
    packed = zlib.compress(lock.to_toml().encode("utf-8"), 9)
    return binascii.b2a_base64(packed, newline=False).decode("ascii")


def decode_embedded_lock(value: str) -> str:
    return zlib.decompress(binascii.a2b_base64(value)).decode("utf-8")


def lock_in_image(image: str, found: Mapping[str, str], *, path: Path) -> tuple[str, Lock]:
    """(text, lock) of the lock `image` carries in its labels `found`, under today's label
    or the one images built before 0.6.0 carry; `path` is where the lock is taken to be."""
    embedded = labels.embedded_lock_label(found)
    if embedded is None:
        raise InputError(f"{image} was not built by imagesmith (it has no {labels.LOCK} label)")
    name, value = embedded
    try:
        text = decode_embedded_lock(value)
    except (ValueError, UnicodeDecodeError, zlib.error):
        raise InputError(f"{image}: its {name} label is damaged") from None
    return text, parse_lock(text, path=path)


def content_tag(lock: Lock) -> str:
    """The tag that the same lock always maps to."""
    return "lock-" + lock.lock_hash.removeprefix("sha256:")[:16]


def image_labels(lock: Lock) -> dict[str, str]:
    spec = lock.spec
    traced = {
        "org.opencontainers.image.title": spec.name,
        "org.opencontainers.image.version": spec.version,
        "org.opencontainers.image.base.name": lock.base.reference,
        "org.opencontainers.image.base.digest": lock.base.digest,
        labels.SPEC_HASH: lock.spec_hash,
        labels.LOCK_HASH: lock.lock_hash,
        labels.LOCK: embedded_lock(lock),
    }
    # The spec's own labels may not overwrite the ones that trace the image to its lock.
    return {**dict(spec.image.labels), **traced}


def _system_stage(lock: Lock, built: str | None, epoch: int) -> list[str]:
    if built is not None:
        return [f"FROM {built} AS system"]
    spec = lock.spec
    out = [f"FROM {lock.base.pinned} AS system"]
    if lock.base.user is not None:
        # A base that runs as another user (jupyter's images: 1000): apt, the venv and the
        # spec's run steps need root; the image's own USER comes at the end.
        out.append("USER 0:0")
    # Maintainer scripts read it: Python's py_compile writes hash-based .pyc files.
    install = [f"export SOURCE_DATE_EPOCH={epoch}"]
    packages = sorted(lock.apt.packages, key=lambda p: p.name)
    if packages:
        unfetchable = [p.name for p in packages if not p.fetchable]
        if unfetchable:
            raise LockError(
                f"env.lock does not say where the .debs of {', '.join(unfetchable)} live "
                "(a lock from an older imagesmith); run `imagesmith lock` to pin them again"
            )
        # The .debs the host fetched and checked (imagesmith.inputs.debs); the layer this COPY
        # makes holds nothing else and is gone from the canonical image (APT_DROP_PATHS).
        out.append(f"COPY {CONTEXT_APT}/ {APT_FOLDER}/")
        files = [f"{APT_FOLDER}/{_shell_word(p.file_name)}" for p in packages]
        dependencies = [_shell_word(p.name) for p in packages if not p.requested]
        install += [
            # Exactly these files, no index and no network: apt only orders and unpacks.
            # --allow-downgrades: the spec may pin an older version than the base carries.
            # --force-unsafe-io: no fsync per file; the engine commits the layer at the end,
            # and a build that dies is thrown away. The same files, a second sooner.
            "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
            "--allow-downgrades -o Dpkg::Options::=--force-unsafe-io \\\n        "
            + " \\\n        ".join(files),
        ]
        if dependencies:
            # Installed from files, every package is marked manual: give the dependencies
            # their usual mark, so that `apt autoremove` treats them as apt would have.
            install.append(
                "apt-mark auto \\\n        " + " \\\n        ".join(dependencies) + " >/dev/null"
            )
        install += [
            f"rm -rf {APT_FOLDER}",
            "apt-get clean",
            "rm -rf " + " ".join(_APT_NOISE),
        ]
    uid, gid = spec.image.uid, spec.image.group_id
    user = _shell_word(spec.image.user)
    install += [
        f"groupadd --gid {gid} {user}",
        f"useradd --no-log-init --uid {uid} --gid {gid} --create-home --shell /bin/sh {user}",
    ]
    if spec.image.workdir:
        workdir = _shell_word(spec.image.workdir)
        install.append(f"mkdir -p {workdir} && chown {uid}:{gid} {workdir}")
    install.append("rm -f " + " ".join(_USER_NOISE))
    out.append("RUN " + " \\\n && ".join(install))
    return out


def system_stage_text(lock: Lock, epoch: int) -> str:
    """The system stage's lines of the Containerfile (base, apt closure, user): two locks
    with the same text build the same stage (`imagesmith.pipeline.system_stage`)."""
    return "\n".join(_system_stage(lock, None, epoch))


def _python_steps(lock: Lock) -> list[str]:
    if lock.python is None:
        return []
    version = _shell_word(lock.python.version)
    # ADD extracts the host-installed tree (one tar, see context.python_tree).
    steps = [f"ADD {CONTEXT_PYTHON}/venv.tar.gz {VENV}/"] if lock.python.packages else []
    steps.append(
        "RUN "
        + " \\\n && ".join(
            [
                # The tree holds site-packages for the lock's Python; another would not
                # see it, so say so rather than build an image whose imports fail.
                "v=$(python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])' "
                "2>/dev/null || echo none)",
                f'if [ "$v" != {version} ]; then echo "imagesmith: env.lock installs '
                f"packages for Python {version}, the image's python3 is $v (run imagesmith "
                'lock --upgrade)" >&2; exit 1; fi',
                # No ensurepip: the venv holds the locked packages only.
                f"python3 -m venv --without-pip {VENV}",
                # PEP 552: hash-based .pyc files do not embed the build time.
                f"{VENV}/bin/python -m compileall -q -f -j 0 "
                f"--invalidation-mode checked-hash {VENV}",
            ]
        )
    )
    return steps


def render(lock: Lock, *, system_image: str | None = None, epoch: int | None = None) -> str:
    """The Containerfile for `lock`.

    `system_image`: the system stage already built (its image ID), used as it is; the
    build then runs the later stages only, giving the image the full file gives.
    `epoch`: SOURCE_DATE_EPOCH, when not the lock's (the environment overrides it).
    """
    epoch = lock.source_date_epoch if epoch is None else epoch
    lines = [
        f"# Generated by imagesmith {__version__} from {lock.spec_path.stem}.lock "
        f"({lock.lock_hash}). Do not edit:",
        f"# run `imagesmith render {lock.spec_path.name}` to make it again.",
        "",
        *_system_stage(lock, system_image, epoch),
        "",
        "FROM system",
        *_python_steps(lock),
        *_spec_steps(lock, epoch),
        *_image_config(lock),
    ]
    return "\n".join(lines) + "\n"


def _spec_steps(lock: Lock, epoch: int) -> list[str]:
    """The venv on PATH, then the spec's own copies and run commands."""
    spec = lock.spec
    lines = []
    if lock.python is not None:
        # ${PATH}: keep the base image's own entries (CUDA images add theirs).
        lines.append(f"ENV VIRTUAL_ENV={VENV} PATH={VENV}/bin:${{PATH}}")
    for index, item in enumerate(spec.image.copy):
        lines.append(f"COPY {exec_form([copy_context_path(index, item.src), item.dest])}")
    if spec.image.run:
        script = "\n".join(["set -e", f"export SOURCE_DATE_EPOCH={epoch}", *spec.image.run])
        lines.append(f"RUN {exec_form(['/bin/sh', '-c', script])}")
    return lines


def _image_config(lock: Lock) -> list[str]:
    """The image's settings: its environment, workdir, ports, user, labels, entrypoint, cmd."""
    image = lock.spec.image
    env = sorted(lock.spec.env.items())
    labels = sorted(image_labels(lock).items())
    # Values a Containerfile line cannot spell arrive as build args (see build_args).
    lines = [f"ARG {_env_arg(name)}" for name, value in env if needs_build_arg(value)]
    lines += [
        f"ARG {_label_arg(i)}" for i, (_, value) in enumerate(labels) if needs_build_arg(value)
    ]
    if env:
        lines.append("ENV " + _continued([_env_assignment(k, v) for k, v in env]))
    if image.workdir:
        lines.append(f"WORKDIR {image.workdir}")
    lines += [f"EXPOSE {port}/tcp" for port in sorted(image.ports)]
    lines.append(f"USER {image.uid}:{image.group_id}")
    lines.append(
        "LABEL " + _continued([_label_assignment(i, k, v) for i, (k, v) in enumerate(labels)])
    )
    if image.entrypoint is not None:
        lines.append(f"ENTRYPOINT {exec_form(image.entrypoint)}")
    if image.cmd is not None:
        lines.append(f"CMD {exec_form(image.cmd)}")
    return lines


def _env_assignment(name: str, value: str) -> str:
    if needs_build_arg(value):
        return f"{name}=${{{_env_arg(name)}}}"
    return f"{name}={quote_value(value)}"


def _label_assignment(index: int, name: str, value: str) -> str:
    if needs_build_arg(value):
        return f"{quote_value(name)}=${{{_label_arg(index)}}}"
    return f"{quote_value(name)}={quote_value(value)}"


def copy_context_path(index: int, src: str) -> str:
    """Where the build context holds the spec's `copy[index]` source."""
    name = src.rstrip("/").split("/")[-1]
    return f"{CONTEXT_COPY}/{index}/{name}"
