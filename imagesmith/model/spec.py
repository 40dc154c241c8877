"""env.toml as typed values: the `Spec` and its tables, built from data that passed the
checks (`spec_loading` reads and checks a spec; a lock embeds the copy it was made from),
and `spec_hash`, the hash of what a spec puts into an image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesmith.model.quantity import normalize_quantity
from imagesmith.model.sha256 import sha256

if TYPE_CHECKING:
    from imagesmith.model.slurmtime import JobArray

DEFAULT_USER = "lab"
# Above the ranges hosts hand out (1000+ for people), so the container's user cannot be
# taken for someone on the node (checkov CKV_K8S_40). A spec may still say uid = 1000.
DEFAULT_UID = 10001
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_VERSION = "latest"

#: Tables that say how the image is run, built on a cluster and published, not what is in
#: it: read from the current env.toml by `manifest`, `sbatch`, `push` and
#: `build --on slurm`, and left out of the lock, its
#: spec_hash and so the image, so that changing them needs no new lock or image.
RUNTIME_TABLES = ("resources", "job", "registry", "build")


def image_part(data: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a spec that goes into the image: all but `RUNTIME_TABLES`."""
    return {key: value for key, value in data.items() if key not in RUNTIME_TABLES}


@dataclass(frozen=True)
class CopyItem:
    src: str
    dest: str


@dataclass(frozen=True)
class Python:
    requirements: tuple[str, ...]
    """The spec's list followed by the lines of requirements_file, in that order."""
    requirements_file: str | None = None
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    file_requirements: tuple[str, ...] = ()
    """The lines of requirements_file alone, each with the ``--hash`` options it gives
    (`requirements` holds them without)."""
    hashes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(normalized project name, the sha256 digests requirements_file allows for it)."""


@dataclass(frozen=True)
class ImageSettings:
    user: str = DEFAULT_USER
    uid: int = DEFAULT_UID
    gid: int | None = None
    workdir: str | None = None
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    copy: tuple[CopyItem, ...] = ()
    run: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()

    @property
    def group_id(self) -> int:
        return self.gid if self.gid is not None else self.uid


@dataclass(frozen=True)
class Resources:
    cpu: str | None = None
    memory: str | None = None
    gpu: int = 0
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    shm: str | None = None
    gpu_model: str | None = None
    """Slurm's name for the GPU model (a100)."""
    gpu_map: Mapping[str, str] = field(default_factory=dict)
    """Slurm GPU model -> the value of the cluster's GPU node label."""


@dataclass(frozen=True)
class SecretRef:
    secret: str
    key: str


@dataclass(frozen=True)
class Mount:
    """A folder the job reads or writes ([[job.mounts]])."""

    source: str
    """"." or "./PATH" (the submit folder), "/PATH" or "$HOME/PATH" ($USER, $HOME allowed)."""
    target: str
    read_only: bool = False
    claim: str | None = None
    """Kubernetes: the PersistentVolumeClaim holding it."""
    host_path: bool = False
    """Kubernetes: a hostPath volume of `source`."""

    @property
    def in_submit_folder(self) -> bool:
        return self.source == "." or self.source.startswith("./")


@dataclass(frozen=True)
class JobSettings:
    command: tuple[str, ...] | None = None
    kind: str = "job"
    namespace: str | None = None
    time: str | None = None
    backoff_limit: int = 0
    ttl_seconds_after_finished: int = 86400
    secret_env: Mapping[str, SecretRef] = field(default_factory=dict)
    """Variables the job takes from Kubernetes Secrets (never baked into the image)."""
    array: JobArray | None = None
    queue: str | None = None
    """Kueue LocalQueue on Kubernetes, partition on Slurm."""
    queue_map: Mapping[str, str] = field(default_factory=dict)
    """Slurm partition -> Kueue LocalQueue, for scripts read with --from-sbatch."""
    account: str | None = None
    qos: str | None = None
    mounts: tuple[Mount, ...] = ()


@dataclass(frozen=True)
class BuildSettings:
    """What one task of `build --on slurm` asks Slurm for ([build])."""

    cpus: int = 2
    memory: str = "4Gi"
    time: str = "1:00:00"


@dataclass(frozen=True)
class AptSource:
    """One of the lab's own apt repositories ([[apt.sources]])."""

    url: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    key: str
    """The key file's path, relative to the spec's folder."""


@dataclass(frozen=True)
class Spec:
    path: Path
    name: str
    version: str
    base_image: str
    apt_packages: tuple[str, ...]
    apt_snapshot: str | None
    python: Python | None
    env: Mapping[str, str]
    image: ImageSettings
    registry_repository: str | None
    resources: Resources
    job: JobSettings
    data: Mapping[str, Any]
    """The spec as parsed, run-time tables included."""
    spec_hash: str
    """sha256 of what the image part of the spec means (not its comments, its layout or
    its run-time tables) and of its requirements file."""
    apt_mirror: str | None = None
    apt_sources: tuple[AptSource, ...] = ()
    build: BuildSettings = field(default_factory=BuildSettings)

    @property
    def image_data(self) -> dict[str, Any]:
        """The spec without its run-time tables: the form the lock embeds and images carry."""
        return image_part(self.data)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")


def canonical_hash(data: Any) -> str:
    """sha256 of `data` as JSON with sorted keys and no whitespace."""
    # default=str: TOML dates and times, which no valid spec or lock holds, still hash.
    canonical = json.dumps(
        data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    return "sha256:" + sha256(canonical.encode("utf-8")).hexdigest()


def spec_hash(data: Mapping[str, Any], extra_requirements: Sequence[str]) -> str:
    """The hash of what `data` puts into an image; its run-time tables do not count."""
    return canonical_hash({"spec": image_part(data), "requirements_file": list(extra_requirements)})


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def spec_from_valid_data(
    data: Mapping[str, Any], *, path: Path, file_requirements: Sequence[str] = ()
) -> Spec:
    """Model data that already validated (a spec, or the copy of one a lock embeds)."""
    python_data = data.get("python")
    apt = data.get("apt", {})
    return Spec(
        path=path,
        name=data["name"],
        version=data.get("version", DEFAULT_VERSION),
        base_image=data["base"]["image"],
        apt_packages=_strings(apt.get("packages", [])),
        apt_snapshot=apt.get("snapshot"),
        apt_mirror=apt["mirror"].rstrip("/") if "mirror" in apt else None,
        apt_sources=_apt_sources(apt),
        python=_python(python_data, file_requirements) if isinstance(python_data, dict) else None,
        env=dict(data.get("env", {})),
        image=_image_settings(data.get("image", {})),
        registry_repository=data.get("registry", {}).get("repository"),
        resources=_resources(data.get("resources", {})),
        job=_job_settings(data.get("job", {})),
        build=_build_settings(data.get("build", {})),
        data=data,
        spec_hash=spec_hash(data, file_requirements),
    )


def _apt_sources(apt: Mapping[str, Any]) -> tuple[AptSource, ...]:
    return tuple(
        AptSource(
            url=source["url"].rstrip("/"),
            suites=_strings(source["suites"]),
            components=_strings(source.get("components", [])),
            key=source["key"],
        )
        for source in apt.get("sources", [])
    )


_HASH_OPTION = " --hash=sha256:"


def split_hashes(line: str) -> tuple[str, tuple[str, ...]]:
    """(the requirement, its sha256 digests) of a requirements_file line as read: ``numpy==2.1
    --hash=sha256:HEX --hash=sha256:HEX`` (see `spec_checks.read_requirements_file`)."""
    requirement, *hashes = line.split(_HASH_OPTION)
    return requirement, tuple(hashes)


def join_hashes(requirement: str, hashes: Sequence[str]) -> str:
    return requirement + "".join(_HASH_OPTION + digest for digest in hashes)


def normalize_name(name: str) -> str:
    """A Python project's name as PEP 503 compares them (``Ruamel.YAML_clib`` ->
    ``ruamel-yaml-clib``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_name(requirement: str) -> str:
    """The PEP 503 normalized name a PEP 508 requirement starts with."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return normalize_name(name.group(1)) if name else requirement


def _python(python_data: Mapping[str, Any], file_requirements: Sequence[str]) -> Python:
    split = [split_hashes(line) for line in file_requirements]
    return Python(
        requirements=_strings(python_data.get("requirements", []))
        + tuple(requirement for requirement, _ in split),
        hashes=tuple((project_name(r), hashes) for r, hashes in split if hashes),
        requirements_file=python_data.get("requirements_file"),
        file_requirements=tuple(file_requirements),
        index_url=python_data.get("index_url"),
        extra_index_urls=_strings(python_data.get("extra_index_urls", [])),
    )


def _image_settings(image_data: Mapping[str, Any]) -> ImageSettings:
    return ImageSettings(
        user=image_data.get("user", DEFAULT_USER),
        uid=image_data.get("uid", DEFAULT_UID),
        gid=image_data.get("gid"),
        workdir=image_data.get("workdir"),
        cmd=_strings(image_data["cmd"]) if "cmd" in image_data else None,
        entrypoint=_strings(image_data["entrypoint"]) if "entrypoint" in image_data else None,
        copy=tuple(CopyItem(c["src"], c["dest"]) for c in image_data.get("copy", [])),
        run=_strings(image_data.get("run", [])),
        labels=dict(image_data.get("labels", {})),
        ports=tuple(image_data.get("ports", [])),
    )


def _resources(res: Mapping[str, Any]) -> Resources:
    return Resources(
        cpu=normalize_quantity(res["cpu"]) if "cpu" in res else None,
        memory=normalize_quantity(res["memory"]) if "memory" in res else None,
        gpu=res.get("gpu", 0),
        gpu_resource=res.get("gpu_resource", DEFAULT_GPU_RESOURCE),
        shm=normalize_quantity(res["shm"]) if "shm" in res else None,
        gpu_model=res.get("gpu_model"),
        gpu_map=dict(sorted(res.get("gpu_map", {}).items())),
    )


def _job_settings(job_data: Mapping[str, Any]) -> JobSettings:
    return JobSettings(
        command=_strings(job_data["command"]) if "command" in job_data else None,
        kind=job_data.get("kind", "job"),
        namespace=job_data.get("namespace"),
        time=job_data.get("time"),
        backoff_limit=job_data.get("backoff_limit", 0),
        ttl_seconds_after_finished=job_data.get("ttl_seconds_after_finished", 86400),
        secret_env={
            name: SecretRef(ref["secret"], ref["key"])
            for name, ref in sorted(job_data.get("secret_env", {}).items())
        },
        array=_job_array(job_data["array"]) if "array" in job_data else None,
        queue=job_data.get("queue"),
        queue_map=dict(sorted(job_data.get("queue_map", {}).items())),
        account=job_data.get("account"),
        qos=job_data.get("qos"),
        mounts=tuple(
            Mount(
                source=m["source"],
                target=m["target"],
                read_only=m.get("read_only", False),
                claim=m.get("claim"),
                host_path=m.get("host_path", False),
            )
            for m in job_data.get("mounts", [])
        ),
    )


def _build_settings(build_data: Mapping[str, Any]) -> BuildSettings:
    defaults = BuildSettings()
    return BuildSettings(
        cpus=build_data.get("cpus", defaults.cpus),
        memory=normalize_quantity(build_data.get("memory", defaults.memory)),
        time=build_data.get("time", defaults.time),
    )


def _job_array(text: str) -> JobArray:
    from imagesmith.model.slurmtime import parse_job_array  # here: few specs have an array

    return parse_job_array(text)
