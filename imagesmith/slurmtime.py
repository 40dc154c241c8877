"""Slurm's wall-clock limits (`-t`): MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""

from __future__ import annotations

import re

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
