"""Rendering: golden Containerfiles, determinism, escaping, and the linters' verdict."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from imagesmith.errors import LockError
from imagesmith.render.containerfile import decode_embedded_lock, image_labels, quote_value, render
from tests.conftest import EXAMPLE
from tests.fixtures.make_lock import make_lock
from tests.support import tool

# The golden Containerfiles, rendered from committed locks: tests/unit/test_golden.py.


def test_same_lock_same_bytes() -> None:
    assert render(make_lock(EXAMPLE / "env.toml")) == render(make_lock(EXAMPLE / "env.toml"))


def test_shape_of_the_example() -> None:
    text = render(make_lock(EXAMPLE / "env.toml"))
    assert text.count("apt-get install") == 1  # once, not once per stage
    assert "FROM debian@sha256:" in text
    assert "--no-install-recommends" in text and "rm -rf /var/lib/apt/lists/*" in text
    assert "USER 10001:10001" in text
    assert 'CMD ["python3"]' in text
    # No pip and no wheel in the image: the host-installed tree is copied, then compiled.
    assert "pip install" not in text and ".whl" not in text and "ARG SOURCE_DATE_EPOCH" not in text
    # Layer order: apt first, then the venv tree, then its bytecode (hash-based).
    assert (
        text.index("export SOURCE_DATE_EPOCH=")
        < text.index("apt-get install")
        < text.index("FROM system\n")
        < text.index("ADD python/venv.tar.gz /opt/venv/")
        < text.index("--invalidation-mode checked-hash /opt/venv")
    )


def test_a_base_that_runs_as_another_user_is_built_as_root_up_to_the_images_user() -> None:
    lock = make_lock(EXAMPLE / "env.toml")
    assert "USER 0:0" not in render(lock)  # a root base: the Containerfile as before
    text = render(replace(lock, base=replace(lock.base, user="1000")))
    lines = text.splitlines()
    assert lines[lines.index(f"FROM {lock.base.pinned} AS system") + 1] == "USER 0:0"
    assert text.index("USER 0:0") < text.index("apt-get install") < text.index("USER 10001:10001")


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        'it\'s "quoted" $HOME and ünïcode',
        "back\\slash\\",
        "${X:-y}",
        "tab\there",
        "  spaces  ",
        "",
    ],
)
def test_quote_value_reads_back_literally(value: str) -> None:
    quoted = quote_value(value)
    # The builder's rule inside double quotes: \\ \" \$ unescape, nothing else does.
    inner, out, i = quoted[1:-1], [], 0
    while i < len(inner):
        if inner[i] == "\\" and i + 1 < len(inner) and inner[i + 1] in '\\"$':
            out.append(inner[i + 1])
            i += 2
        else:
            assert inner[i] not in '"$', f"unescaped {inner[i]!r} in {quoted}"
            out.append(inner[i])
            i += 1
    assert "".join(out) == value


def test_labels_carry_spec_and_lock() -> None:
    lock = make_lock(EXAMPLE / "env.toml")
    labels = image_labels(lock)
    assert labels["org.opencontainers.image.title"] == "lab-analysis"
    assert labels["org.opencontainers.image.version"] == "1.0.0"
    assert labels["org.opencontainers.image.base.name"] == "debian:bookworm"
    assert labels["org.opencontainers.image.base.digest"] == lock.base.digest
    assert labels["dev.imagesmith.lock-hash"] == lock.lock_hash
    assert labels["dev.imagesmith.spec-hash"] == lock.spec_hash
    assert decode_embedded_lock(labels["dev.imagesmith.lock"]) == lock.to_toml()
    assert not [name for name in labels if name.startswith(("io.imagesmith", "org.imagesmith"))]


def test_user_run_and_copy_use_exec_form(example_dir: Path) -> None:
    spec = example_dir / "env.toml"
    (example_dir / "scripts").mkdir()
    (example_dir / "scripts" / "t.py").write_text("x = 1\n")
    spec.write_text(
        spec.read_text()
        .replace("# copy = [{", "copy = [{")
        .replace("# run = [", "run = [")
        .replace("# entrypoint", "entrypoint")
    )
    text = render(make_lock(spec))
    assert 'COPY ["copy/0/scripts", "/opt/lab/scripts"]' in text
    lock = make_lock(spec)
    epoch = lock.source_date_epoch
    assert (
        f'RUN ["/bin/sh", "-c", "set -e\\nexport SOURCE_DATE_EPOCH={epoch}\\n'
        'python3 -m compileall -q /opt/lab"]'
    ) in text
    assert 'ENTRYPOINT ["tini", "--"]' in text


def test_apt_installs_the_checked_debs_with_no_network(tmp_path: Path) -> None:
    (tmp_path / "env.toml").write_text(
        'name = "s"\n[base]\nimage = "debian:bookworm"\n[apt]\npackages = ["git"]\n'
        'snapshot = "20250520T000000Z"\n'
    )
    lock = make_lock(tmp_path / "env.toml")
    lock = replace(lock, apt=replace(lock.apt, snapshot="20250520T000000Z"))
    text = render(lock)
    system = text.split("\nFROM system\n")[0]
    # The .debs come from the context, are installed by file, and are gone in the same RUN.
    assert "\nCOPY apt/ /.imagesmith-apt/\nRUN " in system
    files = re.findall(r"/\.imagesmith-apt/(\S+\.deb)", system)
    assert files == [p.file_name for p in sorted(lock.apt.packages, key=lambda p: p.name)]
    assert files[0] == "ca-certificates_20230311+deb12u1_amd64.deb"
    assert "git_2.39.5-0+deb12u2_amd64.deb" in files  # the pool's name: no epoch
    auto = system.split("apt-mark auto")[1].split(">/dev/null")[0].split()
    assert [w for w in auto if w != "\\"] == [p.name for p in lock.apt.packages if not p.requested]
    assert "git" not in auto
    assert system.index("apt-mark auto") < system.index("rm -rf /.imagesmith-apt ")
    # No index, no archive: nothing in the build reaches a network for apt.
    assert "update" not in system and "snapshot.debian.org" not in system
    assert "http" not in system


def test_a_lock_that_does_not_say_where_debs_live_is_refused(tmp_path: Path) -> None:
    (tmp_path / "env.toml").write_text(
        'name = "s"\n[base]\nimage = "debian:bookworm"\n[apt]\npackages = ["git"]\n'
    )
    lock = make_lock(tmp_path / "env.toml")
    old = tuple(replace(p, path=None, size=None, source=None) for p in lock.apt.packages)
    with pytest.raises(LockError, match=r"does not say where the \.debs of ca-certificates, "):
        render(replace(lock, apt=replace(lock.apt, packages=old)))


def _lintable(tmp_path: Path) -> Path:
    path = tmp_path / "Containerfile"
    path.write_text(render(make_lock(EXAMPLE / "env.toml")))
    return path


def test_hadolint_has_nothing_to_say(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", _lintable(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_checkov_passes_except_healthcheck(tmp_path: Path) -> None:
    checkov = tool("checkov")
    result = subprocess.run(
        [
            checkov,
            "-f",
            str(_lintable(tmp_path)),
            "--framework",
            "dockerfile",
            "--skip-download",
            "--skip-check",
            "CKV_DOCKER_2",
            "-o",
            "json",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    failed = report.get("results", {}).get("failed_checks", []) if isinstance(report, dict) else []
    assert failed == [], [c["check_id"] for c in failed]
    assert result.returncode == 0


def test_values_a_line_cannot_spell_travel_as_build_args(tmp_path: Path) -> None:
    from imagesmith.render.containerfile import build_args

    (tmp_path / "env.toml").write_text(
        'name = "nl"\n[base]\nimage = "debian:bookworm"\n'
        '[env]\nPLAIN = "a $b"\nMULTI = "line1\\nline2\\t\\"q\\" $HOME \\\\"\n'
        '[image]\nlabels = { "org.example.note" = "two\\nlines" }\n'
    )
    lock = make_lock(tmp_path / "env.toml")
    text = render(lock)
    assert "ARG IMAGESMITH_ENV_MULTI\n" in text
    assert "MULTI=${IMAGESMITH_ENV_MULTI}" in text and 'PLAIN="a \\$b"' in text
    args = build_args(lock)
    assert args["IMAGESMITH_ENV_MULTI"] == 'line1\nline2\t"q" $HOME \\'
    assert "PLAIN" not in "".join(args)
    (label_arg,) = [k for k in args if k.startswith("IMAGESMITH_LABEL_")]
    assert args[label_arg] == "two\nlines" and f'"org.example.note"=${{{label_arg}}}' in text
    assert "SOURCE_DATE_EPOCH" not in args  # written into the RUN lines (render's docstring)
    containerfile = tmp_path / "Containerfile"
    containerfile.write_text(text)
    result = subprocess.run(
        [tool("hadolint"), str(containerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
