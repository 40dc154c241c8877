"""The bridge from Slurm: read a batch script's `#SBATCH` directives as a `SlurmRequest`.

Directives are read the way sbatch reads them: lines that start with `#SBATCH` (at the very
start of the line), up to the first line that is neither blank nor a comment. Each line is
split into words with sbatch's rules (quotes group, a backslash escapes, an unquoted `#`
starts a comment) and the words of all lines form one argument list, parsed like getopt:
`--opt=value`, `--opt value`, `-c 4`, `-c4`, unambiguous prefixes of long names; a later
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import PurePosixPath

from imagesmith.errors import InputError
from imagesmith.model.quantity import quantity_value
from imagesmith.model.slurmtime import (
    JobArray,
    format_slurm_time,
    parse_job_array,
    parse_slurm_time,
)
from imagesmith.model.spec import Spec

MAGIC = "#SBATCH"

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


# -- the options sbatch knows -------------------------------------------------------------

NONE, REQUIRED, OPTIONAL = "none", "required", "optional"

#: Options mapped onto the manifest, by canonical long name.
_MAPPED: dict[str, str] = {
    "nodes": REQUIRED,
    "ntasks": REQUIRED,
    "ntasks-per-node": REQUIRED,
    "cpus-per-task": REQUIRED,
    "mem": REQUIRED,
    "mem-per-cpu": REQUIRED,
    "mem-per-gpu": REQUIRED,
    "time": REQUIRED,
    "gpus": REQUIRED,
    "gres": REQUIRED,
    "gpus-per-node": REQUIRED,
    "gpus-per-task": REQUIRED,
    "job-name": REQUIRED,
    "partition": REQUIRED,
    "array": REQUIRED,
}

_LOGS = "Kubernetes keeps the container's output as its log (kubectl logs)"
_POLICY = "Slurm accounting and scheduling policy; Kubernetes has no counterpart per job"
_NODES = "node selection: write a nodeSelector or affinity for your cluster by hand"

#: Options sbatch knows that have no counterpart here: (argument, why not carried over).
_UNMAPPED: dict[str, tuple[str, str]] = {
    "dependency": (REQUIRED, "Kubernetes Jobs have no dependencies; submit them in order"),
    "account": (REQUIRED, _POLICY),
    "qos": (REQUIRED, _POLICY),
    "reservation": (REQUIRED, _POLICY),
    "wckey": (REQUIRED, _POLICY),
    "priority": (REQUIRED, _POLICY),
    "nice": (OPTIONAL, _POLICY),
    "licenses": (REQUIRED, _POLICY),
    "clusters": (REQUIRED, _POLICY),
    "begin": (REQUIRED, "Kubernetes starts a Job when it is applied"),
    "deadline": (REQUIRED, "Kubernetes starts a Job when it is applied"),
    "hold": (NONE, "Kubernetes starts a Job when it is applied"),
    "output": (REQUIRED, _LOGS),
    "error": (REQUIRED, _LOGS),
    "input": (REQUIRED, "a container's stdin is not a file"),
    "open-mode": (REQUIRED, _LOGS),
    "mail-type": (REQUIRED, "Kubernetes sends no mail"),
    "mail-user": (REQUIRED, "Kubernetes sends no mail"),
    "constraint": (REQUIRED, _NODES),
    "cluster-constraint": (REQUIRED, _NODES),
    "nodelist": (REQUIRED, _NODES),
    "nodefile": (REQUIRED, _NODES),
    "exclude": (REQUIRED, _NODES),
    "exclusive": (OPTIONAL, _NODES),
    "oversubscribe": (NONE, _NODES),
    "contiguous": (NONE, _NODES),
    "extra-node-info": (REQUIRED, _NODES),
    "sockets-per-node": (REQUIRED, _NODES),
    "cores-per-socket": (REQUIRED, _NODES),
    "threads-per-core": (REQUIRED, _NODES),
    "distribution": (REQUIRED, "task layout applies to srun tasks, not to one container"),
    "ntasks-per-core": (REQUIRED, "task layout applies to srun tasks, not to one container"),
    "ntasks-per-socket": (REQUIRED, "task layout applies to srun tasks, not to one container"),
    "ntasks-per-gpu": (REQUIRED, "task layout applies to srun tasks, not to one container"),
    "cpus-per-gpu": (REQUIRED, "set --cpus-per-task instead; the CPU count is not derived"),
    "core-spec": (REQUIRED, _NODES),
    "mem-bind": (REQUIRED, "memory binding is the node's business in Kubernetes"),
    "cpu-freq": (REQUIRED, "CPU frequency is the node's business in Kubernetes"),
    "gpu-bind": (REQUIRED, "GPU binding is the device plugin's business in Kubernetes"),
    "gpu-freq": (REQUIRED, "GPU frequency is the device plugin's business in Kubernetes"),
    "gpus-per-socket": (REQUIRED, _NODES),
    "chdir": (REQUIRED, "the working directory comes from [image] workdir"),
    "export": (REQUIRED, "the container's environment comes from [env]"),
    "export-file": (REQUIRED, "the container's environment comes from [env]"),
    "get-user-env": (OPTIONAL, "the container's environment comes from [env]"),
    "signal": (REQUIRED, "Kubernetes sends SIGTERM, then SIGKILL after the grace period"),
    "time-min": (REQUIRED, "the time limit is --time alone"),
    "requeue": (NONE, "retries are [job] backoff_limit"),
    "no-requeue": (NONE, "retries are [job] backoff_limit"),
    "no-kill": (OPTIONAL, "a pod lives on one node"),
    "kill-on-invalid-dep": (REQUIRED, "Kubernetes Jobs have no dependencies; submit them in order"),
    "comment": (REQUIRED, "not carried over; add an annotation by hand"),
    "wait": (NONE, "a submission option; use kubectl wait"),
    "wait-all-nodes": (REQUIRED, "a pod lives on one node"),
    "parsable": (NONE, "a submission option"),
    "test-only": (NONE, "a submission option"),
    "quiet": (NONE, "a submission option"),
    "verbose": (NONE, "a submission option"),
    "overcommit": (NONE, "CPU requests equal limits here"),
    "immediate": (OPTIONAL, "a submission option"),
    "uid": (REQUIRED, "the container runs as the image's user"),
    "gid": (REQUIRED, "the container runs as the image's user"),
    "network": (REQUIRED, "Cray network options do not apply"),
    "propagate": (OPTIONAL, "resource limits are the pod's limits"),
    "switches": (REQUIRED, _NODES),
    "power": (REQUIRED, _NODES),
    "thread-spec": (REQUIRED, _NODES),
    "hint": (REQUIRED, _NODES),
    "mcs-label": (REQUIRED, _POLICY),
    "acctg-freq": (REQUIRED, _POLICY),
    "profile": (REQUIRED, _POLICY),
    "burst-buffer": (REQUIRED, "burst buffers do not exist in Kubernetes"),
    "bb": (REQUIRED, "burst buffers do not exist in Kubernetes"),
    "bbf": (REQUIRED, "burst buffers do not exist in Kubernetes"),
    "container": (REQUIRED, "the container is the image imagesmith built"),
    "reboot": (NONE, _NODES),
    "spread-job": (NONE, _NODES),
    "use-min-nodes": (NONE, _NODES),
    "tmp": (REQUIRED, "scratch space is an emptyDir; size it by hand"),
}

#: sbatch's one-letter options, by canonical long name.
_SHORT: dict[str, str] = {
    "N": "nodes",
    "n": "ntasks",
    "c": "cpus-per-task",
    "t": "time",
    "G": "gpus",
    "J": "job-name",
    "p": "partition",
    "a": "array",
    "A": "account",
    "b": "begin",
    "B": "extra-node-info",
    "C": "constraint",
    "d": "dependency",
    "D": "chdir",
    "e": "error",
    "F": "nodefile",
    "H": "hold",
    "i": "input",
    "I": "immediate",
    "k": "no-kill",
    "L": "licenses",
    "m": "distribution",
    "M": "clusters",
    "o": "output",
    "O": "overcommit",
    "q": "qos",
    "Q": "quiet",
    "s": "oversubscribe",
    "S": "core-spec",
    "v": "verbose",
    "w": "nodelist",
    "W": "wait",
    "x": "exclude",
}
#: sbatch's aliases for long names.
_ALIASES = {
    "name": "job-name",
    "workdir": "chdir",
    "share": "oversubscribe",
    "gpus-per-job": "gpus",
}


def _argument(name: str) -> str:
    if name in _MAPPED:
        return _MAPPED[name]
    if name in _UNMAPPED:
        return _UNMAPPED[name][0]
    return OPTIONAL  # unknown: take "=value", or the next word when it is not an option


_LONG_NAMES = sorted({*_MAPPED, *_UNMAPPED, *_ALIASES})


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


@dataclass(frozen=True)
class _Directive:
    line: int
    option: str
    """Canonical long name, or the text as written for unknown options."""
    value: str | None
    raw: str
    """As written: `-c 4`, `--mem=16G`."""


# -- reading the script ------------------------------------------------------------------


def _words(line: str, *, source: str, lineno: int) -> Iterator[str]:
    """Split a directive line the way sbatch does (quotes, backslashes, # comments)."""
    i, n = 0, len(line)
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            return
        word: list[str] = []
        quote = ""
        started = False
        while i < n and (quote or not line[i].isspace()):
            char = line[i]
            if char == "\\" and i + 1 < n:
                if line[i + 1].isspace() and not quote:  # sbatch: it still ends the word
                    i += 1
                    break
                word.append(line[i + 1])
                started = True
                i += 2
                continue
            if quote:
                if char == quote:
                    quote = ""
                else:
                    word.append(char)
                i += 1
                continue
            if char in "\"'":
                quote = char
                started = True
                i += 1
                continue
            if char == "#":
                if started or word:
                    yield "".join(word)
                return
            word.append(char)
            started = True
            i += 1
        if quote:
            raise InputError(f"{source}:{lineno}: unmatched {quote} in {line.strip()!r}")
        yield "".join(word)


def _split_script(text: str, source: str) -> tuple[list[tuple[int, str]], int, list[str]]:
    """(directive words with their line numbers, index of the body's first line, lines)."""
    if "\r\n" in text:
        raise InputError(
            f"{source}: the script has DOS line breaks (\\r\\n), which sbatch refuses; "
            "convert it with dos2unix"
        )
    lines = text.splitlines(keepends=True)
    words: list[tuple[int, str]] = []
    for index, raw in enumerate(lines):
        line = raw.rstrip("\n")
        if line.startswith(MAGIC):
            words.extend(
                (index + 1, word)
                for word in _words(line[len(MAGIC) :], source=source, lineno=index + 1)
            )
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        return words, index, lines
    return words, len(lines), lines


def _resolve_long(name: str, *, source: str, line: int) -> str:
    if name in _ALIASES:
        return _ALIASES[name]
    if name in _MAPPED or name in _UNMAPPED:
        return name
    matches = sorted({_ALIASES.get(n, n) for n in _LONG_NAMES if n.startswith(name)})
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InputError(
            f"{source}:{line}: --{name} is ambiguous (it could be --{', --'.join(matches)})"
        )
    return name  # unknown: reported as a warning


def _directives(
    words: list[tuple[int, str]], source: str
) -> Iterator[_Directive | tuple[int, str]]:
    """Each option with its value; (line, text) is a warning (a stray word)."""
    i = 0
    while i < len(words):
        line, word = words[i]
        i += 1
        if word.startswith("--") and len(word) > 2:
            text, has_value, value = word[2:].partition("=")
            name = _resolve_long(text, source=source, line=line)
            kind = _argument(name)
            if has_value and kind == NONE:
                raise InputError(f"{source}:{line}: {word}: --{name} takes no value")
            if not has_value and kind == REQUIRED:
                if i >= len(words):
                    raise InputError(f"{source}:{line}: {word}: --{name} needs a value")
                value = words[i][1]
                i += 1
                yield _Directive(line, name, value, f"{word} {value}")
                continue
            # An unknown option: its value is the next word unless that is an option.
            if (
                not has_value
                and kind == OPTIONAL
                and name not in _UNMAPPED
                and i < len(words)
                and not words[i][1].startswith("-")
            ):
                value = words[i][1]
                i += 1
                yield _Directive(line, name, value, f"{word} {value}")
                continue
            yield _Directive(line, name, value if has_value else None, word)
        elif word.startswith("-") and len(word) > 1:
            letters = word[1:]
            while letters:
                letter, letters = letters[0], letters[1:]
                name = _SHORT.get(letter, "")
                if not name:
                    yield _Directive(line, f"-{letter}", None, f"-{letter}")
                    continue
                kind = _argument(name)
                if kind == NONE or (kind == OPTIONAL and not letters):
                    yield _Directive(line, name, None, f"-{letter}")
                    continue
                if letters:
                    yield _Directive(line, name, letters, f"-{letter}{letters}")
                    break
                if i >= len(words):
                    raise InputError(f"{source}:{line}: -{letter} needs a value")
                value = words[i][1]
                i += 1
                yield _Directive(line, name, value, f"-{letter} {value}")
        else:
            yield (
                line,
                f"{source}:{line}: {word!r}: not an option (sbatch ignores it); not carried over",
            )


# -- values --------------------------------------------------------------------------------


def _bad(source: str, d: _Directive, why: str) -> InputError:
    return InputError(f"{source}:{d.line}: {d.raw}: {why}")


def _count(source: str, d: _Directive, *, what: str, zero: bool = False) -> int:
    value = d.value or ""
    if not _COUNT.match(value) or (int(value) == 0 and not zero):
        least = "0" if zero else "1"
        raise _bad(source, d, f"{value!r} is not a {what} (a whole number, {least} or more)")
    return int(value)


def _memory(source: str, d: _Directive) -> tuple[int, str] | None:
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


#: What the Indexed Job's pods see, as Slurm's array tasks do.
ARRAY_VARIABLES = (
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_MIN",
)


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


# -- parse_sbatch -----------------------------------------------------------------------------


def parse_sbatch(
    text: str, *, source: str = "job.sh", queue_map: Mapping[str, str] | None = None
) -> SlurmRequest:
    """Read a batch script's #SBATCH directives; InputError for a value that cannot be read.

    `queue_map` (Slurm partition -> Kueue LocalQueue) turns `-p NAME` into a queue; when it
    is given, a partition it does not name is an error.
    """
    words, body_index, lines = _split_script(text, source)
    interpreter = _shebang(lines, source)
    warnings: list[tuple[int, str]] = []

    def warn(d: _Directive, text: str) -> None:
        warnings.append((d.line, f"{source}:{d.line}: {d.raw}: {text}"))

    seen: dict[str, _Directive] = {}
    memory_option: _Directive | None = None
    gpu_option: _Directive | None = None
    for item in _directives(words, source):
        if isinstance(item, tuple):
            warnings.append(item)
            continue
        d = item
        if d.option in _MAPPED:
            if d.option in ("mem", "mem-per-cpu", "mem-per-gpu"):
                if memory_option is not None and memory_option.option != d.option:
                    raise _bad(
                        source,
                        d,
                        f"--{memory_option.option} (line {memory_option.line}) is given too; "
                        "--mem, --mem-per-cpu and --mem-per-gpu are mutually exclusive",
                    )
                memory_option = d
            elif d.option in ("gpus", "gres", "gpus-per-node", "gpus-per-task"):
                gpu_option = d
            else:
                seen[d.option] = d
            continue
        if d.option in _UNMAPPED:
            reason = _UNMAPPED[d.option][1]
            warn(d, f"{reason}; not carried over")
        else:
            warn(d, "unknown sbatch option; not carried over")

    origins: dict[str, str] = {}

    def origin(*directives: _Directive) -> str:
        return " x ".join(f"{source}:{d.line}: {d.raw}" for d in directives)

    array: JobArray | None = None
    if "array" in seen:
        d = seen["array"]
        try:
            array = parse_job_array(d.value or "")
        except ValueError as exc:
            raise _bad(source, d, str(exc)) from None
        origins["job.array"] = origin(d)

    # Nodes and tasks: one pod, one container.
    if "nodes" in seen:
        d = seen["nodes"]
        match = _NODE_RANGE.match(d.value or "")
        if match is None or int(match.group(1)) == 0:
            raise _bad(source, d, f"{d.value!r} is not a node count (N or MIN-MAX)")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if (low, high) != (1, 1) and array is not None:
            raise _bad(
                source,
                d,
                f"a multi-node array (--array on line {seen['array'].line}) cannot run here: "
                "each index would need a JobSet or an MPIJob (MPI Operator); "
                "make each task one node",
            )
        if (low, high) != (1, 1):
            warn(
                d,
                "a multi-node job needs an MPI operator or a "
                "JobSet; this manifest runs one pod on one node; not carried over",
            )
    ntasks_d = seen.get("ntasks")
    per_node_d = seen.get("ntasks-per-node")
    tasks_d = ntasks_d or per_node_d
    ntasks = _count(source, tasks_d, what="task count") if tasks_d else None
    if ntasks_d and per_node_d:
        _count(source, per_node_d, what="task count")
        warn(per_node_d, "--ntasks is given too and wins; not carried over")
    if tasks_d is not None and ntasks is not None and ntasks > 1:
        warn(
            tasks_d,
            f"{ntasks} tasks (MPI ranks) become one "
            f"container with {ntasks} x cpus-per-task CPUs; nothing launches the tasks",
        )
    cpt_d = seen.get("cpus-per-task")
    cpus_per_task = _count(source, cpt_d, what="CPU count") if cpt_d else None
    cpu_total: int | None = None
    if cpus_per_task is not None or ntasks is not None:
        cpu_total = (cpus_per_task or 1) * (ntasks or 1)
        origins["resources.cpu"] = origin(*[d for d in (cpt_d, tasks_d) if d is not None])

    # GPUs.
    gpu: int | None = None
    gpu_type: str | None = None
    if gpu_option is not None:
        d = gpu_option
        value = d.value or ""
        if d.option == "gres":
            for part in value.split(","):
                match = _GRES.match(part)
                if match is None:
                    raise _bad(source, d, f"{part!r} is not a GRES (e.g. gpu:2 or gpu:a100:2)")
                name, kind, count = match.groups()
                if count is None and kind is not None and kind.isdigit():
                    kind, count = None, kind
                if name != "gpu":
                    warn(
                        d,
                        f"GRES {name!r} has no Kubernetes "
                        "counterpart known to imagesmith; not carried over",
                    )
                    continue
                gpu, gpu_type = int(count or 1), kind
        else:
            match = _GPUS.match(value)
            if match is None:
                raise _bad(source, d, f"{value!r} is not a GPU count ([TYPE:]N, e.g. a100:2)")
            gpu_type, gpu = match.group(1), int(match.group(2))
            if d.option == "gpus-per-task":
                gpu *= ntasks or 1
        if gpu is not None:
            with_tasks = [tasks_d] if d.option == "gpus-per-task" and tasks_d else []
            origins["resources.gpu"] = origin(d, *with_tasks)
        if gpu_type is not None:
            origins["gpu_type"] = origin(d)

    # Memory, exact.
    memory: str | None = None
    if memory_option is not None:
        d = memory_option
        amount = _memory(source, d)
        if amount is None:
            warn(
                d, "0 means all of the node's memory, which a pod cannot ask for; not carried over"
            )
        else:
            number, unit = amount
            factors: list[_Directive] = []
            if d.option == "mem-per-cpu":
                number *= cpu_total or 1
                factors = [x for x in (cpt_d, tasks_d) if x is not None]
            elif d.option == "mem-per-gpu":
                if gpu is None:
                    raise _bad(source, d, "--mem-per-gpu needs a GPU count (--gpus or --gres)")
                number *= gpu
                factors = [gpu_option] if gpu_option is not None else []
            memory = f"{number}{unit}"
            origins["resources.memory"] = origin(d, *factors)

    # Time.
    time_seconds: int | None = None
    if "time" in seen:
        d = seen["time"]
        value = d.value or ""
        if value.upper() in ("UNLIMITED", "INFINITE", "-1"):
            warn(d, "no time limit; the manifest keeps [job] time when the spec has one")
        else:
            try:
                time_seconds = parse_slurm_time(value)
            except ValueError as exc:
                raise _bad(source, d, str(exc)) from None
            if time_seconds == 0:
                raise _bad(source, d, "a zero time limit")
            origins["job.time"] = origin(d)

    job_name: str | None = None
    if "job-name" in seen:
        d = seen["job-name"]
        if not (d.value or "").strip():
            raise _bad(source, d, "an empty job name")
        job_name = d.value
        origins["name"] = origin(d)

    partition: str | None = None
    queue: str | None = None
    if "partition" in seen:
        d = seen["partition"]
        partition = d.value or ""
        origins["partition"] = origin(d)
        queue = _queue(source, d, partition, queue_map or {}, warn)
        if queue is not None:
            origins["job.queue"] = origin(d)

    body = "".join(lines[body_index:])
    warnings.extend(_body_warnings(body, body_index + 1, source, array=array is not None))
    command = _command(interpreter, body, source, warnings)
    if command is not None:
        span = f"{body_index + 1}" + (f"-{len(lines)}" if len(lines) > body_index + 1 else "")
        origins["job.command"] = f"{source}:{span}: the script body"

    return SlurmRequest(
        source=source,
        job_name=job_name,
        cpu=str(cpu_total) if cpu_total is not None else None,
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
        origins=origins,
    )


def _queue(
    source: str,
    d: _Directive,
    partition: str,
    queue_map: Mapping[str, str],
    warn: Callable[[_Directive, str], None],
) -> str | None:
    """The Kueue LocalQueue for `-p PARTITION[,PARTITION...]`: the first one mapped."""
    if not queue_map:
        warn(
            d,
            "no queue for this partition; kept as an annotation only (map it to a Kueue "
            "LocalQueue with --queue-map PARTITION=QUEUE or [job.queue_map])",
        )
        return None
    names = [name for name in partition.split(",") if name]
    for name in names:
        if name in queue_map:
            if len(names) > 1:
                warn(d, f"a Job waits in one queue; {name}'s ({queue_map[name]}) is used")
            return queue_map[name]
    known = ", ".join(sorted(queue_map))
    raise _bad(
        source,
        d,
        f"partition {partition!r} has no queue in the queue map (it maps {known}); "
        f"add --queue-map {names[0] if names else partition}=QUEUE or a [job.queue_map] entry",
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


def memory_megabytes(quantity: str) -> int:
    """A memory quantity in whole MiB, rounded up: what `--mem=NM` must ask for."""
    value = quantity_value(quantity)
    mebibytes = value / Decimal(2**20)
    whole = int(mebibytes)
    return whole if whole == mebibytes else whole + 1
