"""Any env.toml, env.lock, record or batch script: exit 0, 1 or 2 with lines, never a traceback.

Property-based (hypothesis) through Typer's runner, on the commands that read these files
without an engine or a network: `validate`, `render`, `lock --check` and
`manifest --from-sbatch`. Inputs are random bytes and text (control characters, invalid
UTF-8), random TOML documents, and the valid example with random values put in at random
places; the nastiest files (5,000 levels deep, huge arrays, 10 MB) are checked one by one.
"""

from __future__ import annotations

import datetime as dt
import shutil
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.main import get_command

from imagesmith.cli import app
from imagesmith.model.input_files import tomllib
from imagesmith.model.lock import write_lock
from imagesmith.model.records import BuildRecord, build_record_path, write_record
from tests.conftest import EXAMPLE
from tests.fixtures.make_lock import make_lock

# Typer's CliRunner turns the app into a click command on every call (40 ms); turned once,
# the same command runs a hundred times faster.
COMMAND = get_command(app)
runner = CliRunner()
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example spec with its lock and a build record; no engine anywhere.

    The engine factory and subprocesses are made to fail the test if anything reaches them.
    """
    folder = tmp_path_factory.mktemp("fuzz") / "lab"
    shutil.copytree(EXAMPLE, folder)
    spec = folder / "env.toml"
    lock = make_lock(spec)
    write_lock(lock, folder / "env.lock")
    write_record(
        build_record_path(spec),
        BuildRecord(
            image_id="sha256:" + "1" * 64,
            digest="sha256:" + "2" * 64,
            tags=("lab-analysis:1.0.0",),
            engine="docker",
            lock_hash=lock.lock_hash,
            uid=1000,
            gid=1000,
        ),
    )

    def no_engine(*_: Any, **__: Any) -> Any:
        raise AssertionError("a command under fuzzing reached for an engine or a process")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        patch.setattr("imagesmith.engine.get_engine", no_engine)
        patch.setattr("subprocess.Popen", no_engine)
        yield folder


def invoke(args: list[str]) -> Result:
    return runner.invoke(COMMAND, args, catch_exceptions=True, prog_name="imagesmith")


def assert_clean(result: Result, codes: set[int]) -> None:
    """An expected outcome: a known exit code, and lines rather than an exception."""
    exception = result.exception
    if exception is not None and not isinstance(exception, SystemExit):
        raise AssertionError(f"uncaught {exception!r}\n{result.output[-2000:]}") from exception
    assert result.exit_code in codes, result.output[-2000:]
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        lines = result.stderr.splitlines()
        assert lines, "a failure with nothing said"
        assert all(len(line) <= 1000 for line in lines)


# -- strategies --------------------------------------------------------------------------

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=40),
    st.datetimes(timezones=st.none() | st.just(dt.timezone.utc)),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
tables = st.dictionaries(st.text(max_size=12), values, max_size=6)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """`valid` with a value replaced, a key added or a key removed, at a few random places."""
    data = tomllib.loads(tomli_w.dumps(valid))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "add", "remove"]))
        if action == "remove":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(values)
        else:
            parent[path[-1]] = draw(values)
    return data


@st.composite
def edited(draw: st.DrawFn, text: str) -> bytes:
    """`text` with a few characters or bytes deleted, inserted or replaced."""
    data = bytearray(text.encode("utf-8"))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 8))
        piece = draw(st.binary(max_size=8) | st.text(max_size=8).map(str.encode))
        data[at : at + cut] = piece
    return bytes(data)


def toml_text(data: dict[str, Any]) -> bytes:
    try:
        return tomli_w.dumps(data).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError):  # nan keys, lone surrogates...
        return b"x = 1\n"


any_bytes = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=2000).map(lambda t: t.encode("utf-8", "surrogatepass")),
    tables.map(toml_text),
)


# -- env.toml ----------------------------------------------------------------------------


def check_spec_bytes(folder: Path, content: bytes) -> None:
    spec = folder / "fuzzed.toml"
    spec.write_bytes(content)
    (folder / "fuzzed.lock").unlink(missing_ok=True)
    assert_clean(invoke(["validate", str(spec)]), {0, 2})
    assert_clean(invoke(["render", str(spec)]), {2})  # no lock beside it
    assert_clean(invoke(["lock", "--check", str(spec)]), {1, 2})
    # With a lock beside it (the example's): a spec that validates is then stale or fresh.
    shutil.copyfile(folder / "env.lock", folder / "fuzzed.lock")
    assert_clean(invoke(["render", str(spec)]), {0, 2})
    assert_clean(invoke(["lock", "--check", str(spec)]), {0, 1, 2})


@FUZZ
@given(content=any_bytes)
def test_any_spec_bytes(lab: Path, content: bytes) -> None:
    check_spec_bytes(lab, content)


@FUZZ
@given(data=st.data())
def test_the_example_spec_with_random_values(lab: Path, data: st.DataObject) -> None:
    valid = tomllib.loads((lab / "env.toml").read_text(encoding="utf-8"))
    check_spec_bytes(lab, toml_text(data.draw(mutated(valid))))


@FUZZ
@given(data=st.data())
def test_the_example_spec_with_random_edits(lab: Path, data: st.DataObject) -> None:
    check_spec_bytes(lab, data.draw(edited((lab / "env.toml").read_text(encoding="utf-8"))))


# -- env.lock beside a valid spec ----------------------------------------------------------


def check_lock_bytes(folder: Path, content: bytes) -> None:
    shutil.copyfile(folder / "env.toml", folder / "locked.toml")
    (folder / "locked.lock").write_bytes(content)
    spec = str(folder / "locked.toml")
    assert_clean(invoke(["render", spec]), {0, 2})
    assert_clean(invoke(["lock", "--check", spec]), {0, 1, 2})
    assert_clean(invoke(["manifest", spec]), {0, 2})


@FUZZ
@given(content=any_bytes)
def test_any_lock_bytes(lab: Path, content: bytes) -> None:
    check_lock_bytes(lab, content)


@FUZZ
@given(data=st.data())
def test_the_example_lock_with_random_values(lab: Path, data: st.DataObject) -> None:
    valid = tomllib.loads((lab / "env.lock").read_text(encoding="utf-8"))
    check_lock_bytes(lab, toml_text(data.draw(mutated(valid))))


@FUZZ
@given(data=st.data())
def test_the_example_lock_with_random_edits(lab: Path, data: st.DataObject) -> None:
    check_lock_bytes(lab, data.draw(edited((lab / "env.lock").read_text(encoding="utf-8"))))


# -- batch scripts and records ---------------------------------------------------------------

SBATCH_OPTIONS = [
    "nodes", "ntasks", "ntasks-per-node", "cpus-per-task", "mem", "mem-per-cpu",
    "mem-per-gpu", "gpus", "gres", "gpus-per-node", "gpus-per-task", "time", "job-name",
    "array", "partition", "account", "output", "export", "c", "n", "N", "t", "J", "p",
]  # fmt: skip
option_values = st.one_of(
    st.sampled_from(["1", "0", "4G", "1T", "16000", "1-12", "30:00", "gpu:a100:2", "2-4", "-1"]),
    st.text(alphabet=string.printable, max_size=20),
    st.text(max_size=20),
)


@st.composite
def sbatch_scripts(draw: st.DrawFn) -> bytes:
    lines = [draw(st.sampled_from(["#!/bin/bash", "#!/bin/sh", "#!", "", "#!/usr/bin/env -S a b"]))]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(SBATCH_OPTIONS))
        dashes = "-" if len(name) == 1 else "--"
        separator = draw(st.sampled_from(["=", " ", ""]))
        value = draw(option_values)
        lines.append(
            draw(st.sampled_from(["#SBATCH", "#SBATCH ", "# SBATCH", "#sbatch"]))
            + f" {dashes}{name}{separator}{value}"
        )
    lines += draw(st.lists(st.text(max_size=40), max_size=4))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def check_sbatch(folder: Path, content: bytes) -> None:
    script = folder / "job.sh"
    script.write_bytes(content)
    result = invoke(["manifest", str(folder / "env.toml"), "--from-sbatch", str(script)])
    assert_clean(result, {0, 2})


@FUZZ
@given(
    content=st.one_of(
        sbatch_scripts(), st.binary(max_size=2000), st.text(max_size=2000).map(str.encode)
    )
)
def test_any_batch_script(lab: Path, content: bytes) -> None:
    check_sbatch(lab, content)


@FUZZ
@given(data=st.data())
def test_the_example_batch_scripts_with_random_edits(lab: Path, data: st.DataObject) -> None:
    fixtures = sorted((Path(__file__).parent.parent / "fixtures" / "sbatch").glob("*.sh"))
    source = data.draw(st.sampled_from(fixtures))
    check_sbatch(lab, data.draw(edited(source.read_text(encoding="utf-8"))))


@FUZZ
@given(content=st.one_of(st.binary(max_size=500), st.text(max_size=500).map(str.encode)))
def test_any_build_record(lab: Path, content: bytes) -> None:
    shutil.copyfile(lab / "env.toml", lab / "recorded.toml")
    shutil.copyfile(lab / "env.lock", lab / "recorded.lock")
    (lab / "recorded.build.json").write_bytes(content)
    assert_clean(invoke(["manifest", str(lab / "recorded.toml")]), {0, 2})


# -- the nastiest files, one by one ----------------------------------------------------------

TEN_MB = 10 * 1024 * 1024
NASTY = {
    "5,000 nested arrays": "a = " + "[" * 5000 + "]" * 5000 + "\n",
    "5,000 nested inline tables": "a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n",
    "200 nested tables": "".join(f"[{'.'.join(['t'] * n)}]\n" for n in range(1, 200)),
    "deep array in a known key": 'name = "x"\n[base]\nimage = "x"\n[apt]\npackages = '
    + "[" * 3000
    + "]" * 3000
    + "\n",
    "100,000 list items": 'name = "x"\n[base]\nimage = "x"\n[apt]\npackages = ['
    + '"a b",' * 100_000
    + "]\n",
    "a 1 MB string": 'name = "' + "x" * 1_000_000 + '"\n[base]\nimage = "x"\n',
    "control characters": 'name = "x\\u0000\\u001b[31m"\n[base]\nimage = "x\\u0007"\n'
    '[env]\nA = "\\u0000"\n',
    "a 10 MB file": "# " + "x" * TEN_MB + "\n",
    "a 10 MB array": "a = [" + "1," * (TEN_MB // 2) + "]\n",
}
NASTY_BYTES = {
    **{name: text.encode("utf-8") for name, text in NASTY.items()},
    "invalid UTF-8": b'name = "\xff\xfe"\n[base]\nimage = "\xc3\x28"\n',
    "10 MB of random bytes": bytes(range(256)) * (TEN_MB // 256),
    "a NUL byte": b'name = "x"\x00\n',
}


@pytest.mark.parametrize("name", sorted(NASTY_BYTES))
def test_nasty_files(lab: Path, name: str) -> None:
    content = NASTY_BYTES[name]
    check_spec_bytes(lab, content)
    check_lock_bytes(lab, content)
    check_sbatch(lab, content)


def test_deep_nesting_is_one_line_and_exit_2(lab: Path) -> None:
    spec = lab / "deep.toml"
    spec.write_text(NASTY["5,000 nested arrays"], encoding="utf-8")
    result = invoke(["validate", str(spec)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: deep.toml: values nested more than 32 levels deep (a spec or lock needs 5 at most)"
    ]


def test_a_file_over_4_mib_is_refused_at_once(lab: Path) -> None:
    spec = lab / "huge.toml"
    spec.write_text(NASTY["a 10 MB array"], encoding="utf-8")
    result = invoke(["validate", str(spec)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {spec}: cannot read it: larger than 4 MiB, which no spec, lock or script is"
    ]


@pytest.mark.parametrize("content", ["[" * 100_000, '{"a":' * 100_000, "\x00", ""])
def test_a_deep_or_empty_build_record_is_one_line(lab: Path, content: str) -> None:
    shutil.copyfile(lab / "env.toml", lab / "recorded.toml")
    shutil.copyfile(lab / "env.lock", lab / "recorded.lock")
    (lab / "recorded.build.json").write_text(content)
    result = invoke(["manifest", str(lab / "recorded.toml")])
    assert_clean(result, {2})
    assert len(result.stderr.splitlines()) == 1
