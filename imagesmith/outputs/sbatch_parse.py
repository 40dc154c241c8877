"""The bridge from Slurm: read a batch script's `#SBATCH` directives as a `SlurmRequest`.

Directives are read the way sbatch reads them (`imagesmith.outputs.sbatch_options`); a later
option overrides an earlier one.

What maps onto a Kubernetes Job (all of it exact, never rounded):

- cpu = cpus-per-task x ntasks (`-c`, `-n`, `--ntasks-per-node` on one node);
- memory = `--mem`, or `--mem-per-cpu` x cpu, or `--mem-per-gpu` x gpus, with Slurm's units
  K/M/G/T read as KiB/MiB/GiB/TiB and no unit as MiB (`--mem=16G` -> `16Gi`);
- gpu = `--gpus`/`-G`, `--gres=gpu[:type]:N`, `--gpus-per-node`, `--gpus-per-task` x ntasks;
- time = `-t` in any of Slurm's forms, as seconds (activeDeadlineSeconds);
- job name = `-J`; the script body (everything after the directives) with the shebang's
  interpreter = the Job's command (`["/bin/bash", "-c", body]`).

- array = `--array` (`0-99`, `1-99:2`, `1,5,9`, `%N`): an Indexed Job;
- queue = `-p`, through a mapping the user gives (partition -> Kueue LocalQueue); without
  one, an annotation and a warning; with one, a partition it does not name is an error;
- GPU model = the type in `gpu:a100:2`, which the manifest turns into a nodeSelector through
  the user's mapping (`a100` -> `NVIDIA-A100-SXM4-80GB`) or else keeps as an annotation: a
  Slurm name is not a node label value, and a nodeSelector made from it unmapped would
  leave the pod Pending forever.

Everything else is reported in `warnings`, one line per directive with its file and line,
never dropped silently: multi-node jobs, MPI task counts, dependencies, mail, output
files, accounts, constraints, unknown options. A value that cannot be read (`--mem=lots`)
raises InputError naming the file, line and directive.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from imagesmith.errors import InputError
from imagesmith.model.slurmtime import (
    JobArray,
    format_slurm_time,
    parse_job_array,
    parse_slurm_time,
)
from imagesmith.model.spec import Spec
from imagesmith.outputs.sbatch import ARRAY_VARIABLES
from imagesmith.outputs.sbatch_options import MAPPED, UNMAPPED, Directive, directives, split_script

#: Slurm's memory units, as Kubernetes binary suffixes (no unit = MiB).
_MEMORY_UNITS = {"K": "Ki", "M": "Mi", "G": "Gi", "T": "Ti"}
_MEMORY = re.compile(r"^(\d+)(?:([KMGTkmgt])[Bb]?)?$")
_COUNT = re.compile(r"^\d+$")
_NODE_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_GPUS = re.compile(r"^(?:([A-Za-z0-9_.-]+):)?(\d+)$")
_GRES = re.compile(r"^([A-Za-z0-9_.-]+)(?::([A-Za-z0-9_.-]+))?(?::(\d+))?$")

#: Interpreters that take a program text after -c (the rest: -e, or -c with a warning).
_DASH_C = re.compile(r"^(?:sh|bash|dash|zsh|ksh|mksh|csh|tcsh|fish|python[0-9.]*|pypy[0-9.]*)$")
_DASH_E = re.compile(r"^(?:perl[0-9.]*|ruby[0-9.]*|Rscript|node|julia)$")

# -- the result -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmRequest:
    """What a batch script asks for, in Kubernetes terms. None: the script did not say."""

    source: str = "job.sh"
    job_name: str | None = None
    cpu: str | None = None
    """CPU cores as a Kubernetes quantity: cpus-per-task x ntasks."""
    memory: str | None = None
    """Exact Kubernetes quantity ("16Gi", "1500Mi")."""
    gpu: int | None = None
    gpu_type: str | None = None
    """The GPU model Slurm names (gpu:a100:2 -> "a100"); a nodeSelector only through the
    user's gpu_map (the manifest decides)."""
    time_seconds: int | None = None
    array: JobArray | None = None
    """`--array`: an Indexed Job, one pod per index."""
    partition: str | None = None
    """As the script names it; kept as an annotation."""
    queue: str | None = None
    """The Kueue LocalQueue the partition maps to (queue_map), if it does."""
    interpreter: tuple[str, ...] = ()
    """The shebang's program and its optional argument (`/usr/bin/env`, `python3`)."""
    body: str = ""
    """The script after its directives, byte for byte."""
    command: tuple[str, ...] | None = None
    """interpreter + program flag + body; None when the body is empty (the image's CMD runs)."""
    warnings: list[str] = field(default_factory=list)
    """One line per directive that is not carried over, with its file and line."""
    origins: dict[str, str] = field(default_factory=dict)
    """Setting ("resources.cpu") -> where its value came from ("job.sh:3: -c 8")."""


def parse_sbatch(
    text: str, *, source: str = "job.sh", queue_map: Mapping[str, str] | None = None
) -> SlurmRequest:
    """Read a batch script's #SBATCH directives; InputError for a value that cannot be read.

    `queue_map` (Slurm partition -> Kueue LocalQueue) turns `-p NAME` into a queue; when it
    is given, a partition it does not name is an error.
    """
    words, body_index, lines = split_script(text, source)
    interpreter = _shebang(lines, source)
    reading = _Reading(source)
    given = _gather(words, reading)
    array = _array(given, reading)
    _check_nodes(given, array, reading)
    tasks = _tasks(given, reading)
    gpu, gpu_type = _gpus(given, tasks, reading)
    memory = _memory_request(given, tasks, gpu, reading)
    time_seconds = _time(given, reading)
    job_name = _job_name(given, reading)
    partition, queue = _partition(given, queue_map or {}, reading)

    body = "".join(lines[body_index:])
    warnings = reading.warnings
    warnings.extend(_body_warnings(body, body_index + 1, source, array=array is not None))
    command = _command(interpreter, body, source, warnings)
    if command is not None:
        span = f"{body_index + 1}" + (f"-{len(lines)}" if len(lines) > body_index + 1 else "")
        reading.origins["job.command"] = f"{source}:{span}: the script body"

    return SlurmRequest(
        source=source,
        job_name=job_name,
        cpu=str(tasks.cpu_total) if tasks.cpu_total is not None else None,
        memory=memory,
        gpu=gpu,
        gpu_type=gpu_type,
        time_seconds=time_seconds,
        array=array,
        partition=partition,
        queue=queue,
        interpreter=interpreter,
        body=body,
        command=command,
        warnings=[text for _, text in sorted(warnings, key=lambda w: w[0])],
        origins=reading.origins,
    )


def apply_overrides(spec: Spec, request: SlurmRequest, *, spec_gpu: bool = False) -> Spec:
    """The spec with what the script asked for in place of [resources] and [job].

    A script that asks for no GPU gets none, unless `spec_gpu` keeps the spec's: a CPU-only
    script is not given a GPU (and a 1Gi /dev/shm) it never asked for.
    """
    res = spec.resources
    gpu = request.gpu if request.gpu is not None else (res.gpu if spec_gpu else 0)
    resources = replace(
        res,
        cpu=request.cpu if request.cpu is not None else res.cpu,
        memory=request.memory if request.memory is not None else res.memory,
        gpu=gpu,
        # A script that asks for GPUs says which model, or that any will do.
        gpu_model=request.gpu_type if request.gpu is not None else res.gpu_model,
    )
    job = replace(
        spec.job,
        time=(
            format_slurm_time(request.time_seconds)
            if request.time_seconds is not None
            else spec.job.time
        ),
        command=request.command if request.command is not None else spec.job.command,
        array=request.array if request.array is not None else spec.job.array,
        queue=request.queue if request.queue is not None else spec.job.queue,
    )
    return replace(spec, resources=resources, job=job)


# -- the directives --------------------------------------------------------------------


@dataclass
class _Reading:
    """What reading the directives gathers besides the values: the warnings (with their
    line, to sort them by) and where each setting's value came from."""

    source: str
    warnings: list[tuple[int, str]] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)

    def warn(self, d: Directive, text: str) -> None:
        self.warnings.append((d.line, f"{self.source}:{d.line}: {d.raw}: {text}"))

    def set_origin(self, setting: str, *directives: Directive) -> None:
        self.origins[setting] = " x ".join(f"{self.source}:{d.line}: {d.raw}" for d in directives)

    def bad(self, d: Directive, why: str) -> InputError:
        return _bad(self.source, d, why)


@dataclass
class _Given:
    """The mapped directives, the last of each option (of memory and GPUs: of each family)."""

    seen: dict[str, Directive] = field(default_factory=dict)
    memory: Directive | None = None
    gpus: Directive | None = None


@dataclass(frozen=True)
class _Tasks:
    """The task count and the CPUs, with the directives they came from."""

    count: int | None
    given_by: Directive | None
    """`--ntasks`, or else `--ntasks-per-node`."""
    cpus_per_task: Directive | None
    cpu_total: int | None


def _gather(words: list[tuple[int, str]], reading: _Reading) -> _Given:
    """The mapped directives; a warning for each of the others."""
    given = _Given()
    for item in directives(words, reading.source):
        if isinstance(item, tuple):
            reading.warnings.append(item)
            continue
        d = item
        if d.option in MAPPED:
            if d.option in ("mem", "mem-per-cpu", "mem-per-gpu"):
                if given.memory is not None and given.memory.option != d.option:
                    raise reading.bad(
                        d,
                        f"--{given.memory.option} (line {given.memory.line}) is given too; "
                        "--mem, --mem-per-cpu and --mem-per-gpu are mutually exclusive",
                    )
                given.memory = d
            elif d.option in ("gpus", "gres", "gpus-per-node", "gpus-per-task"):
                given.gpus = d
            else:
                given.seen[d.option] = d
            continue
        if d.option in UNMAPPED:
            reason = UNMAPPED[d.option][1]
            reading.warn(d, f"{reason}; not carried over")
        else:
            reading.warn(d, "unknown sbatch option; not carried over")
    return given


def _array(given: _Given, reading: _Reading) -> JobArray | None:
    d = given.seen.get("array")
    if d is None:
        return None
    try:
        array = parse_job_array(d.value or "")
    except ValueError as exc:
        raise reading.bad(d, str(exc)) from None
    reading.set_origin("job.array", d)
    return array


def _check_nodes(given: _Given, array: JobArray | None, reading: _Reading) -> None:
    """Nodes: one pod runs on one node; a multi-node array is refused."""
    d = given.seen.get("nodes")
    if d is None:
        return
    match = _NODE_RANGE.match(d.value or "")
    if match is None or int(match.group(1)) == 0:
        raise reading.bad(d, f"{d.value!r} is not a node count (N or MIN-MAX)")
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    if (low, high) != (1, 1) and array is not None:
        raise reading.bad(
            d,
            f"a multi-node array (--array on line {given.seen['array'].line}) cannot run here: "
            "each index would need a JobSet or an MPIJob (MPI Operator); "
            "make each task one node",
        )
    if (low, high) != (1, 1):
        reading.warn(
            d,
            "a multi-node job needs an MPI operator or a "
            "JobSet; this manifest runs one pod on one node; not carried over",
        )


def _tasks(given: _Given, reading: _Reading) -> _Tasks:
    """Tasks and CPUs: the tasks become one container with all their CPUs."""
    source = reading.source
    ntasks_d = given.seen.get("ntasks")
    per_node_d = given.seen.get("ntasks-per-node")
    tasks_d = ntasks_d or per_node_d
    ntasks = _count(source, tasks_d, what="task count") if tasks_d else None
    if ntasks_d and per_node_d:
        _count(source, per_node_d, what="task count")
        reading.warn(per_node_d, "--ntasks is given too and wins; not carried over")
    if tasks_d is not None and ntasks is not None and ntasks > 1:
        reading.warn(
            tasks_d,
            f"{ntasks} tasks (MPI ranks) become one "
            f"container with {ntasks} x cpus-per-task CPUs; nothing launches the tasks",
        )
    cpt_d = given.seen.get("cpus-per-task")
    cpus_per_task = _count(source, cpt_d, what="CPU count") if cpt_d else None
    cpu_total: int | None = None
    if cpus_per_task is not None or ntasks is not None:
        cpu_total = (cpus_per_task or 1) * (ntasks or 1)
        reading.set_origin("resources.cpu", *[d for d in (cpt_d, tasks_d) if d is not None])
    return _Tasks(ntasks, tasks_d, cpt_d, cpu_total)


def _gpus(given: _Given, tasks: _Tasks, reading: _Reading) -> tuple[int | None, str | None]:
    """(GPU count, GPU model) from the last of --gpus, --gres and --gpus-per-*."""
    d = given.gpus
    if d is None:
        return None, None
    if d.option == "gres":
        gpu, gpu_type = _gres(d, reading)
    else:
        match = _GPUS.match(d.value or "")
        if match is None:
            raise reading.bad(d, f"{d.value or ''!r} is not a GPU count ([TYPE:]N, e.g. a100:2)")
        gpu_type, gpu = match.group(1), int(match.group(2))
        if d.option == "gpus-per-task":
            gpu *= tasks.count or 1
    if gpu is not None:
        with_tasks = [tasks.given_by] if d.option == "gpus-per-task" and tasks.given_by else []
        reading.set_origin("resources.gpu", d, *with_tasks)
    if gpu_type is not None:
        reading.set_origin("gpu_type", d)
    return gpu, gpu_type


def _gres(d: Directive, reading: _Reading) -> tuple[int | None, str | None]:
    """`--gres=gpu[:TYPE][:N][,...]`: the last gpu entry; a warning for each other GRES."""
    gpu: int | None = None
    gpu_type: str | None = None
    for part in (d.value or "").split(","):
        match = _GRES.match(part)
        if match is None:
            raise reading.bad(d, f"{part!r} is not a GRES (e.g. gpu:2 or gpu:a100:2)")
        name, kind, count = match.groups()
        if count is None and kind is not None and kind.isdigit():
            kind, count = None, kind
        if name != "gpu":
            reading.warn(
                d,
                f"GRES {name!r} has no Kubernetes "
                "counterpart known to imagesmith; not carried over",
            )
            continue
        gpu, gpu_type = int(count or 1), kind
    return gpu, gpu_type


def _memory_request(given: _Given, tasks: _Tasks, gpu: int | None, reading: _Reading) -> str | None:
    """Memory, exact: --mem, or --mem-per-cpu x CPUs, or --mem-per-gpu x GPUs."""
    d = given.memory
    if d is None:
        return None
    amount = _memory(reading.source, d)
    if amount is None:
        reading.warn(
            d, "0 means all of the node's memory, which a pod cannot ask for; not carried over"
        )
        return None
    number, unit = amount
    factors: list[Directive] = []
    if d.option == "mem-per-cpu":
        number *= tasks.cpu_total or 1
        factors = [x for x in (tasks.cpus_per_task, tasks.given_by) if x is not None]
    elif d.option == "mem-per-gpu":
        if gpu is None:
            raise reading.bad(d, "--mem-per-gpu needs a GPU count (--gpus or --gres)")
        number *= gpu
        factors = [given.gpus] if given.gpus is not None else []
    reading.set_origin("resources.memory", d, *factors)
    return f"{number}{unit}"


def _time(given: _Given, reading: _Reading) -> int | None:
    """The time limit in seconds; None for none, or for UNLIMITED (with a warning)."""
    d = given.seen.get("time")
    if d is None:
        return None
    value = d.value or ""
    if value.upper() in ("UNLIMITED", "INFINITE", "-1"):
        reading.warn(d, "no time limit; the manifest keeps [job] time when the spec has one")
        return None
    try:
        time_seconds = parse_slurm_time(value)
    except ValueError as exc:
        raise reading.bad(d, str(exc)) from None
    if time_seconds == 0:
        raise reading.bad(d, "a zero time limit")
    reading.set_origin("job.time", d)
    return time_seconds


def _job_name(given: _Given, reading: _Reading) -> str | None:
    d = given.seen.get("job-name")
    if d is None:
        return None
    if not (d.value or "").strip():
        raise reading.bad(d, "an empty job name")
    reading.set_origin("name", d)
    return d.value


def _partition(
    given: _Given, queue_map: Mapping[str, str], reading: _Reading
) -> tuple[str | None, str | None]:
    """(the partition as the script names it, the Kueue LocalQueue it maps to)."""
    d = given.seen.get("partition")
    if d is None:
        return None, None
    partition = d.value or ""
    reading.set_origin("partition", d)
    queue = _queue(d, partition, queue_map, reading)
    if queue is not None:
        reading.set_origin("job.queue", d)
    return partition, queue


def _queue(
    d: Directive, partition: str, queue_map: Mapping[str, str], reading: _Reading
) -> str | None:
    """The Kueue LocalQueue for `-p PARTITION[,PARTITION...]`: the first one mapped."""
    if not queue_map:
        reading.warn(
            d,
            "no queue for this partition; kept as an annotation only (map it to a Kueue "
            "LocalQueue with --queue-map PARTITION=QUEUE or [job.queue_map])",
        )
        return None
    names = [name for name in partition.split(",") if name]
    for name in names:
        if name in queue_map:
            if len(names) > 1:
                reading.warn(d, f"a Job waits in one queue; {name}'s ({queue_map[name]}) is used")
            return queue_map[name]
    known = ", ".join(sorted(queue_map))
    raise reading.bad(
        d,
        f"partition {partition!r} has no queue in the queue map (it maps {known}); "
        f"add --queue-map {names[0] if names else partition}=QUEUE or a [job.queue_map] entry",
    )


# -- values ----------------------------------------------------------------------------


def _bad(source: str, d: Directive, why: str) -> InputError:
    return InputError(f"{source}:{d.line}: {d.raw}: {why}")


def _count(source: str, d: Directive, *, what: str, zero: bool = False) -> int:
    value = d.value or ""
    if not _COUNT.match(value) or (int(value) == 0 and not zero):
        least = "0" if zero else "1"
        raise _bad(source, d, f"{value!r} is not a {what} (a whole number, {least} or more)")
    return int(value)


def _memory(source: str, d: Directive) -> tuple[int, str] | None:
    """(number, Kubernetes binary suffix); None for 0 (Slurm: all of the node's memory)."""
    value = d.value or ""
    match = _MEMORY.match(value)
    if match is None:
        raise _bad(
            source,
            d,
            f"{value!r} is not a memory size "
            "(a whole number with an optional K, M, G or T suffix, e.g. 16G; no suffix is MiB)",
        )
    number = int(match.group(1))
    unit = _MEMORY_UNITS[(match.group(2) or "M").upper()]
    if number == 0:
        return None
    return number, unit


# -- the script ------------------------------------------------------------------------


def _shebang(lines: list[str], source: str) -> tuple[str, ...]:
    first = lines[0].rstrip("\n") if lines else ""
    if not first.startswith("#!") or not first[2:].strip():
        raise InputError(
            f"{source}:1: a batch script starts with #! and its interpreter "
            "(e.g. #!/bin/bash); sbatch refuses one without"
        )
    # Linux: the interpreter's path, then at most one argument (the rest of the line).
    parts = first[2:].strip().split(None, 1)
    return tuple(p.strip() for p in parts)


def _program(interpreter: tuple[str, ...]) -> str:
    """The program that reads the text: `python3` for `#!/usr/bin/env python3`."""
    name = PurePosixPath(interpreter[0]).name
    if name == "env" and len(interpreter) > 1:
        words = [w for w in interpreter[1].split() if not w.startswith("-")]
        if words:
            return PurePosixPath(words[0]).name
    return name


def _command(
    interpreter: tuple[str, ...], body: str, source: str, warnings: list[tuple[int, str]]
) -> tuple[str, ...] | None:
    if not body.strip():
        warnings.append(
            (
                0,
                f"{source}: the script has no commands after its directives; "
                "the image's CMD (or [job] command) runs instead",
            )
        )
        return None
    program = _program(interpreter)
    if _DASH_E.match(program):
        flag = "-e"
    else:
        flag = "-c"
        if not _DASH_C.match(program):
            warnings.append(
                (
                    1,
                    f"{source}:1: interpreter {program!r}: assumed to run a program given as "
                    "`-c TEXT`; check the command",
                )
            )
    return (*interpreter, flag, body)


def _body_warnings(
    body: str, first_line: int, source: str, *, array: bool
) -> Iterator[tuple[int, str]]:
    set_here = ARRAY_VARIABLES if array else ()
    for offset, line in enumerate(body.splitlines()):
        code = line.split("#", 1)[0]
        number = first_line + offset
        where = f"{source}:{number}"
        used = re.findall(r"\$\{?(SLURM_[A-Z_]+)", code)
        if any(name not in set_here for name in used):
            yield (
                number,
                f"{where}: uses a SLURM_* variable, which Kubernetes does not set: {line.strip()}",
            )
        if re.search(r"(?:^|[;&|(\s])srun\s", code):
            yield number, f"{where}: srun is not available in the container: {line.strip()}"
        for pattern, why in _SETUP:
            if re.search(pattern, code):
                yield number, f"{where}: {why}: {line.strip()}"
                break


#: Set-up lines a Slurm script starts with that the image (or [job] mounts) replaces.
_SETUP = (
    (
        r"(?:^|[;&|(])\s*(?:module|ml)\s+(?:load|add|purge|use|restore)\b",
        "environment modules do not exist in the container; the image holds the software "
        "(add it to [apt] packages or [python] requirements)",
    ),
    (
        r"(?:^|[;&|(])\s*(?:conda|mamba|micromamba)\s+activate\b",
        "conda environments are not in the container; the image's Python environment is "
        "already active ([python] requirements)",
    ),
    (
        r"(?:^|[;&|(])\s*(?:source|\.)\s+\S*/bin/activate\b",
        "a host virtualenv is not in the container; the image's Python environment is "
        "already active ([python] requirements)",
    ),
    (
        r"(?:^|[\s=:\"'])/scratch\b",
        "/scratch is not in the container; name it in [job] mounts",
    ),
)
