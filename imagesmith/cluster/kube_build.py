"""Builds as Kubernetes Jobs: each spec's build context in the registry, and the Job that
builds it there with the imagesmith builder image.

`imagesmith build SPECS --on kubernetes` locks each spec on the host, then stores in the
spec's `[registry] repository`:

- its **build context**, an OCI artifact (`application/vnd.imagesmith.build-context.v1`)
  holding one tar of the spec, its lock and the files they name (`requirements_file`,
  `[image] copy`, apt keys), named by its digest: the same files give the same digest;
- the lock's **input archive** (every `.deb` and wheel, `imagesmith.inputs.archive`) and a
  base made by `imagesmith base`, so a pod needs the registry and nothing else.

It then writes a Job (one spec) or an Indexed Job (many; pod N builds spec N) whose pod
runs the builder image (`recipes/imagesmith-builder`): `imagesmith build-from` fetches the
context by digest, builds with podman, makes the image canonical and pushes it by digest,
exactly as `build --push` does on a laptop, so the digest is the one a local build prints.

No Kubernetes API is called: the user applies the file (`kubectl apply -f`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from imagesmith.errors import InputError, RegistryError
from imagesmith.model.lock import Lock
from imagesmith.model.reference import ImageReference, parse_reference
from imagesmith.model.spec import Spec
from imagesmith.outputs.pod_spec import requests_equal_limits
from imagesmith.progress import LineCallback
from imagesmith.registry.artifacts import MANIFEST_TYPE, artifact_manifest, push_empty_config
from imagesmith.render.containerfile import content_tag
from imagesmith.userpath import as_typed

CONTEXT_TYPE = "application/vnd.imagesmith.build-context.v1"
CONTEXT_LAYER_TYPE = "application/vnd.imagesmith.build-context.v1.tar"
TITLE = "org.opencontainers.image.title"
SPEC_FILE = "dev.imagesmith.spec-file"
"""The context manifest's annotation naming the spec inside the tar (`env.toml`)."""
LOCK_HASH = "dev.imagesmith.lock-hash"
BUILDER_RECIPE = "imagesmith-builder"
BUILDER_REPOSITORY = "imagesmith-builder"
"""The builder's repository, beside the first spec's: REGISTRY/PARENT/imagesmith-builder."""
#: The biggest context `build-from` takes: specs and their copied files, not datasets.
MAX_CONTEXT_BYTES = 512 << 20
STORAGE = "/var/lib/containers"
CACHE = "/cache"
WORK = "/work"
REGISTRY_SECRET_MOUNT = "/run/secrets/imagesmith-registry"
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")
_SECRET_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
#: The build pod's capabilities: the builder's RUN steps' set (its containers.conf),
#: plus MKNOD (device nodes of a base's /dev) and SYS_ADMIN (overlay and chroot mounts).
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "SETFCAP", "SETGID",
    "SETPCAP", "SETUID", "SYS_ADMIN", "SYS_CHROOT",
)  # fmt: skip


# -- the context ------------------------------------------------------------------------


def context_members(spec: Spec) -> list[tuple[str, Path]]:
    """(name in the tar, path on disk) of every file the spec's build reads: the spec, its
    lock, the requirements file, what `[image] copy` takes, the apt keys; sorted, and
    folders walked (symlinks kept as links, as the build context keeps them)."""
    folder = spec.folder
    named = [spec.path, spec.lock_path]
    if spec.python is not None and spec.python.requirements_file:
        named.append(folder / spec.python.requirements_file)
    named += [folder / item.src for item in spec.image.copy]
    named += [folder / source.key for source in spec.apt_sources]
    members: dict[str, Path] = {}
    for path in named:
        for found in _walk(path):
            members[found.relative_to(folder).as_posix()] = found
    return sorted(members.items())


def _walk(path: Path) -> Iterator[Path]:
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.iterdir()):
            yield from _walk(child)
    else:
        yield path


def context_tar(spec: Spec) -> bytes:
    """The context as a tar: owner 0, time 0, mode 0644 or 0755; the same files, the
    same bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in context_members(spec):
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if path.is_symlink():
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                info.mode = 0o777
                tar.addfile(info)
                continue
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def context_manifest(blob_digest: str, size: int, *, spec_file: str, lock_hash: str) -> bytes:
    return artifact_manifest(
        artifact_type=CONTEXT_TYPE,
        layers=[
            {
                "mediaType": CONTEXT_LAYER_TYPE,
                "digest": blob_digest,
                "size": size,
                "annotations": {TITLE: "context.tar"},
            }
        ],
        subject=None,
        annotations={SPEC_FILE: spec_file, LOCK_HASH: lock_hash},
    )


def context_tag(lock: Lock) -> str:
    """The tag a context goes under as well (for people; the Job names the digest)."""
    return content_tag(lock) + ".context"


def repository_of(spec: Spec) -> ImageReference:
    if spec.registry_repository is None:  # refused before: see `refusals`
        raise InputError(f"{as_typed(spec.path)}: no [registry] repository")
    return parse_reference(spec.registry_repository)


def push_context(spec: Spec, lock: Lock, *, on_line: LineCallback | None = None) -> str:
    """Store the spec's context in its repository; the pinned reference (REPO@sha256:...)."""
    import tempfile

    from imagesmith.registry.client import Pusher, RegistryClient

    repository = repository_of(spec)
    data = context_tar(spec)
    blob = "sha256:" + hashlib.sha256(data).hexdigest()
    manifest = context_manifest(blob, len(data), spec_file=spec.path.name, lock_hash=lock.lock_hash)
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    pusher = Pusher(RegistryClient(repository.registry), repository.path, on_line)
    with tempfile.TemporaryDirectory(prefix="imagesmith-context-") as tmp:
        path = Path(tmp) / "context.tar"
        path.write_bytes(data)
        pusher.push_blob(blob, path)
    push_empty_config(pusher)
    confirmed = pusher.push_manifest(digest, manifest, MANIFEST_TYPE)
    if confirmed and confirmed != digest:
        raise RegistryError(
            f"{repository.registry} stored the build context as {confirmed}, expected {digest}"
        )
    pusher.push_manifest(context_tag(lock), manifest, MANIFEST_TYPE)
    return repository.with_digest(digest)


def fetch_context(text: str, into: Path) -> Path:
    """Fetch the context `REPO@sha256:...` into the folder `into`, which must not exist
    (it appears whole, or not at all); the path of the spec inside it."""
    from imagesmith.registry.client import RegistryClient

    try:
        ref = parse_reference(text)
    except ValueError as exc:
        raise InputError(f"{text}: {exc}") from None
    if ref.digest is None:
        raise InputError(f"{text}: name the build context by digest (REPO@sha256:...)")
    client = RegistryClient(ref.registry)
    served, _, body = client.manifest(ref.path, ref.digest)
    if served != ref.digest:
        raise RegistryError(f"{text}: the registry served a manifest of another digest")
    try:
        manifest = json.loads(body)
        layer = manifest["layers"][0]
        spec_file = manifest["annotations"][SPEC_FILE]
        blob, size = layer["digest"], int(layer["size"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise RegistryError(f"{text}: not an imagesmith build context") from None
    if manifest.get("artifactType") != CONTEXT_TYPE or not _safe(spec_file):
        raise RegistryError(f"{text}: not an imagesmith build context")
    if size > MAX_CONTEXT_BYTES:
        raise RegistryError(f"{text}: the context is {size} bytes, more than a context may be")
    sink = io.BytesIO()
    if not client.download_blob(ref.path, blob, sink):
        raise RegistryError(f"{text}: the registry does not hold the context's {blob[:19]}")
    part = into.with_name(f".{into.name}.partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        _extract(sink.getvalue(), part, label=text)
        if not (part / str(spec_file)).is_file():
            raise RegistryError(f"{text}: the context holds no {spec_file}")
        part.rename(into)  # whole or not at all
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return into / str(spec_file)


def _safe(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\0" not in name


def _extract(data: bytes, into: Path, *, label: str) -> None:
    """Regular files and links inside `into` only (links pointing inside it)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar.getmembers():
            target = into / member.name
            if not _safe(member.name):
                raise RegistryError(f"{label}: the context names {member.name!r}, outside it")
            target.parent.mkdir(parents=True, exist_ok=True)
            if member.issym():
                resolved = (target.parent / member.linkname).resolve()
                if member.linkname.startswith("/") or not resolved.is_relative_to(into.resolve()):
                    raise RegistryError(f"{label}: {member.name} links outside the context")
                target.symlink_to(member.linkname)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                with target.open("wb") as out:
                    shutil.copyfileobj(source, out)
                target.chmod(0o755 if member.mode & 0o100 else 0o644)
            elif not member.isdir():
                raise RegistryError(f"{label}: {member.name} is not a file")


def context_folder(text: str) -> Path:
    """Where `build-from` puts a context: ./context-HASH (refused when it exists)."""
    digest = text.rpartition("@sha256:")[2][:12] or "unknown"
    folder = Path.cwd() / f"context-{digest}"
    if folder.exists():
        raise InputError(f"{as_typed(folder)} exists already: remove it, or run elsewhere")
    return folder


def unreachable(specs: Sequence[Spec]) -> list[str]:
    """One line per repository that does not answer (or refuses these credentials):
    said before anything is built, as everything a pod needs goes through it."""
    from imagesmith.registry.client import RegistryClient

    problems = []
    for text in sorted({s.registry_repository for s in specs if s.registry_repository}):
        try:
            probe = parse_reference(text)
            RegistryClient(probe.registry).has_manifest(probe.path, "imagesmith-probe")
        except (RegistryError, ValueError) as exc:
            problems.append(f"{text}: {exc}")
    return problems


def pinned_builder(text: str) -> str:
    """`--builder REF` by digest: as given when it names one, else the digest the
    registry gives its tag now (the Job must not follow a tag that moves)."""
    from imagesmith.registry.client import RegistryClient

    try:
        ref = parse_reference(text)
    except ValueError as exc:
        raise InputError(f"--builder {text}: {exc}") from None
    if ref.digest is not None:
        return str(ref)
    digest, _, _ = RegistryClient(ref.registry).manifest(ref.path, ref.tag or "latest")
    return ref.with_digest(digest)


def pick_context(contexts: Sequence[str], index: int | None) -> str:
    """The context this pod builds: the only one, or the one at `index` (the Indexed
    Job's JOB_COMPLETION_INDEX)."""
    if index is None:
        text = os.environ.get("JOB_COMPLETION_INDEX")
        if text is None:
            if len(contexts) == 1:
                return contexts[0]
            raise InputError(
                f"{len(contexts)} contexts and no index: give --index N "
                "(an Indexed Job sets JOB_COMPLETION_INDEX)"
            )
        try:
            index = int(text)
        except ValueError:
            raise InputError(f"JOB_COMPLETION_INDEX={text!r} is not a number") from None
    if not 0 <= index < len(contexts):
        last = len(contexts) - 1
        raise InputError(f"index {index}: there are {len(contexts)} contexts (0-{last})")
    return contexts[index]


# -- the builder image --------------------------------------------------------------------


def builder_repository(spec: Spec) -> str:
    """Where the builder goes when imagesmith makes it: beside the spec's repository."""
    ref = repository_of(spec)
    parent = ref.path.rpartition("/")[0]
    return f"{ref.registry}/{parent + '/' if parent else ''}{BUILDER_REPOSITORY}"


def prepare_builder(folder: Path, *, repository: str) -> Path:
    """Make the packaged builder's spec folder (the path of its env.toml): the recipe's
    files, written again each time (a run killed half-way leaves no half recipe for the
    next), `[registry] repository` set to `repository`, and the running imagesmith's
    wheel in wheel/. Its env.lock, when there is one, stays: the builder is re-locked
    only when that is stale."""
    from imagesmith.model.lock import write_atomically
    from imagesmith.recipebook import copy_recipe

    spec = folder / "env.toml"
    copy_recipe(BUILDER_RECIPE, folder, force=True)
    text = spec.read_text(encoding="utf-8")
    write_atomically(spec, text + f'\n[registry]\nrepository = "{repository}"\n')
    write_wheel(folder)
    return spec


@contextlib.contextmanager
def builder_lock(folder: Path) -> Iterator[None]:
    """Held while a builder folder is prepared and built: two `build --on kubernetes` at
    once take turns (the second finds the builder in the registry)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".imagesmith-builder.lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        yield


def write_wheel(folder: Path) -> Path:
    """The running imagesmith's wheel in `folder`/wheel/, alone of its kind there."""
    from imagesmith.inputs.tool_wheel import tool_wheel, wheel_name

    wheels = folder / "wheel"
    wheels.mkdir(parents=True, exist_ok=True)
    target = wheels / wheel_name()
    _, data = tool_wheel()
    for other in wheels.glob("imagesmith-*.whl"):
        if other != target:
            other.unlink()
    if not target.is_file() or target.read_bytes() != data:
        part = wheels / f".{target.name}.part"
        part.write_bytes(data)
        part.replace(target)
    return target


# -- the Job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildTarget:
    spec: Spec
    context: str
    """REPO@sha256:... of its build context."""


def job_name(targets: Sequence[BuildTarget]) -> str:
    """imagesmith-build-NAME for one spec, imagesmith-build-HASH for a catalogue; a DNS
    label (63 characters at most) that the same contexts always give."""
    digest = hashlib.sha256("\n".join(t.context for t in targets).encode()).hexdigest()[:8]
    if len(targets) == 1:
        name = _DNS_LABEL.sub("-", targets[0].spec.name.lower()).strip("-")[:40].strip("-")
        return f"imagesmith-build-{name}-{digest}"
    return f"imagesmith-build-{len(targets)}-specs-{digest}"


def render_job(
    targets: Sequence[BuildTarget],
    *,
    builder: str,
    registry_secret: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """The Job: one pod per spec (an Indexed Job when there are many), each running
    `imagesmith build-from CONTEXT...` in the builder image.

    The pod runs as root inside its own user namespace (`hostUsers: false`: root there is
    an unprivileged uid on the node) with what podman needs to build there and nothing
    more: `CAPABILITIES` (SYS_ADMIN for its mounts: overlay, the chroot of RUN steps; the
    rest is what a RUN step gets, see the builder's containers.conf), the runtime's
    default seccomp profile (it allows mount to a holder of SYS_ADMIN), no AppArmor
    profile (the default one denies mount); its storage and cache are emptyDir volumes."""
    if not targets:
        raise InputError("--on kubernetes: no specs to build")
    if registry_secret is not None and secret_problems(registry_secret):
        raise InputError(secret_problems(registry_secret)[0])
    from imagesmith.cluster.slurm_build import TaskResources

    asked = TaskResources.for_specs([t.spec for t in targets])  # the most any spec asks
    container = _build_container(
        targets, builder=builder, cpus=asked.cpus, memory_mb=asked.memory_mb
    )
    pod = _build_pod(container, registry_secret)
    labels = {
        "app.kubernetes.io/name": "imagesmith-build",
        "app.kubernetes.io/managed-by": "imagesmith",
    }
    metadata: dict[str, Any] = {"name": job_name(targets), "labels": labels}
    if namespace is not None:
        metadata["namespace"] = namespace
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": asked.time_seconds,
        "ttlSecondsAfterFinished": 86400,
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if len(targets) > 1:
        job_spec.update(
            completionMode="Indexed", completions=len(targets), parallelism=len(targets)
        )
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def _build_container(
    targets: Sequence[BuildTarget], *, builder: str, cpus: int, memory_mb: int
) -> dict[str, Any]:
    """The container that runs `imagesmith build-from` on every context, as root in the
    pod's user namespace with `CAPABILITIES`; its storage, cache and work folders."""
    return {
        "name": "build",
        "image": builder,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/opt/venv/bin/imagesmith"],
        "args": ["build-from", *(t.context for t in targets)],
        "workingDir": WORK,
        "env": [
            {"name": "XDG_CACHE_HOME", "value": CACHE},
            {"name": "HOME", "value": "/root"},
        ],
        "resources": requests_equal_limits({"cpu": str(cpus), "memory": f"{memory_mb}Mi"}),
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": True,
            "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)},
            "seccompProfile": {"type": "RuntimeDefault"},
            "appArmorProfile": {"type": "Unconfined"},
        },
        "volumeMounts": [
            {"name": "storage", "mountPath": STORAGE},
            {"name": "cache", "mountPath": CACHE},
            {"name": "work", "mountPath": WORK},
        ],
    }


def _build_pod(container: dict[str, Any], registry_secret: str | None) -> dict[str, Any]:
    """The pod around `container`: its own user namespace, emptyDir volumes, and the
    registry Secret as the container's Docker config and the pod's pull secret."""
    volumes: list[dict[str, Any]] = [
        {"name": "storage", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "work", "emptyDir": {}},
    ]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostUsers": False,
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    if registry_secret is not None:
        container["env"].append({"name": "DOCKER_CONFIG", "value": REGISTRY_SECRET_MOUNT})
        container["volumeMounts"].append(
            {"name": "registry", "mountPath": REGISTRY_SECRET_MOUNT, "readOnly": True}
        )
        volumes.append(
            {
                "name": "registry",
                "secret": {
                    "secretName": registry_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
        pod["imagePullSecrets"] = [{"name": registry_secret}]
    return pod


def job_yaml(job: dict[str, Any], targets: Sequence[BuildTarget]) -> str:
    """The Job as YAML, after a comment naming what each index builds."""
    import yaml

    lines = ["# imagesmith build --on kubernetes: apply with `kubectl apply -f FILE`."]
    for index, target in enumerate(targets):
        lines.append(f"# index {index}: {as_typed(target.spec.path)} -> {target.context}")
    return "\n".join(lines) + "\n" + yaml.safe_dump(job, sort_keys=False)


def secret_problems(name: str) -> list[str]:
    """A line when `name` cannot name a Secret (a DNS subdomain)."""
    if _SECRET_NAME.match(name):
        return []
    return [
        f"--registry-secret {name!r}: not a Secret name (lowercase letters, digits, '-' "
        "and '.', at most 253 characters)"
    ]


def refusals(specs: Sequence[Spec]) -> list[str]:
    """One line per spec a pod could not build: no [registry] repository to hold its
    context and take its image."""
    return [
        f"{as_typed(spec.path)}: --on kubernetes ships the build context through the "
        "registry and pushes the image by digest; set [registry] repository"
        for spec in specs
        if spec.registry_repository is None
    ]
