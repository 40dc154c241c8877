"""env.toml: load, validate (collecting every problem), and model as typed values.

Validation runs in two passes: the JSON Schema (structure, types, names) and then
checks a schema cannot express (PEP 508, paths that escape the spec's folder, files
that must exist). Every problem becomes one line `env.toml: $.path: message`, and
nothing is returned until there are none.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesmith import __version__
from imagesmith.errors import SpecError
from imagesmith.model.quantity import normalize_quantity
from imagesmith.package_data import data_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

    from imagesmith.model.slurmtime import JobArray

DEFAULT_USER = "lab"
# Above the ranges hosts hand out (1000+ for people), so the container's user cannot be
# taken for someone on the node (checkov CKV_K8S_40). A spec may still say uid = 1000.
DEFAULT_UID = 10001
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_VERSION = "latest"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

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
    """The lines of requirements_file alone (the end of `requirements`)."""


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


def mount_problems(source: str, target: str, host_path: bool, claim: bool) -> list[str]:
    """What is wrong with one mount beyond its schema: '..', a hidden /tmp, hostPath forms."""
    problems: list[str] = []
    parts = source.split("/")
    first_ok = source == "." or source.startswith(("./", "/", "$HOME", "${HOME}"))
    if not first_ok or any(p in (".", "..") for p in parts[1:]) or parts[0] == "..":
        problems.append(
            f"source {_show(source)} must be ., ./PATH, /PATH or $HOME/PATH, without . or .. parts"
        )
    target_parts = target.split("/")[1:]
    if any(p in ("", ".", "..") for p in target_parts):
        problems.append(f"target {_show(target)}: no empty, . or .. parts")
    if target in ("/tmp", "/dev/shm") or target.startswith(("/dev/", "/proc/", "/sys/")):
        problems.append(f"target {_show(target)}: imagesmith mounts /tmp and /dev/shm itself")
    if host_path and (claim or "$" in source or not source.startswith("/")):
        problems.append(
            "host_path needs a literal absolute source (no $USER or $HOME, not the submit "
            "folder) and no claim"
        )
    return problems


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


@lru_cache(maxsize=1)
def env_schema() -> dict[str, Any]:
    with data_path("schemas", "env.schema.json").open(encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def json_path(parts: Sequence[str | int]) -> str:
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def _show(value: Any, limit: int = 200) -> str:
    """`value` as JSON, cut short when long: a problem stays one readable line."""
    text = json.dumps(value, ensure_ascii=False, default=str)  # str: TOML's dates and times
    return text if len(text) <= limit else f"{text[: limit - 5]} ...{text[-1]}"


_TYPE_NAMES = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "array": "a list",
    "object": "a table",
    "boolean": "true or false",
}


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def draft_validator(schema: Mapping[str, Any]) -> Any:
    """A Draft 2020-12 validator for `schema`, importing jsonschema only when one is needed.

    jsonschema imports rfc3987_syntax when it is installed (for a `format` none of our
    schemas uses), and that builds a grammar for seconds at import: it is kept out."""
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import jsonschema

    return jsonschema.Draft202012Validator(schema)


def _schema_problems(data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(json path, message) for every schema violation, worded for a user."""
    validator = draft_validator(env_schema())
    for error in validator.iter_errors(data):
        yield from _explain(error)


def _explain(error: ValidationError) -> Iterator[tuple[str, str]]:
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    hint = schema.get("x-error")
    kind = error.validator
    expected: Any = error.validator_value
    if kind == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        allowed = set(known)
        instance: Any = error.instance
        import difflib  # here: only a spec with a problem needs it

        for key in sorted(k for k in instance if k not in allowed):
            close = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean {close[0]}?)" if close else ""
            where = f"; known keys: {', '.join(known)}" if not close else ""
            yield json_path([*path, key]), f"unknown key {_show(key)}{suggestion}{where}"
        return
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else str(error.message)
        yield json_path(path), f"missing required key {_show(missing)}"
        return
    if kind == "propertyNames":
        sub_hint = schema.get("propertyNames", {}).get("x-error", "is not allowed as a key")
        yield json_path(path), f"key {_show(error.instance)} {sub_hint}"
        return
    if kind == "enum":
        choices = ", ".join(_show(c) for c in expected)
        yield json_path(path), f"{_show(error.instance)} is not one of {choices}"
        return
    numeric_hint = hint and _type_of(error.instance) == "number" and expected == "integer"
    if kind == "type" and not numeric_hint:
        names = [expected] if isinstance(expected, str) else list(expected)
        want = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        yield json_path(path), f"expected {want}, got {_show(error.instance)}"
        return
    if kind == "oneOf" and hint and _type_of(error.instance) not in {"string", "number", "integer"}:
        yield json_path(path), f"expected a string or a number, got {_show(error.instance)}"
        return
    if hint:
        yield json_path(path), f"{_show(error.instance)} {hint}"
        return
    if kind == "minLength":
        yield json_path(path), "must not be empty"
        return
    yield json_path(path), error.message


def _requirement_problem(text: str) -> str | None:
    # packaging takes 45 ms to import: only when a requirement has to be checked.
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(text)
    except InvalidRequirement:
        return (
            f"{_show(text)} is not a PEP 508 requirement (e.g. numpy>=2 or requests[socks]==2.32.3)"
        )
    return None


def _inside(folder: Path, relative: str) -> Path | None:
    """The path `relative` names under `folder`, or None when it leaves the folder."""
    if Path(relative).is_absolute():
        return None
    candidate = (folder / relative).resolve()
    if not candidate.is_relative_to(folder.resolve()):
        return None
    return candidate


def read_requirements_file(path: Path) -> tuple[list[str], list[str]]:
    """(requirements, problems) from a requirements.txt: one requirement a line, # comments."""
    requirements: list[str] = []
    problems: list[str] = []
    try:
        text = read_input_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path.name}: cannot read it ({exc})"]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            problems.append(
                f"{path.name}:{number}: pip options ({line.split()[0]}) are not supported here; "
                "use [python] index_url / extra_index_urls"
            )
            continue
        problem = _requirement_problem(line)
        if problem:
            problems.append(f"{path.name}:{number}: {problem}")
        else:
            requirements.append(line)
    return requirements, problems


def _semantic_problems(
    data: Mapping[str, Any], folder: Path, *, data_checked: bool = False
) -> Iterator[tuple[str, str]]:
    """Problems the schema cannot see. With `data_checked` (the spec is the one its lock
    was made from), only those that depend on files, which may have changed since, and
    credentials (a lock made by another imagesmith may have let them in)."""
    yield from _credential_problems(data)
    python = data.get("python")
    if isinstance(python, dict):
        requirements = python.get("requirements")
        for index, text in enumerate(requirements if isinstance(requirements, list) else []):
            if isinstance(text, str) and not data_checked:
                problem = _requirement_problem(text)
                if problem:
                    yield json_path(["python", "requirements", index]), problem
        req_file = python.get("requirements_file")
        if isinstance(req_file, str) and req_file:
            where = json_path(["python", "requirements_file"])
            target = _inside(folder, req_file)
            if target is None:
                yield (
                    where,
                    f"{_show(req_file)} is outside the spec's folder; keep it beside env.toml",
                )
            elif not target.is_file():
                yield where, f"{_show(req_file)} does not exist (looked for {target})"
            else:
                for problem in read_requirements_file(target)[1]:
                    yield where, problem
    yield from _apt_problems(data.get("apt"), folder, keys=not data_checked)
    job, env = data.get("job"), data.get("env")
    secret_env = job.get("secret_env") if isinstance(job, dict) else None
    if isinstance(secret_env, dict) and isinstance(env, dict):
        for name in sorted(set(secret_env) & set(env)):
            yield (
                json_path(["job", "secret_env", name]),
                "is also set in [env]; a variable comes from the image or from a Secret, not both",
            )
    image = data.get("image")
    if isinstance(image, dict):
        if image.get("user") == "root":
            yield (
                json_path(["image", "user"]),
                '"root" is not allowed: the image runs as a non-root user',
            )
        copies = image.get("copy")
        for index, item in enumerate(copies if isinstance(copies, list) else []):
            src = item.get("src") if isinstance(item, dict) else None
            if not isinstance(src, str) or not src:
                continue
            where = json_path(["image", "copy", index, "src"])
            target = _inside(folder, src)
            if target is None:
                yield (
                    where,
                    f"{_show(src)} is outside the spec's folder "
                    "(no absolute paths, '..' or links out)",
                )
            elif not target.exists():
                yield where, f"{_show(src)} does not exist (looked for {target})"
            else:
                yield from _links_out(folder, target, where, src)
    job = data.get("job")
    for table in ("job", "build"):
        settings = data.get(table)
        if isinstance(settings, dict) and isinstance(settings.get("time"), str):
            from imagesmith.model.slurmtime import parse_slurm_time

            try:
                if parse_slurm_time(settings["time"]) == 0:
                    yield (
                        json_path([table, "time"]),
                        f"{_show(settings['time'])} is a zero time limit",
                    )
            except ValueError:
                pass  # the schema's pattern reports it
    build = data.get("build")
    if isinstance(build, dict) and "memory" in build:
        from imagesmith.model.quantity import quantity_value

        try:
            if quantity_value(normalize_quantity(build["memory"])) < 2**20:
                yield json_path(["build", "memory"]), f"{_show(build['memory'])} is under 1Mi"
        except ValueError:
            pass  # the schema's pattern reports it
    mounts = job.get("mounts") if isinstance(job, dict) else None
    targets: set[str] = set()
    for index, item in enumerate(mounts if isinstance(mounts, list) else []):
        if not isinstance(item, dict):
            continue
        source, target = item.get("source"), item.get("target")
        if not isinstance(source, str) or not isinstance(target, str):
            continue
        where = json_path(["job", "mounts", index])
        for problem in mount_problems(
            source, target, item.get("host_path") is True, "claim" in item
        ):
            yield where, problem
        if target in targets:
            yield where, f"target {_show(target)} is mounted twice"
        targets.add(target)
    resources = data.get("resources")
    if isinstance(resources, dict) and "gpu_model" in resources and not resources.get("gpu"):
        yield (
            json_path(["resources", "gpu_model"]),
            "names a GPU model, but [resources] gpu asks for none; set gpu = 1 or more",
        )
    if isinstance(job, dict) and isinstance(job.get("array"), str):
        from imagesmith.model.slurmtime import parse_job_array  # here: few specs have an array

        try:
            parse_job_array(job["array"])
        except ValueError as exc:
            yield json_path(["job", "array"]), f"{_show(job['array'])}: {exc}"
        if job.get("kind") == "pod":
            yield (
                json_path(["job", "array"]),
                'needs kind "job": an array runs as an Indexed Job, one pod per index',
            )


#: A URL's user information: `scheme://user@`, `scheme://user:password@`.
_URL_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#\s]*)@")
#: A URL with a password in it, anywhere in a string: `https://alice:s3cr3t@host`.
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s:@]*:[^/?#\s@]+@")

CREDENTIAL_HINT = (
    "credentials must not be in the spec (they would be in env.lock and the image): put "
    "them in ~/.netrc (machine HOST login USER password TOKEN), which uv and pip read on "
    "the host; see docs/troubleshooting.md#private-package-indexes"
)


def url_has_credentials(url: str) -> bool:
    """Whether `url` carries a user name or password (`https://user:token@host/...`)."""
    return _URL_USERINFO.match(url) is not None


def _apt_problems(apt: Any, folder: Path, *, keys: bool) -> Iterator[tuple[str, str]]:
    """[apt] mirror and [[apt.sources]]: key files that are there and are keys, a suite
    layout apt accepts, no credentials in a URL. Without `keys` (the spec is the one its
    lock pinned the keys' fingerprints for), the key files are not looked at: a build
    needs none of them, only `lock` does (and checks them then)."""
    if not isinstance(apt, dict):
        return
    if isinstance(apt.get("mirror"), str) and apt.get("snapshot"):
        yield (
            json_path(["apt", "mirror"]),
            "cannot be used with [apt] snapshot: the snapshot archive is the mirror",
        )
    urls: list[tuple[list[str | int], Any]] = [(["apt", "mirror"], apt.get("mirror"))]
    sources = apt.get("sources")
    for index, source in enumerate(sources if isinstance(sources, list) else []):
        if not isinstance(source, dict):
            continue
        urls.append((["apt", "sources", index, "url"], source.get("url")))
        suites, components = source.get("suites"), source.get("components")
        if isinstance(suites, list) and all(isinstance(s, str) for s in suites):
            flat = [s.endswith("/") for s in suites]
            if any(flat) and not all(flat):
                yield (
                    json_path(["apt", "sources", index, "suites"]),
                    "mixes flat directories (ending with '/') and suites; use one source each",
                )
            elif all(flat) and components:
                yield (
                    json_path(["apt", "sources", index, "components"]),
                    "must be empty for a flat repository (suites ending with '/')",
                )
            elif not any(flat) and not components:
                yield (
                    json_path(["apt", "sources", index]),
                    'needs components (e.g. ["main"]) for suites that are not flat '
                    "directories ending with '/'",
                )
        key = source.get("key")
        if keys and isinstance(key, str) and key:
            problem = key_problem(folder, key)
            if problem:
                yield json_path(["apt", "sources", index, "key"]), problem
    for parts, url in urls:
        if isinstance(url, str) and url_has_credentials(url):
            yield (
                json_path(parts),
                "holds a user name or password, which would be published in env.lock; "
                "imagesmith reads only apt repositories that need no login",
            )


def key_problem(folder: Path, key: str) -> str | None:
    """Why the key file `key` (relative to `folder`) cannot sign an apt source, or None."""
    from imagesmith.model.openpgp import KeyFileError, read_key

    target = _inside(folder, key)
    if target is None:
        return f"{_show(key)} is outside the spec's folder; keep the key beside env.toml"
    if not target.is_file():
        return f"{_show(key)} does not exist (looked for {target})"
    try:
        read_key(target)
    except KeyFileError as exc:
        return f"{_show(key)} {exc}"
    except OSError as exc:
        return f"{_show(key)}: cannot read it ({exc.strerror or exc})"
    return None


def _credential_problems(data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Index URLs with any user information, and [env] values or labels with a URL that
    carries a password: all of them would be published in env.lock and the image."""
    python = data.get("python")
    if isinstance(python, dict):
        urls: list[tuple[list[str | int], Any]] = [
            (["python", "index_url"], python.get("index_url"))
        ]
        extra = python.get("extra_index_urls")
        for index, url in enumerate(extra if isinstance(extra, list) else []):
            urls.append((["python", "extra_index_urls", index], url))
        for where, url in urls:
            if isinstance(url, str) and url_has_credentials(url):
                yield json_path(where), f"holds a user name or password; {CREDENTIAL_HINT}"
    image = data.get("image")
    tables = [("env", data.get("env"))]
    if isinstance(image, dict):
        tables.append(("image.labels", image.get("labels")))
    for table, values in tables:
        for key, value in (values if isinstance(values, dict) else {}).items():
            if isinstance(value, str) and _URL_PASSWORD.search(value):
                yield (
                    json_path([*table.split("."), key]),
                    "holds a URL with a password, which would be baked into the image; a job "
                    "takes secrets from [job] secret_env",
                )


def _links_out(folder: Path, target: Path, where: str, src: str) -> Iterator[tuple[str, str]]:
    if not target.is_dir():
        return
    root = folder.resolve()
    for child in sorted(target.rglob("*")):
        if child.is_symlink() and not child.resolve().is_relative_to(root):
            rel = child.relative_to(target)
            yield where, f"{_show(src)} holds a link out of the spec's folder: {rel}"


def canonical_hash(data: Any) -> str:
    """sha256 of `data` as JSON with sorted keys and no whitespace."""
    # default=str: TOML dates and times, which no valid spec or lock holds, still hash.
    canonical = json.dumps(
        data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def spec_hash(data: Mapping[str, Any], extra_requirements: Sequence[str]) -> str:
    """The hash of what `data` puts into an image; its run-time tables do not count."""
    return canonical_hash({"spec": image_part(data), "requirements_file": list(extra_requirements)})


#: What the last reader of a lock parsed, left for the next reader of the same text, who
#: takes it. A command reads env.lock twice (load_spec, to see whether the lock vouches
#: for the spec; then the command, for its pins), and parsing and hashing a 50 kB lock
#: takes 5 ms of `render`'s 0.1 s. Taken, never shared: the taker may change what it gets.
_parsed_lock: dict[str, tuple[dict[str, Any], bool]] = {}


def parse_lock_text(text: str, label: str) -> tuple[dict[str, Any], bool]:
    """A lock's `text` parsed (SpecError if it is not TOML), and whether its lock_hash is
    the hash of the rest (an intact lock, not a hand-edited or damaged one)."""
    left = _parsed_lock.pop(text, None)
    if left is not None:
        return left
    data = parse_toml(text, label)
    body = {key: value for key, value in data.items() if key != "lock_hash"}
    return data, data.get("lock_hash") == canonical_hash(body)


def _locked_spec_hash(spec_path: Path) -> str | None:
    """The spec_hash recorded by the intact env.lock beside `spec_path`, if there is one."""
    try:
        text = read_input_text(spec_path.with_suffix(".lock"))
        data, intact = parse_lock_text(text, "")
    except (OSError, UnicodeDecodeError, SpecError):
        return None
    recorded, version = data.get("spec_hash"), data.get("imagesmith_version")
    _parsed_lock.clear()
    _parsed_lock[text] = (data, intact)  # for the command, which reads this lock next
    if not isinstance(recorded, str) or not intact:
        return None
    if version != __version__:
        return None  # another version may have checked against another schema
    return recorded


def _validated_when_locked(data: dict[str, Any], path: Path) -> bool:
    """Whether `data` is exactly the spec that an intact lock beside it, written by this
    version of imagesmith, was made from, and so passed this schema then. The lock's own
    hash rules out a hand-edited or damaged spec_hash (not a forged one)."""
    recorded = _locked_spec_hash(path)
    if recorded is None:
        return False
    try:
        return spec_hash(data, _requirements_file_lines(data, path.parent)) == recorded
    except Exception:  # unvalidated data: any failure here means "check it"
        return False


def _runtime_memo(data: Mapping[str, Any]) -> Path | None:
    """Where a note says that `data`'s run-time tables passed this version's schema.

    The lock vouches for the image part of a spec only, so a spec whose lock matches
    would otherwise import and run the schema (0.2-0.5 s) on every command just for its
    [resources], [job] and [registry] tables. None when the spec has none of them."""
    runtime = {key: data[key] for key in RUNTIME_TABLES if key in data}
    if not runtime:
        return None
    key = canonical_hash({"imagesmith": __version__, "runtime": runtime})
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "imagesmith" / "checked-runtime" / key.removeprefix("sha256:")


def _runtime_checked(data: Mapping[str, Any]) -> bool:
    memo = _runtime_memo(data)
    return memo is None or memo.is_file()


def _remember_runtime_checked(data: Mapping[str, Any]) -> None:
    memo = _runtime_memo(data)
    if memo is None:
        return
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.touch()
    except OSError:
        pass  # only a shortcut: the next command checks the tables again


#: The most imagesmith reads of a spec, lock, requirements file or batch script: far more
#: than any needs (Slurm's own default limit on a batch script is 4 MB), and little enough
#: that a file that is not one is refused at once instead of parsed for a minute.
MAX_INPUT_BYTES = 4 * 1024 * 1024


class InputTooLargeError(OSError):
    """A file larger than MAX_INPUT_BYTES (read as an OSError: it cannot be read as input)."""

    def __str__(self) -> str:
        return (
            f"larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB, which no spec, lock or script is"
        )


def read_input_text(path: Path) -> str:
    """The UTF-8 text of an input file, as `Path.read_text` gives it; InputTooLargeError
    past MAX_INPUT_BYTES."""
    with path.open("rb") as f:
        data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise InputTooLargeError()
    # Universal newlines, as Path.read_text reads: the same text, so the same spec_hash.
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


#: Problems listed at most; the rest are found once these are fixed.
MAX_PROBLEMS = 50

#: Deeper than any spec or lock goes (4 levels); far below what would exhaust the stack
#: of the parser, the schema check or the hash (each of them recursive).
MAX_NESTING = 32


def parse_toml(text: str, label: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"{label}: not valid TOML: {exc}"]) from None
    except RecursionError:
        data = None
    if data is None or nesting_depth(data) > MAX_NESTING:
        raise SpecError(
            [
                f"{label}: values nested more than {MAX_NESTING} levels deep "
                "(a spec or lock needs 5 at most)"
            ]
        )
    return data


def nesting_depth(value: Any) -> int:
    """How many lists and tables deep `value` goes (without recursion: any depth is safe)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break
        todo.extend((child, depth) for child in children)
    return deepest


def load_spec(path: Path | str) -> Spec:
    """Read and validate env.toml; raise SpecError listing every problem."""
    path = Path(path)
    label = path.name
    try:
        text = read_input_text(path)
    except FileNotFoundError:
        raise SpecError([f"{path}: no such file; `imagesmith init` writes one"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}: cannot read it: {exc}"]) from None
    data = parse_toml(text, label)
    return spec_from_data(data, path=path.resolve(), label=label)


def spec_from_data(data: dict[str, Any], *, path: Path, label: str) -> Spec:
    if (
        _validated_when_locked(data, path)
        and _runtime_checked(data)
        and not any(
            _semantic_problems(data, path.parent, data_checked=True)  # files may have changed
        )
    ):
        try:
            lines = _requirements_file_lines(data, path.parent)
            return spec_from_valid_data(data, path=path, file_requirements=lines)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # not the valid spec the lock claims: check it properly
    # The first MAX_PROBLEMS only: a list of 100,000 bad names is one mistake, not a report.
    every = itertools.chain(_semantic_problems(data, path.parent), _schema_problems(data))
    found = set(itertools.islice(every, MAX_PROBLEMS + 1))
    if found:
        problems = sorted(found, key=_problem_order)
        lines = [f"{label}: {where}: {message}" for where, message in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"{label}: more problems not listed; fix these and validate again")
        raise SpecError(lines)
    requirements_file = _requirements_file_lines(data, path.parent)
    spec = spec_from_valid_data(data, path=path, file_requirements=requirements_file)
    _remember_runtime_checked(data)
    return spec


def _problem_order(problem: tuple[str, str]) -> tuple[str, str]:
    """Document order, with list indexes compared as numbers ([10] after [9])."""
    return re.sub(r"\d+", lambda m: m.group(0).zfill(8), problem[0]), problem[1]


def _requirements_file_lines(data: Mapping[str, Any], folder: Path) -> list[str]:
    req_file = data.get("python", {}).get("requirements_file")
    if not req_file:
        return []
    target = _inside(folder, req_file)
    assert target is not None  # validated above
    return read_requirements_file(target)[0]


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def spec_from_valid_data(
    data: Mapping[str, Any], *, path: Path, file_requirements: Sequence[str] = ()
) -> Spec:
    """Model data that already validated (a spec, or the copy of one a lock embeds)."""
    python_data = data.get("python")
    python: Python | None = None
    if isinstance(python_data, dict):
        req_file = python_data.get("requirements_file")
        python = Python(
            requirements=_strings(python_data.get("requirements", [])) + tuple(file_requirements),
            requirements_file=req_file,
            file_requirements=tuple(file_requirements),
            index_url=python_data.get("index_url"),
            extra_index_urls=_strings(python_data.get("extra_index_urls", [])),
        )
    image_data = data.get("image", {})
    image = ImageSettings(
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
    res = data.get("resources", {})
    resources = Resources(
        cpu=normalize_quantity(res["cpu"]) if "cpu" in res else None,
        memory=normalize_quantity(res["memory"]) if "memory" in res else None,
        gpu=res.get("gpu", 0),
        gpu_resource=res.get("gpu_resource", DEFAULT_GPU_RESOURCE),
        shm=normalize_quantity(res["shm"]) if "shm" in res else None,
        gpu_model=res.get("gpu_model"),
        gpu_map=dict(sorted(res.get("gpu_map", {}).items())),
    )
    job_data = data.get("job", {})
    job = JobSettings(
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
    build_data = data.get("build", {})
    defaults = BuildSettings()
    build = BuildSettings(
        cpus=build_data.get("cpus", defaults.cpus),
        memory=normalize_quantity(build_data.get("memory", defaults.memory)),
        time=build_data.get("time", defaults.time),
    )
    apt = data.get("apt", {})
    return Spec(
        path=path,
        name=data["name"],
        version=data.get("version", DEFAULT_VERSION),
        base_image=data["base"]["image"],
        apt_packages=_strings(apt.get("packages", [])),
        apt_snapshot=apt.get("snapshot"),
        apt_mirror=apt["mirror"].rstrip("/") if "mirror" in apt else None,
        apt_sources=tuple(
            AptSource(
                url=source["url"].rstrip("/"),
                suites=_strings(source["suites"]),
                components=_strings(source.get("components", [])),
                key=source["key"],
            )
            for source in apt.get("sources", [])
        ),
        python=python,
        env=dict(data.get("env", {})),
        image=image,
        registry_repository=data.get("registry", {}).get("repository"),
        resources=resources,
        job=job,
        build=build,
        data=data,
        spec_hash=spec_hash(data, file_requirements),
    )


def _job_array(text: str) -> JobArray:
    from imagesmith.model.slurmtime import parse_job_array  # here: few specs have an array

    return parse_job_array(text)
