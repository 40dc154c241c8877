"""The files [image] copy takes, as the input archive keeps them and a build restores them
(imagesmith.inputs.copies); the registry itself is in tests/integration/test_input_archive."""

from __future__ import annotations

import io
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from imagesmith.errors import OperationError, RegistryError
from imagesmith.inputs import copies
from imagesmith.inputs.beside_spec import restore_beside_spec
from imagesmith.inputs.copies import copy_blobs, copy_title, restore_missing_copies
from imagesmith.model.lock import Lock, read_lock, tree_hash, write_lock
from imagesmith.model.spec_loading import load_spec
from tests.fixtures.make_lock import make_lock

SPEC = """name = "lab"
[base]
image = "debian:bookworm"
[image]
copy = [{ src = "scripts", dest = "/opt/lab" }, { src = "train.py", dest = "/opt/train.py" }]
[registry]
repository = "127.0.0.1:9/lab/lab"
"""


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Lock]:
    """A spec copying a folder (with an executable and a subfolder) and a file, locked."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "lab"
    (folder / "scripts" / "data").mkdir(parents=True)
    (folder / "scripts" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (folder / "scripts" / "run.sh").chmod(0o755)
    (folder / "scripts" / "data" / "p.txt").write_text("params\n")
    (folder / "train.py").write_text("print('fit')\n")
    (folder / "env.toml").write_text(SPEC)
    lock = make_lock(folder / "env.toml")
    write_lock(lock, folder / "env.lock")
    return folder, read_lock(folder / "env.lock")


@dataclass
class FakeArchive:
    """An input archive that lists `files` (title -> bytes), or is absent (`why`)."""

    files: dict[str, bytes] = field(default_factory=dict)
    why: str = "127.0.0.1:9/lab/lab:lock-x.inputs: no input archive there"
    where: str = "127.0.0.1:9/lab/lab:lock-x.inputs"
    fetched: list[str] = field(default_factory=list)

    def digest_of(self, title: str) -> str | None:
        return f"sha256:{title}" if title in self.files else None

    def absent(self) -> str:
        return self.why

    def fetch(self, digest: str, dest: Path, *, mode: int = 0o600) -> str | None:
        title = digest.removeprefix("sha256:")
        self.fetched.append(title)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.files[title])
        return None


def _serve(monkeypatch: pytest.MonkeyPatch, archive: FakeArchive) -> None:
    monkeypatch.setattr(
        "imagesmith.inputs.archive.Archive.for_lock", classmethod(lambda cls, repo, lock: archive)
    )


def test_each_copy_becomes_one_tar_that_depends_on_its_files_alone(
    lab: tuple[Path, Lock], tmp_path: Path
) -> None:
    folder, lock = lab
    blobs = copy_blobs(lock)
    assert [(item.src, path.name) for item, path in blobs] == [
        ("scripts", copy_title(lock.copy[0])),
        ("train.py", copy_title(lock.copy[1])),
    ]
    assert copy_title(lock.copy[0]) == f"copy-{tree_hash(folder / 'scripts')[7:]}.tar"
    # Another folder with the same files, written later: the same bytes.
    other = tmp_path / "other"
    shutil.copytree(folder / "scripts", other)
    (other / "run.sh").touch()
    copies._write_tar(other, tmp_path / "again.tar")
    assert (tmp_path / "again.tar").read_bytes() == blobs[0][1].read_bytes()
    with tarfile.open(blobs[0][1]) as tar:
        members = {m.name: (m.type, m.mode, m.mtime, m.uid) for m in tar}
    assert members == {
        "tree": (tarfile.DIRTYPE, 0o755, 0, 0),
        "tree/data": (tarfile.DIRTYPE, 0o755, 0, 0),
        "tree/data/p.txt": (tarfile.REGTYPE, 0o644, 0, 0),
        "tree/run.sh": (tarfile.REGTYPE, 0o755, 0, 0),
    }


def test_a_copy_changed_since_the_lock_is_not_archived(lab: tuple[Path, Lock]) -> None:
    folder, lock = lab
    (folder / "train.py").write_text("print('changed')\n")
    with pytest.raises(RegistryError, match=r"train.py \(\[image\] copy\) has changed since"):
        copy_blobs(lock)
    (folder / "train.py").unlink()
    with pytest.raises(RegistryError, match=r"train.py \(\[image\] copy\) is not there since"):
        copy_blobs(lock)


def test_missing_copies_come_back_from_the_archive_checked_and_never_over_a_file(
    lab: tuple[Path, Lock], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, lock = lab
    blobs = {path.name: path.read_bytes() for _, path in copy_blobs(lock)}
    shutil.rmtree(copies._copies_dir())
    expected = {
        rel: (folder / rel).read_bytes()
        for rel in ("scripts/run.sh", "scripts/data/p.txt", "train.py")
    }
    shutil.rmtree(folder / "scripts")
    (folder / "train.py").write_text("mine\n")  # there: left alone
    archive = FakeArchive(files=blobs)
    _serve(monkeypatch, archive)
    lines: list[str] = []
    assert restore_missing_copies(folder / "env.toml", on_line=lines.append) == ["scripts"]
    assert archive.fetched == [copy_title(lock.copy[0])]
    assert (folder / "scripts" / "run.sh").read_bytes() == expected["scripts/run.sh"]
    assert (folder / "scripts" / "data" / "p.txt").read_bytes() == expected["scripts/data/p.txt"]
    assert (folder / "scripts" / "run.sh").stat().st_mode & 0o111
    assert not (folder / "scripts" / "data" / "p.txt").stat().st_mode & 0o111
    assert (folder / "train.py").read_text() == "mine\n"
    assert lines == [
        f"copy: scripts was not in {folder}; restored it from the input archive "
        f"{archive.where} (the tree hash env.lock pins)"
    ]
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []

    # The next time, from the host cache: the archive is not asked.
    (folder / "train.py").unlink()
    shutil.rmtree(folder / "scripts")
    archive.fetched.clear()
    assert restore_missing_copies(folder / "env.toml", on_line=lines.append) == [
        "scripts",
        "train.py",
    ]
    assert archive.fetched == [copy_title(lock.copy[1])]
    assert (folder / "train.py").read_bytes() == expected["train.py"]


def test_a_copy_found_nowhere_is_one_line_naming_each_place_and_nothing_is_written(
    lab: tuple[Path, Lock], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, lock = lab
    cached = copy_blobs(lock)[1][1]
    cached.write_bytes(b"not a tar")  # damaged in the host cache
    (folder / "train.py").unlink()
    _serve(monkeypatch, FakeArchive())
    with pytest.raises(OperationError) as caught:
        restore_missing_copies(folder / "env.toml", on_line=lambda _: None)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"[image] copy: train.py ({lock.copy[1].sha256[:19]}...) not found; looked in: "
        f"{folder / 'train.py'} (absent); host cache {cached} (unusable: "
    )
    assert message.endswith(": removed); 127.0.0.1:9/lab/lab:lock-x.inputs: no input archive there")
    assert not cached.exists()
    assert not (folder / "train.py").exists()


def test_a_blob_that_is_not_the_pinned_copy_is_refused(
    lab: tuple[Path, Lock], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, lock = lab
    title = copy_title(lock.copy[1])
    shutil.rmtree(copies._copies_dir(), ignore_errors=True)
    (folder / "train.py").unlink()
    for member, data in (("tree", b"print('other')\n"), ("tree/../../escape", b"x")):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        _serve(monkeypatch, FakeArchive(files={title: buffer.getvalue()}))
        with pytest.raises(OperationError, match=f"{title} is not the copy the lock pins"):
            restore_missing_copies(folder / "env.toml", on_line=lambda _: None)
        assert not (folder / "train.py").exists()
        assert not (folder.parent / "escape").exists()


def test_nothing_is_asked_without_a_lock_a_repository_or_a_missing_copy(
    lab: tuple[Path, Lock], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = lab
    archive = FakeArchive()
    _serve(monkeypatch, archive)
    assert restore_missing_copies(folder / "env.toml", on_line=lambda _: None) == []
    (folder / "train.py").unlink()
    (folder / "env.toml").write_text(
        SPEC.replace('[registry]\nrepository = "127.0.0.1:9/lab/lab"\n', "")
    )
    assert restore_missing_copies(folder / "env.toml", on_line=lambda _: None) == []
    (folder / "env.toml").write_text(SPEC)
    (folder / "env.lock").unlink()
    assert restore_missing_copies(folder / "env.toml", on_line=lambda _: None) == []
    (folder / "env.toml").write_text("not = [toml")
    assert restore_missing_copies(folder / "env.toml", on_line=lambda _: None) == []
    assert archive.fetched == []


# -- the requirements file, from the lines the lock carries ------------------------------

REQ_SPEC = """name = "lab"
[base]
image = "debian:bookworm"
[python]
requirements = ["numpy>=2"]
requirements_file = "reqs/requirements.txt"
"""


def _locked_with_requirements_file(folder: Path) -> Lock:
    (folder / "reqs").mkdir(parents=True)
    (folder / "reqs" / "requirements.txt").write_text(
        "# pinned by the lab\nrequests==2.32.3 \\\n    --hash=sha256:"
        + "a" * 64
        + "\n-r more.txt\n"
    )
    (folder / "reqs" / "more.txt").write_text("pyyaml  # config files\n")
    (folder / "env.toml").write_text(REQ_SPEC)
    spec = load_spec(folder / "env.toml")
    lock = make_lock(folder / "env.toml")
    assert lock.python is not None and spec.python is not None
    lock = replace(
        lock, python=replace(lock.python, requirements_file_lines=spec.python.file_requirements)
    )
    write_lock(lock, folder / "env.lock")
    return read_lock(folder / "env.lock")


def test_a_missing_requirements_file_is_written_from_the_lock_and_keeps_it_fresh(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "lab"
    lock = _locked_with_requirements_file(folder)
    assert lock.python is not None
    shutil.rmtree(folder / "reqs")
    lines: list[str] = []
    restore_beside_spec(folder / "env.toml", on_line=lines.append)
    assert lines == [
        f"python: reqs/requirements.txt was not in {folder}; wrote it from the lines env.lock "
        "carries"
    ]
    assert (folder / "reqs" / "requirements.txt").read_text() == "".join(
        f"{line}\n" for line in lock.python.requirements_file_lines
    )
    spec = load_spec(folder / "env.toml")
    assert spec.spec_hash == lock.spec_hash  # the lock is not stale: no re-lock
    assert [p.name for p in (folder / "reqs").iterdir()] == ["requirements.txt"]

    # One that is there is never replaced; a lock without the lines writes nothing.
    (folder / "reqs" / "requirements.txt").write_text("mine\n")
    restore_beside_spec(folder / "env.toml", on_line=lines.append)
    assert (folder / "reqs" / "requirements.txt").read_text() == "mine\n"
    (folder / "reqs" / "requirements.txt").unlink()
    older = replace(lock, python=replace(lock.python, requirements_file_lines=()))
    write_lock(older, folder / "env.lock")
    restore_beside_spec(folder / "env.toml", on_line=lines.append)
    assert not (folder / "reqs" / "requirements.txt").exists()
    assert len(lines) == 1


def test_a_folder_that_cannot_be_written_is_one_line_not_a_traceback(
    lab: tuple[Path, Lock], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, lock = lab
    copy_blobs(lock)  # in the host cache
    shutil.rmtree(folder / "scripts")
    _serve(monkeypatch, FakeArchive())

    def refuse(prefix: str, dir: Path) -> str:
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr("imagesmith.inputs.copies.tempfile.mkdtemp", refuse)
    with pytest.raises(OperationError) as caught:
        restore_missing_copies(folder / "env.toml", on_line=lambda _: None)
    assert str(caught.value) == (f"[image] copy: scripts: cannot write {folder}: Permission denied")
    assert not (folder / "scripts").exists()


def test_a_damaged_tar_in_the_cache_is_written_again_before_it_is_pushed(
    lab: tuple[Path, Lock],
) -> None:
    _, lock = lab
    path = copy_blobs(lock)[0][1]
    good = path.read_bytes()
    path.write_bytes(good.replace(b"params\n", b"PARAMS\n"))  # a file's content changed
    assert copy_blobs(lock)[0][1].read_bytes() == good


def test_a_copy_that_appears_while_it_is_restored_is_kept_and_said(
    lab: tuple[Path, Lock], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, lock = lab
    copy_blobs(lock)
    (folder / "train.py").unlink()
    _serve(monkeypatch, FakeArchive())
    read_tar = copies._read_tar

    def racing(path: Path) -> Iterator[tuple[str, bool, tarfile.TarFile, tarfile.TarInfo]]:
        yield from read_tar(path)
        (folder / "train.py").write_text("theirs\n")  # another process, meanwhile

    monkeypatch.setattr(copies, "_read_tar", racing)
    with pytest.raises(OperationError) as caught:
        restore_missing_copies(folder / "env.toml", on_line=lambda _: None)
    assert str(caught.value) == (
        f"[image] copy: train.py: cannot write {folder / 'train.py'}: it appeared meanwhile; "
        "kept as it is"
    )
    assert (folder / "train.py").read_text() == "theirs\n"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_a_cache_that_cannot_be_written_stops_push_with_one_line(
    lab: tuple[Path, Lock], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, lock = lab

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied", str(copies._copies_dir()))

    monkeypatch.setattr("imagesmith.inputs.copies.tempfile.mkstemp", refuse)
    with pytest.raises(RegistryError) as caught:
        copy_blobs(lock)
    assert str(caught.value) == (
        f"{folder / 'scripts'} ([image] copy): cannot write {copies._copies_dir()}: "
        "Permission denied; not archiving it"
    )
