"""The build context's copy of [image] copy sources."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_copy_source_that_cannot_be_copied_is_one_line_per_file(tmp_path: Path) -> None:
    """A named pipe that appeared after the spec's checks (they refuse one): InputError,
    one line naming it, not shutil's list of tuples."""
    import os

    from imagesmith.errors import InputError
    from imagesmith.inputs.context import _copy_tree

    src = tmp_path / "data"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    os.mkfifo(src / "late-pipe")
    with pytest.raises(InputError) as caught:
        _copy_tree(src, tmp_path / "context" / "copy" / "0" / "data")
    (line,) = str(caught.value).splitlines()
    assert line.startswith(f"[image] copy: cannot copy {src / 'late-pipe'}: ")
    assert "named pipe" in line
