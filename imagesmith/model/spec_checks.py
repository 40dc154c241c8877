"""The second pass over env.toml: what its JSON Schema cannot express. PEP 508
requirements, paths that leave the spec's folder, files that must exist, apt key files
and suite layouts, credentials that would be published, mounts, time limits and arrays.
Each problem is (json path, message), as the schema pass gives them."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from imagesmith.model.input_files import read_input_text
from imagesmith.model.quantity import normalize_quantity
from imagesmith.model.spec import join_hashes
from imagesmith.model.spec_schema import json_path, show_value

Problems = Iterator[tuple[str, str]]


def _requirement_problem(text: str) -> str | None:
    # packaging takes 45 ms to import: only when a requirement has to be checked.
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(text)
    except InvalidRequirement:
        return (
            f"{show_value(text)} is not a PEP 508 requirement "
            "(e.g. numpy>=2 or requests[socks]==2.32.3)"
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


#: pip options that name where packages come from: the spec says that itself.
_INDEX_OPTIONS = (
    "-i", "--index-url", "--extra-index-url", "--no-index", "-f", "--find-links",
    "--trusted-host",
)  # fmt: skip
_PYPI = re.compile(r"^(?:-i|--index-url)(?:=|\s+)https://pypi\.org/simple/?$")
_INCLUDE = re.compile(r"^(?:-r\s*|--requirement(?:=|\s+))(\S+)$")
_OPTION = re.compile(r"\s-")
_HASH = re.compile(r"^--hash(?:=|\s+)(?:sha256:([0-9a-fA-F]{64})|(\S+))$")


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(number of its first line, text) of each requirement or option line, as pip reads a
    requirements file: a line ending with a backslash goes on on the next, and a ``#`` at
    the start or after a space begins a comment."""
    start = 0
    parts: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not parts:
            start = number
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0]
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        joined = " ".join(part.strip() for part in parts).strip()
        parts = []
        if joined:
            yield start, joined
    if parts and (joined := " ".join(part.strip() for part in parts).strip()):
        yield start, joined


def _option_problem(option: str) -> str:
    name = option.split("=", 1)[0].split()[0]
    if name in _INDEX_OPTIONS:
        return f"pip option {name} is not supported here; use [python] index_url / extra_index_urls"
    if name in ("-c", "--constraint"):
        return (
            f"pip option {name} (a constraints file) is not supported; pin the versions in "
            "the requirements themselves (name==version)"
        )
    if name in ("-e", "--editable"):
        return (
            f"pip option {name} (an editable install) is not supported: the image installs "
            "wheels; build one and serve it from an index"
        )
    return f"pip option {name} is not supported in a requirements_file"


def read_requirements_file(
    path: Path, folder: Path | None = None, *, _seen: tuple[Path, ...] = ()
) -> tuple[list[str], list[str]]:
    """(requirements, problems) from a requirements.txt as pip writes and reads them: one
    requirement a logical line, each with the ``--hash`` options it gives (kept as
    ``REQ --hash=sha256:HEX ...``, see `spec.split_hashes`), and ``-r FILE`` includes, read
    in place, relative to the file that names them and inside `folder` (the spec's;
    default: `path`'s). pip-compile's and uv's output read as they are."""
    folder = folder or path.parent
    requirements: list[str] = []
    problems: list[str] = []
    try:
        text = read_input_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path.name}: cannot read it ({exc})"]
    seen = (*_seen, path.resolve())
    for number, line in _logical_lines(text.removeprefix("\ufeff")):  # pip reads a BOM too
        where = f"{path.name}:{number}"
        include = _INCLUDE.match(line)
        if include:
            target = (path.parent / include.group(1)).resolve()
            if not target.is_relative_to(folder.resolve()):
                problems.append(f"{where}: {include.group(1)} is outside the spec's folder")
            elif target in seen:
                problems.append(f"{where}: {include.group(1)} includes itself")
            elif not target.exists():
                problems.append(f"{where}: {include.group(1)} does not exist")
            elif not target.is_file():
                problems.append(f"{where}: {include.group(1)} is not a file")
            else:
                more, wrong = read_requirements_file(target, folder, _seen=seen)
                requirements += more
                problems += wrong
            continue
        if _PYPI.match(line):  # what pip-compile writes: the index imagesmith uses anyway
            continue
        if line.startswith("-"):
            problems.append(f"{where}: {_option_problem(line)}")
            continue
        option = _OPTION.search(line)
        requirement = line[: option.start()].strip() if option else line
        hashes: list[str] = []
        for given in (
            re.split(r"\s+(?=--?[A-Za-z])", line[option.start() :].strip()) if option else []
        ):
            digest = _HASH.match(given)
            if digest is None:
                problems.append(f"{where}: {_option_problem(given)}")
            elif digest.group(1) is None:
                problems.append(
                    f"{where}: {given}: only sha256 hashes can be checked (--hash=sha256:HEX)"
                )
            else:
                hashes.append(digest.group(1).lower())
        problem = _requirement_problem(requirement)
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            requirements.append(join_hashes(requirement, sorted(set(hashes))))
    return requirements, problems


def requirements_file_lines(data: Mapping[str, Any], folder: Path) -> list[str]:
    """The requirements in the spec's requirements_file (the spec is valid)."""
    req_file = data.get("python", {}).get("requirements_file")
    if not req_file:
        return []
    target = _inside(folder, req_file)
    assert target is not None  # validated above
    return read_requirements_file(target, folder)[0]


def semantic_problems(
    data: Mapping[str, Any], folder: Path, *, data_checked: bool = False
) -> Problems:
    """Problems the schema cannot see. With `data_checked` (the spec is the one its lock
    was made from), only those that depend on files, which may have changed since, and
    credentials (a lock made by another imagesmith may have let them in)."""
    yield from _credential_problems(data)
    python = data.get("python")
    if isinstance(python, dict):
        yield from _python_problems(python, folder, data_checked=data_checked)
    yield from _apt_problems(data.get("apt"), folder, keys=not data_checked)
    job = data.get("job")
    yield from _secret_env_problems(job, data.get("env"))
    image = data.get("image")
    if isinstance(image, dict):
        yield from _image_problems(image, folder)
    yield from _time_limit_problems(data)
    yield from _build_memory_problems(data.get("build"))
    yield from _job_mount_problems(job)
    yield from _gpu_model_problems(data.get("resources"))
    if isinstance(job, dict) and isinstance(job.get("array"), str):
        yield from _job_array_problems(job)


def _python_problems(python: Mapping[str, Any], folder: Path, *, data_checked: bool) -> Problems:
    """[python]: each requirement a PEP 508 one, and a requirements_file beside the spec."""
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
                f"{show_value(req_file)} is outside the spec's folder; keep it beside env.toml",
            )
        elif not target.is_file():
            yield where, f"{show_value(req_file)} does not exist (looked for {target})"
        else:
            for problem in read_requirements_file(target, folder)[1]:
                yield where, problem


def _secret_env_problems(job: Any, env: Any) -> Problems:
    """[job] secret_env: no variable that [env] sets too."""
    secret_env = job.get("secret_env") if isinstance(job, dict) else None
    if isinstance(secret_env, dict) and isinstance(env, dict):
        for name in sorted(set(secret_env) & set(env)):
            yield (
                json_path(["job", "secret_env", name]),
                "is also set in [env]; a variable comes from the image or from a Secret, not both",
            )


def _image_problems(image: Mapping[str, Any], folder: Path) -> Problems:
    """[image]: no root user, and each copy's src inside the spec's folder and there."""
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
                f"{show_value(src)} is outside the spec's folder "
                "(no absolute paths, '..' or links out)",
            )
        elif not target.exists():
            yield where, f"{show_value(src)} does not exist (looked for {target})"
        else:
            yield from _uncopiable(folder, target, where, src)


def _time_limit_problems(data: Mapping[str, Any]) -> Problems:
    """[job] and [build] time: not a zero limit (the schema's pattern checks the form)."""
    for table in ("job", "build"):
        settings = data.get(table)
        if isinstance(settings, dict) and isinstance(settings.get("time"), str):
            from imagesmith.model.slurmtime import parse_slurm_time

            try:
                if parse_slurm_time(settings["time"]) == 0:
                    yield (
                        json_path([table, "time"]),
                        f"{show_value(settings['time'])} is a zero time limit",
                    )
            except ValueError:
                pass  # the schema's pattern reports it


def _build_memory_problems(build: Any) -> Problems:
    """[build] memory: 1Mi at least."""
    if isinstance(build, dict) and "memory" in build:
        from imagesmith.model.quantity import quantity_value

        try:
            if quantity_value(normalize_quantity(build["memory"])) < 2**20:
                yield json_path(["build", "memory"]), f"{show_value(build['memory'])} is under 1Mi"
        except ValueError:
            pass  # the schema's pattern reports it


def _job_mount_problems(job: Any) -> Problems:
    """[[job.mounts]]: each one as `mount_problems` checks it, and no target twice."""
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
            yield where, f"target {show_value(target)} is mounted twice"
        targets.add(target)


def mount_problems(source: str, target: str, host_path: bool, claim: bool) -> list[str]:
    """What is wrong with one mount beyond its schema: '..', a hidden /tmp, hostPath forms."""
    problems: list[str] = []
    parts = source.split("/")
    first_ok = source == "." or source.startswith(("./", "/", "$HOME", "${HOME}"))
    if not first_ok or any(p in (".", "..") for p in parts[1:]) or parts[0] == "..":
        problems.append(
            f"source {show_value(source)} must be ., ./PATH, /PATH or $HOME/PATH, "
            "without . or .. parts"
        )
    target_parts = target.split("/")[1:]
    if any(p in ("", ".", "..") for p in target_parts):
        problems.append(f"target {show_value(target)}: no empty, . or .. parts")
    if target in ("/tmp", "/dev/shm") or target.startswith(("/dev/", "/proc/", "/sys/")):
        problems.append(f"target {show_value(target)}: imagesmith mounts /tmp and /dev/shm itself")
    if host_path and (claim or "$" in source or not source.startswith("/")):
        problems.append(
            "host_path needs a literal absolute source (no $USER or $HOME, not the submit "
            "folder) and no claim"
        )
    return problems


def _gpu_model_problems(resources: Any) -> Problems:
    """[resources] gpu_model: only with a GPU asked for."""
    if isinstance(resources, dict) and "gpu_model" in resources and not resources.get("gpu"):
        yield (
            json_path(["resources", "gpu_model"]),
            "names a GPU model, but [resources] gpu asks for none; set gpu = 1 or more",
        )


def _job_array_problems(job: Mapping[str, Any]) -> Problems:
    """[job] array: a Slurm array Slurm accepts, for a Job (not a Pod)."""
    from imagesmith.model.slurmtime import parse_job_array  # here: few specs have an array

    try:
        parse_job_array(job["array"])
    except ValueError as exc:
        yield json_path(["job", "array"]), f"{show_value(job['array'])}: {exc}"
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
        return f"{show_value(key)} is outside the spec's folder; keep the key beside env.toml"
    if not target.is_file():
        return f"{show_value(key)} does not exist (looked for {target})"
    try:
        read_key(target)
    except KeyFileError as exc:
        return f"{show_value(key)} {exc}"
    except OSError as exc:
        return f"{show_value(key)}: cannot read it ({exc.strerror or exc})"
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


def _uncopiable(folder: Path, target: Path, where: str, src: str) -> Iterator[tuple[str, str]]:
    """What in `target` an image cannot take: links out of the spec's folder, and what is
    neither a file, a folder nor a link (a named pipe, a socket, a device)."""
    kind = _special_kind(target)
    if kind is not None:
        yield where, f"{show_value(src)} is {kind}: only files, folders and links are copied"
    if not target.is_dir():
        return
    root = folder.resolve()
    for child in sorted(target.rglob("*")):
        rel = child.relative_to(target)
        if child.is_symlink():
            if not child.resolve().is_relative_to(root):
                yield where, f"{show_value(src)} holds a link out of the spec's folder: {rel}"
        elif (kind := _special_kind(child)) is not None:
            yield (
                where,
                f"{show_value(src)} holds {rel}, {kind}: only files, folders and links are copied",
            )


def _special_kind(path: Path) -> str | None:
    """'a named pipe', 'a socket' or 'a device' for such a path (not followed), else None."""
    import stat

    try:
        mode = path.lstat().st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return None
