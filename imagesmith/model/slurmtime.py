"""Slurm's value syntaxes that the spec shares with #SBATCH lines.

- Wall-clock limits (`-t`): MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
- Job arrays (`--array`): `0-99`, `1-99:2`, `1,5,9`, any mix of them, and `%N` for at most
  N tasks at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_FORMS = [
    (re.compile(r"^(\d+)$"), ("m",)),
    (re.compile(r"^(\d+):(\d+)$"), ("m", "s")),
    (re.compile(r"^(\d+):(\d+):(\d+)$"), ("h", "m", "s")),
    (re.compile(r"^(\d+)-(\d+)$"), ("d", "h")),
    (re.compile(r"^(\d+)-(\d+):(\d+)$"), ("d", "h", "m")),
    (re.compile(r"^(\d+)-(\d+):(\d+):(\d+)$"), ("d", "h", "m", "s")),
]
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_slurm_time(text: str) -> int:
    """Seconds in a Slurm time limit; ValueError naming the accepted forms otherwise."""
    text = text.strip()
    for pattern, units in _FORMS:
        match = pattern.match(text)
        if match:
            return sum(int(v) * _SECONDS[u] for v, u in zip(match.groups(), units, strict=True))
    raise ValueError(
        f"{text!r} is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
    )


def format_slurm_time(seconds: int) -> str:
    """The D-HH:MM:SS form Slurm prints, for a number of seconds."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


# -- job arrays -------------------------------------------------------------------------------

#: More indices than this is a mistake more often than a sweep (Slurm's own MaxArraySize
#: defaults to 1001); a bigger sweep is several arrays.
MAX_ARRAY_INDICES = 100_000
#: Slurm's largest index (MaxArraySize is at most 4000001).
MAX_ARRAY_INDEX = 4_000_000
_ARRAY_PART = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


@dataclass(frozen=True)
class JobArray:
    """A Slurm job array: its indices as increasing runs, and how many may run at once."""

    text: str
    """As written (`1-7:2%2`), for #SBATCH --array."""
    runs: tuple[tuple[int, int, int], ...]
    """(first, step, count) runs, increasing and disjoint: `1,3,5,10` is (1,2,3), (10,1,1)."""
    limit: int | None = None
    """`%N`: at most N tasks at a time; None: all at once."""

    @property
    def count(self) -> int:
        return sum(count for _, _, count in self.runs)

    @property
    def first(self) -> int:
        return self.runs[0][0]

    @property
    def last(self) -> int:
        first, step, count = self.runs[-1]
        return first + step * (count - 1)

    def indices(self) -> Iterator[int]:
        for first, step, count in self.runs:
            yield from range(first, first + step * count, step)

    @property
    def runs_text(self) -> str:
        """The runs as `FIRST:STEP:COUNT` words, the form the pod's index lookup reads."""
        return " ".join(f"{first}:{step}:{count}" for first, step, count in self.runs)


def parse_job_array(text: str) -> JobArray:
    """A Slurm --array value; ValueError saying what is wrong with it otherwise."""
    spec, percent, limit_text = text.strip().partition("%")
    limit: int | None = None
    if percent:
        if not re.fullmatch(r"\d+", limit_text) or int(limit_text) == 0:
            raise ValueError(f"%{limit_text} is not a task limit (a whole number, 1 or more)")
        limit = int(limit_text)
    if not spec:
        raise ValueError("names no indices (e.g. 0-99, 1-99:2, 1,5,9 or 0-99%10)")
    parts: list[range] = []
    total = 0
    for part in spec.split(","):
        match = _ARRAY_PART.match(part)
        if match is None:
            raise ValueError(
                f"{part!r} is not an index, a range or a stepped range (e.g. 5, 0-99 or 1-99:2)"
            )
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        step = int(match.group(3)) if match.group(3) is not None else 1
        if step == 0:
            raise ValueError(f"{part!r} has a step of 0; a step is 1 or more")
        if high < low:
            raise ValueError(f"{part!r} runs backwards; write it as {high}-{low}")
        if high > MAX_ARRAY_INDEX:
            raise ValueError(f"index {high} is over {MAX_ARRAY_INDEX:,}, Slurm's largest")
        indices = range(low, high + 1, step)
        total += len(indices)
        if total > MAX_ARRAY_INDICES:
            raise ValueError(
                f"over {MAX_ARRAY_INDICES:,} indices; split the sweep into several arrays"
            )
        parts.append(indices)
    unique = sorted({i for indices in parts for i in indices})
    return JobArray(text=text.strip(), runs=_runs(unique), limit=limit)


def _runs(indices: list[int]) -> tuple[tuple[int, int, int], ...]:
    """Increasing indices as (first, step, count) runs, each as long as it can be."""
    runs: list[tuple[int, int, int]] = []
    i = 0
    while i < len(indices):
        first = indices[i]
        if i + 1 == len(indices):
            runs.append((first, 1, 1))
            break
        step = indices[i + 1] - first
        j = i + 1
        while j + 1 < len(indices) and indices[j + 1] - indices[j] == step:
            j += 1
        runs.append((first, step, j - i + 1))
        i = j + 1
    return tuple(runs)
