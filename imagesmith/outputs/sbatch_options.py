"""sbatch's options, and a batch script's `#SBATCH` lines read into them as sbatch reads them.

Directives are lines that start with `#SBATCH` (at the very start of the line), up to the
first line that is neither blank nor a comment. Each line is split into words with
sbatch's rules (quotes group, a backslash escapes, an unquoted `#` starts a comment) and
the words of all lines form one argument list, parsed like getopt: `--opt=value`, `--opt
value`, `-c 4`, `-c4`, unambiguous prefixes of long names. What the options ask for is
`imagesmith.outputs.sbatch_parse`'s business.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass

from imagesmith.errors import InputError

MAGIC = "#SBATCH"

# -- the options sbatch knows -------------------------------------------------------------

NONE, REQUIRED, OPTIONAL = "none", "required", "optional"

#: Options mapped onto the manifest, by canonical long name.
MAPPED: dict[str, str] = {
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
UNMAPPED: dict[str, tuple[str, str]] = {
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
    if name in MAPPED:
        return MAPPED[name]
    if name in UNMAPPED:
        return UNMAPPED[name][0]
    return OPTIONAL  # unknown: take "=value", or the next word when it is not an option


_LONG_NAMES = sorted({*MAPPED, *UNMAPPED, *_ALIASES})


@dataclass(frozen=True)
class Directive:
    """One option as the script gives it."""

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


def split_script(text: str, source: str) -> tuple[list[tuple[int, str]], int, list[str]]:
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
    if name in MAPPED or name in UNMAPPED:
        return name
    matches = sorted({_ALIASES.get(n, n) for n in _LONG_NAMES if n.startswith(name)})
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InputError(
            f"{source}:{line}: --{name} is ambiguous (it could be --{', --'.join(matches)})"
        )
    return name  # unknown: reported as a warning


def directives(words: list[tuple[int, str]], source: str) -> Iterator[Directive | tuple[int, str]]:
    """Each option with its value; (line, text) is a warning (a stray word)."""
    i = 0
    while i < len(words):
        line, word = words[i]
        if word.startswith("--") and len(word) > 2:
            found, i = _long_option(words, i, source=source)
            yield found
        elif word.startswith("-") and len(word) > 1:
            i = yield from _short_options(words, i, source=source)
        else:
            i += 1
            yield (
                line,
                f"{source}:{line}: {word!r}: not an option (sbatch ignores it); not carried over",
            )


def _long_option(words: list[tuple[int, str]], at: int, *, source: str) -> tuple[Directive, int]:
    """`--name[=value]` at `words[at]` (its value the next word when it takes one), and the
    index of the word after it."""
    line, word = words[at]
    i = at + 1
    text, has_value, value = word[2:].partition("=")
    name = _resolve_long(text, source=source, line=line)
    kind = _argument(name)
    if has_value and kind == NONE:
        raise InputError(f"{source}:{line}: {word}: --{name} takes no value")
    if not has_value and kind == REQUIRED:
        if i >= len(words):
            raise InputError(f"{source}:{line}: {word}: --{name} needs a value")
        value = words[i][1]
        return Directive(line, name, value, f"{word} {value}"), i + 1
    # An unknown option: its value is the next word unless that is an option.
    if (
        not has_value
        and kind == OPTIONAL
        and name not in UNMAPPED
        and i < len(words)
        and not words[i][1].startswith("-")
    ):
        value = words[i][1]
        return Directive(line, name, value, f"{word} {value}"), i + 1
    return Directive(line, name, value if has_value else None, word), i


def _short_options(
    words: list[tuple[int, str]], at: int, *, source: str
) -> Generator[Directive, None, int]:
    """The letters of `-abc` at `words[at]` (the last one's value the rest of the word or the
    next word); returns the index of the word after them."""
    line, word = words[at]
    i = at + 1
    letters = word[1:]
    while letters:
        letter, letters = letters[0], letters[1:]
        name = _SHORT.get(letter, "")
        if not name:
            yield Directive(line, f"-{letter}", None, f"-{letter}")
            continue
        kind = _argument(name)
        if kind == NONE or (kind == OPTIONAL and not letters):
            yield Directive(line, name, None, f"-{letter}")
            continue
        if letters:
            yield Directive(line, name, letters, f"-{letter}{letters}")
            break
        if i >= len(words):
            raise InputError(f"{source}:{line}: -{letter} needs a value")
        value = words[i][1]
        i += 1
        yield Directive(line, name, value, f"-{letter} {value}")
    return i
