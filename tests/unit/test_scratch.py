"""Scratch folders: what a killed process leaves is removed by the next one, never what a
live process still works in."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.cache.scratch import OWNER, UNLOCKED_GRACE, disown, make_scratch, release, scratch

HOLDER = """
import sys, time
from pathlib import Path
from imagesmith.cache.scratch import make_scratch
folder = make_scratch(Path(sys.argv[1]), sys.argv[2])
(folder / "big").write_bytes(b"x" * 1000)
print(folder, flush=True)
time.sleep(120)
"""


class Holder:
    """Another imagesmith process working in a scratch folder of `parent`."""

    def __init__(self, parent: Path, prefix: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(parent), prefix],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.folder = Path(self.proc.stdout.readline().strip())

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for holder in made:
        if holder.proc.poll() is None:
            holder.kill()


def test_a_killed_process_s_folder_goes_and_a_live_one_s_stays(
    tmp_path: Path, holders: list[Holder]
) -> None:
    killed = Holder(tmp_path, ".staging-")
    alive = Holder(tmp_path, ".staging-")
    holders += [killed, alive]
    assert killed.folder.is_dir() and alive.folder.is_dir()
    assert killed.folder.name.startswith(".staging-") and (killed.folder / OWNER).is_file()
    killed.kill()
    assert killed.folder.is_dir()  # nothing removes it until the next one comes

    mine = make_scratch(tmp_path, ".staging-")
    assert not killed.folder.exists()
    assert (alive.folder / "big").is_file()
    # Folders of another kind are not this sweep's business.
    other = Holder(tmp_path, "other-")
    holders.append(other)
    other.kill()
    release(mine)
    assert not mine.exists()
    with scratch(tmp_path, ".staging-") as again:
        assert again.is_dir() and other.folder.is_dir() and alive.folder.is_dir()
    assert not again.exists()


def test_a_folder_without_a_lock_file_goes_only_once_it_is_old(tmp_path: Path) -> None:
    """Made by an older imagesmith, or by a process killed before it took its lock."""
    young = tmp_path / ".staging-young"
    old = tmp_path / ".staging-old"
    creating = tmp_path / ".creating-.staging-dead"
    for folder in (young, old, creating):
        folder.mkdir()
        (folder / "file").write_text("x")
    past = time.time() - UNLOCKED_GRACE - 60
    os.utime(old, (past, past))
    os.utime(creating, (past, past))
    with scratch(tmp_path, ".staging-"):
        assert young.is_dir() and not old.exists() and not creating.exists()


def test_a_folder_moved_into_place_keeps_its_content_but_not_the_lock_file(
    tmp_path: Path,
) -> None:
    partial = make_scratch(tmp_path, "tree.partial-", siblings="*.partial-*")
    (partial / "venv.tar.gz").write_bytes(b"tree")
    disown(partial)
    partial.rename(tmp_path / "tree")
    release(partial)
    assert sorted(p.name for p in (tmp_path / "tree").iterdir()) == ["venv.tar.gz"]
    # An entry in place is never swept: it does not match the pattern.
    with scratch(tmp_path, "tree.partial-", siblings="*.partial-*"):
        assert (tmp_path / "tree" / "venv.tar.gz").is_file()
