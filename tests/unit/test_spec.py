"""Spec validation: every problem, one line each, exact wording."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagesmith.errors import SpecError
from imagesmith.model.spec_loading import load_spec
from tests.conftest import EXAMPLE, RECIPES

OK = 'name = "x"\n[base]\nimage = "debian:bookworm"\n'
APT_HINT = (
    "is not a Debian package name (lowercase letters, digits, '+', '-', '.'; optionally =VERSION)"
)
QTY = "is not a Kubernetes quantity (e.g. 32Gi)"
GPU = "is not a whole, non-negative number of GPUs (0, 1, 2, ...)"

BAD_SPECS: list[tuple[str, str, list[str]]] = [
    (
        "malformed toml",
        'name = "x"\n[base\nimage = "a"\n',
        [
            "env.toml: not valid TOML: Expected ']' at the end of a table declaration (at line 2, column 6)"
        ],
    ),
    (
        "unknown key with suggestion",
        OK + '[resources]\nmem = "1Gi"\n',
        ['env.toml: $.resources.mem: unknown key "mem" (did you mean memory?)'],
    ),
    (
        "unknown top-level key",
        OK + 'versoin = "1"\n'.replace("versoin", "versoin"),
        [],
    ),  # placeholder replaced below (TOML order)
    (
        "unknown table",
        OK + "[pyhton]\nrequirements = []\n",
        ['env.toml: $.pyhton: unknown key "pyhton" (did you mean python?)'],
    ),
    ("missing base", 'name = "x"\n', ['env.toml: $: missing required key "base"']),
    ("missing name", '[base]\nimage = "debian"\n', ['env.toml: $: missing required key "name"']),
    (
        "missing base.image",
        'name = "x"\n[base]\n',
        ['env.toml: $.base: missing required key "image"'],
    ),
    (
        "uppercase name",
        'name = "Lab"\n[base]\nimage = "debian"\n',
        [
            "env.toml: $.name: \"Lab\" is not an image name (lowercase letters, digits, '.', '_', '-'; e.g. lab-analysis)"
        ],
    ),
    (
        "name not a string",
        'name = 5\n[base]\nimage = "debian"\n',
        ["env.toml: $.name: expected a string, got 5"],
    ),
    (
        "bad version tag",
        OK.replace('name = "x"', 'name = "x"\nversion = "1.0 beta"'),
        [
            "env.toml: $.version: \"1.0 beta\" is not usable as an image tag (letters, digits, '_', '.', '-'; at most 128)"
        ],
    ),
    (
        "bad image reference",
        'name = "x"\n[base]\nimage = "Debian:Bookworm!"\n',
        [
            'env.toml: $.base.image: "Debian:Bookworm!" is not an image reference (e.g. debian:bookworm)'
        ],
    ),
    (
        "short digest",
        'name = "x"\n[base]\nimage = "debian@sha256:abc"\n',
        [
            'env.toml: $.base.image: "debian@sha256:abc" is not an image reference (e.g. debian:bookworm)'
        ],
    ),
    (
        "apt shell injection",
        OK + '[apt]\npackages = ["git", "curl; rm -rf /"]\n',
        [f'env.toml: $.apt.packages[1]: "curl; rm -rf /" {APT_HINT}'],
    ),
    (
        "apt command substitution",
        OK + '[apt]\npackages = ["$(id)"]\n',
        [f'env.toml: $.apt.packages[0]: "$(id)" {APT_HINT}'],
    ),
    (
        "apt backticks",
        OK + '[apt]\npackages = ["`id`"]\n',
        [f'env.toml: $.apt.packages[0]: "`id`" {APT_HINT}'],
    ),
    (
        "apt space",
        OK + '[apt]\npackages = ["git curl"]\n',
        [f'env.toml: $.apt.packages[0]: "git curl" {APT_HINT}'],
    ),
    (
        "apt newline",
        OK + '[apt]\npackages = ["git\\nrm"]\n',
        [f'env.toml: $.apt.packages[0]: "git\\nrm" {APT_HINT}'],
    ),
    (
        "apt not a list",
        OK + '[apt]\npackages = "git"\n',
        ['env.toml: $.apt.packages: expected a list, got "git"'],
    ),
    (
        "apt bad snapshot",
        OK + '[apt]\nsnapshot = "2025-05-20"\n',
        [
            'env.toml: $.apt.snapshot: "2025-05-20" is not a snapshot time (YYYYMMDDTHHMMSSZ, e.g. 20250520T000000Z)'
        ],
    ),
    (
        "not PEP 508",
        OK + '[python]\nrequirements = ["numpy>>2", "requests"]\n',
        [
            'env.toml: $.python.requirements[0]: "numpy>>2" is not a PEP 508 requirement '
            "(e.g. numpy>=2 or requests[socks]==2.32.3)"
        ],
    ),
    (
        "missing requirements file",
        OK + '[python]\nrequirements_file = "nope.txt"\n',
        [
            'env.toml: $.python.requirements_file: "nope.txt" does not exist (looked for {dir}/nope.txt)'
        ],
    ),
    (
        "requirements file outside",
        OK + '[python]\nrequirements_file = "../r.txt"\n',
        [
            'env.toml: $.python.requirements_file: "../r.txt" is outside the spec\'s folder; keep it beside env.toml'
        ],
    ),
    (
        "bad index url",
        OK + '[python]\nindex_url = "pypi.example.edu"\n',
        ['env.toml: $.python.index_url: "pypi.example.edu" is not an index URL (https://...)'],
    ),
    (
        "memory in GB",
        OK + '[resources]\nmemory = "32GB"\n',
        [f'env.toml: $.resources.memory: "32GB" {QTY}'],
    ),
    ("negative cpu", OK + '[resources]\ncpu = "-1"\n', [f'env.toml: $.resources.cpu: "-1" {QTY}']),
    (
        "cpu boolean",
        OK + "[resources]\ncpu = true\n",
        ["env.toml: $.resources.cpu: expected a string or a number, got true"],
    ),
    ("negative gpu", OK + "[resources]\ngpu = -1\n", [f"env.toml: $.resources.gpu: -1 {GPU}"]),
    ("fractional gpu", OK + "[resources]\ngpu = 1.5\n", [f"env.toml: $.resources.gpu: 1.5 {GPU}"]),
    (
        "gpu as string",
        OK + '[resources]\ngpu = "1"\n',
        ['env.toml: $.resources.gpu: expected a whole number, got "1"'],
    ),
    (
        "copy with ..",
        OK + '[image]\ncopy = [{ src = "../etc", dest = "/x" }]\n',
        [
            "env.toml: $.image.copy[0].src: \"../etc\" is outside the spec's folder (no absolute paths, '..' or links out)"
        ],
    ),
    (
        "copy absolute",
        OK + '[image]\ncopy = [{ src = "/etc", dest = "/x" }]\n',
        [
            "env.toml: $.image.copy[0].src: \"/etc\" is outside the spec's folder (no absolute paths, '..' or links out)"
        ],
    ),
    (
        "copy link out",
        OK + '[image]\ncopy = [{ src = "scripts", dest = "/x" }]\n',
        ['env.toml: $.image.copy[0].src: "scripts" holds a link out of the spec\'s folder: out'],
    ),
    (
        "copy missing",
        OK + '[image]\ncopy = [{ src = "gone", dest = "/x" }]\n',
        ['env.toml: $.image.copy[0].src: "gone" does not exist (looked for {dir}/gone)'],
    ),
    (
        "copy relative dest",
        OK + '[image]\ncopy = [{ src = "scripts/a.sh", dest = "x" }]\n',
        ['env.toml: $.image.copy[0].dest: "x" is not an absolute path (e.g. /opt/lab/scripts)'],
    ),
    (
        "root user",
        OK + '[image]\nuser = "root"\n',
        ['env.toml: $.image.user: "root" is not allowed: the image runs as a non-root user'],
    ),
    (
        "uid 0",
        OK + "[image]\nuid = 0\n",
        ["env.toml: $.image.uid: 0 must be a uid between 1 and 2147483647 (0 is root)"],
    ),
    (
        "relative workdir",
        OK + '[image]\nworkdir = "work"\n',
        ['env.toml: $.image.workdir: "work" is not an absolute path (e.g. /work)'],
    ),
    (
        "cmd not a list",
        OK + '[image]\ncmd = "python3"\n',
        ['env.toml: $.image.cmd: expected a list, got "python3"'],
    ),
    ("env not a string", OK + "[env]\nA = 1\n", ["env.toml: $.env.A: expected a string, got 1"]),
    (
        "env bad name",
        OK + '[env]\n"1A" = "x"\n',
        ['env.toml: $.env: "1A" is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)'],
    ),
    (
        "env NUL",
        OK + '[env]\nB = "a\\u0000b"\n',
        [
            'env.toml: $.env.B: "a\\u0000b" contains a NUL character, which no environment variable can hold'
        ],
    ),
    (
        "job kind",
        OK + '[job]\nkind = "cron"\n',
        ['env.toml: $.job.kind: "cron" is not one of "pod", "job"'],
    ),
    (
        "job time",
        OK + '[job]\ntime = "1:2:3:4"\n',
        [
            'env.toml: $.job.time: "1:2:3:4" is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)'
        ],
    ),
    ("zero time", OK + '[job]\ntime = "0"\n', ['env.toml: $.job.time: "0" is a zero time limit']),
    (
        "registry with tag",
        OK + '[registry]\nrepository = "registry.example.edu/lab/x:1"\n',
        [
            'env.toml: $.registry.repository: "registry.example.edu/lab/x:1" is not a repository (e.g. registry.example.edu/lab/analysis)'
        ],
    ),
    (
        "several problems at once",
        'name = "x"\n[base]\nimage = "debian"\n[apt]\npackages = ["a;b"]\n[resources]\nmemory = "1GB"\ngpu = -2\n',
        [
            f'env.toml: $.apt.packages[0]: "a;b" {APT_HINT}',
            f"env.toml: $.resources.gpu: -2 {GPU}",
            f'env.toml: $.resources.memory: "1GB" {QTY}',
        ],
    ),
]
BAD_SPECS += [
    (
        "byte order mark",
        "\ufeff" + OK,
        [
            "env.toml: starts with a byte order mark (BOM), which TOML does not allow: "
            "save it as UTF-8 without BOM"
        ],
    ),
    (
        "secret_env: bad Secret name, bad key, missing key, unknown field",
        OK
        + "[job.secret_env]\n"
        + 'A = { secret = "Lab_Token", key = "t" }\n'
        + 'B = { secret = "tok", key = "a/b" }\n'
        + 'C = { secret = "tok" }\n'
        + 'D = { secret = "tok", key = "k", optional = true }\n',
        [
            'env.toml: $.job.secret_env.A.secret: "Lab_Token" is not a Secret name '
            "(lowercase letters, digits, '-' and '.', e.g. jupyter-token)",
            'env.toml: $.job.secret_env.B.key: "a/b" is not a Secret key '
            "(letters, digits, '-', '_' and '.')",
            'env.toml: $.job.secret_env.C: missing required key "key"',
            'env.toml: $.job.secret_env.D.optional: unknown key "optional"; known keys: key, secret',
        ],
    ),
    (
        "secret_env and env name the same variable",
        OK + '[env]\nTOKEN = "x"\n[job.secret_env]\nTOKEN = { secret = "tok", key = "t" }\n',
        [
            "env.toml: $.job.secret_env.TOKEN: is also set in [env]; a variable comes from "
            "the image or from a Secret, not both"
        ],
    ),
    (
        "job arrays, queues and GPU models",
        OK
        + '[resources]\ngpu_model = "a100"\n[resources.gpu_map]\na100 = "has space"\n'
        + '[job]\nkind = "pod"\narray = "1-200000:0"\nqueue = "-bad"\n'
        + '[job.queue_map]\ngpu = "ok"\n"bad key" = "q"\n',
        [
            "env.toml: $.job.array: \"1-200000:0\": '1-200000:0' has a step of 0; a step is 1 "
            "or more",
            'env.toml: $.job.array: needs kind "job": an array runs as an Indexed Job, one pod '
            "per index",
            "env.toml: $.job.queue: \"-bad\" is not a queue name (letters, digits, '-', '_' "
            "and '.', at most 63)",
            'env.toml: $.job.queue_map: "bad key" is not a Slurm partition name',
            'env.toml: $.resources.gpu_map.a100: "has space" is not a label value (letters, '
            "digits, '-', '_' and '.', at most 63)",
            "env.toml: $.resources.gpu_model: names a GPU model, but [resources] gpu asks for "
            "none; set gpu = 1 or more",
        ],
    ),
    (
        "job mounts",
        OK
        + '[[job.mounts]]\nsource = "."\ntarget = "/data"\n'
        + '[[job.mounts]]\nsource = ".x"\ntarget = "/tmp"\n'
        + '[[job.mounts]]\nsource = "/a/../b"\ntarget = "/data"\n'
        + '[[job.mounts]]\nsource = "$HOME/x"\ntarget = "/h"\nhost_path = true\n'
        + '[[job.mounts]]\nsource = "rel"\ntarget = "x"\nclaim = "Bad"\n',
        [
            'env.toml: $.job.mounts[1]: source ".x" must be ., ./PATH, /PATH or $HOME/PATH, '
            "without . or .. parts",
            'env.toml: $.job.mounts[1]: target "/tmp": imagesmith mounts /tmp and /dev/shm itself',
            'env.toml: $.job.mounts[2]: source "/a/../b" must be ., ./PATH, /PATH or $HOME/PATH, '
            "without . or .. parts",
            'env.toml: $.job.mounts[2]: target "/data" is mounted twice',
            "env.toml: $.job.mounts[3]: host_path needs a literal absolute source (no $USER or "
            "$HOME, not the submit folder) and no claim",
            'env.toml: $.job.mounts[4]: source "rel" must be ., ./PATH, /PATH or $HOME/PATH, '
            "without . or .. parts",
            'env.toml: $.job.mounts[4].claim: "Bad" is not a claim name (lowercase letters, '
            "digits, '-' and '.')",
            'env.toml: $.job.mounts[4].source: "rel" is not a mount source (., ./PATH, /PATH or '
            "$HOME/PATH; parts: letters, digits, '-', '_', '.', $USER)",
            'env.toml: $.job.mounts[4].target: "x" is not an absolute container path (letters, '
            "digits, '-', '_', '.' and '/')",
        ],
    ),
]
BAD_SPECS[2] = (
    "unknown top-level key",
    'name = "x"\nversoin = "1"\n[base]\nimage = "debian"\n',
    ['env.toml: $.versoin: unknown key "versoin" (did you mean version?)'],
)


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in BAD_SPECS], ids=[name for name, _, _ in BAD_SPECS]
)
def test_bad_spec_lists_every_problem_exactly(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "a.sh").write_text("echo hi\n")
    os.symlink("/etc/passwd", tmp_path / "scripts" / "out")
    spec = tmp_path / "env.toml"
    spec.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert caught.value.problems == [line.format(dir=tmp_path) for line in expected]


def test_a_copy_of_a_pipe_socket_or_device_is_refused_before_the_build(tmp_path: Path) -> None:
    import socket

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("kept\n")
    os.mkfifo(data / "fifo")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(data / "sock"))
    os.symlink("a.txt", data / "inside")  # a link inside the folder is copied as a link
    spec = tmp_path / "env.toml"
    spec.write_text(
        OK + '[image]\ncopy = [{ src = "data", dest = "/x" }, { src = "data/fifo", dest = "/y" }]\n'
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert caught.value.problems == [
        'env.toml: $.image.copy[0].src: "data" holds fifo, a named pipe: only files, folders '
        "and links are copied",
        'env.toml: $.image.copy[0].src: "data" holds sock, a socket: only files, folders and '
        "links are copied",
        'env.toml: $.image.copy[1].src: "data/fifo" is a named pipe: only files, folders and '
        "links are copied",
    ]


def test_at_least_thirty_bad_specs() -> None:
    assert len(BAD_SPECS) >= 30


def test_the_issue_example_validates_exactly_as_written() -> None:
    spec = load_spec(EXAMPLE / "env.toml")
    assert spec.name == "lab-analysis"
    assert spec.env["GREETING"] == 'it\'s "quoted" $HOME and ünïcode'
    assert spec.resources.gpu == 1 and spec.resources.memory == "32Gi"
    assert spec.image.user == "researcher" and spec.image.uid == 10001


def test_default_uid_is_high_and_1000_stays_possible(tmp_path: Path) -> None:
    (tmp_path / "env.toml").write_text(OK)
    assert load_spec(tmp_path / "env.toml").image.uid == 10001
    assert load_spec(tmp_path / "env.toml").image.group_id == 10001
    (tmp_path / "env.toml").write_text(OK + "[image]\nuid = 1000\n")
    explicit = load_spec(tmp_path / "env.toml")
    assert (explicit.image.uid, explicit.image.group_id) == (1000, 1000)


RUNTIME_CHANGES = [
    ('memory = "32Gi"', 'memory = "64Gi"'),
    ("gpu = 1", "gpu = 2"),
    ('command = ["python3"', 'command = ["python3", "-u"'),
    ('repository = "registry.example.edu/lab/analysis"', 'repository = "r.example.edu/x"'),
]


@pytest.mark.parametrize(("old", "new"), RUNTIME_CHANGES)
def test_run_time_settings_leave_the_spec_hash_alone(example_dir: Path, old: str, new: str) -> None:
    path = example_dir / "env.toml"
    before = load_spec(path)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    after = load_spec(path)
    assert after.spec_hash == before.spec_hash
    assert after.image_data == before.image_data
    assert not {"resources", "job", "registry"} & set(after.image_data)
    assert after.data != before.data  # the run-time tables are still read
    path.write_text(text.replace('"git", ', ""))
    assert load_spec(path).spec_hash != before.spec_hash  # what goes into the image counts


def test_a_bad_run_time_table_is_reported_even_with_a_fresh_lock(example_dir: Path) -> None:
    from imagesmith.model.lock import write_lock
    from tests.fixtures.make_lock import make_lock

    path = example_dir / "env.toml"
    write_lock(make_lock(path), example_dir / "env.lock")
    path.write_text(path.read_text().replace('memory = "32Gi"', 'memory = "32GB"'))
    with pytest.raises(SpecError, match=r"\$\.resources\.memory"):
        load_spec(path)


@pytest.mark.parametrize(
    "recipe", sorted(p.name for p in RECIPES.iterdir() if (p / "env.toml").exists())
)
def test_every_recipe_validates(recipe: str) -> None:
    load_spec(RECIPES / recipe / "env.toml")


def test_only_name_and_base_are_required(tmp_path: Path) -> None:
    (tmp_path / "env.toml").write_text(OK)
    spec = load_spec(tmp_path / "env.toml")
    assert spec.python is None and spec.apt_packages == () and spec.image.user == "lab"


def test_spec_hash_ignores_comments_but_not_meaning(tmp_path: Path) -> None:
    path = tmp_path / "env.toml"
    path.write_text(OK)
    first = load_spec(path).spec_hash
    path.write_text("# a comment\n" + OK.replace(" = ", "="))
    assert load_spec(path).spec_hash == first
    path.write_text(OK + "[apt]\npackages = ['git']\n")
    assert load_spec(path).spec_hash != first


def test_requirements_file_is_combined_and_hashed(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("# pinned by hand\nrequests>=2\n\nidna  # comment\n")
    path = tmp_path / "env.toml"
    path.write_text(
        OK + '[python]\nrequirements = ["numpy>=2"]\nrequirements_file = "requirements.txt"\n'
    )
    spec = load_spec(path)
    assert spec.python is not None
    assert spec.python.requirements == ("numpy>=2", "requests>=2", "idna")
    before = spec.spec_hash
    (tmp_path / "requirements.txt").write_text("requests>=3\n")
    assert load_spec(path).spec_hash != before


def test_requirements_file_problems_name_the_line(tmp_path: Path) -> None:
    (tmp_path / "r.txt").write_text("requests\n-e git+https://x\nnumpy>>1\n")
    path = tmp_path / "env.toml"
    path.write_text(OK + '[python]\nrequirements_file = "r.txt"\n')
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.problems == [
        "env.toml: $.python.requirements_file: r.txt:2: pip option -e (an editable install) is "
        "not supported: the image installs wheels; build one and serve it from an index",
        'env.toml: $.python.requirements_file: r.txt:3: "numpy>>1" is not a PEP 508 requirement '
        "(e.g. numpy>=2 or requests[socks]==2.32.3)",
    ]


H1, H2, H3 = ("a" * 64, "b" * 64, "c" * 64)

#: What `pip-compile --generate-hashes` (and `uv pip compile --generate-hashes`) write.
PIP_COMPILE = f"""#
# This file is autogenerated by pip-compile with Python 3.11
#
--index-url https://pypi.org/simple

idna==3.7 \\
    --hash=sha256:{H1} \\
    --hash=sha256:{H2.upper()}
    # via requests
pyyaml==6.0.1 ; python_version >= "3.8" \\
    --hash=sha256:{H3}
"""


def test_a_pip_compile_output_with_hashes_is_read_as_pip_reads_it(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text(PIP_COMPILE)
    path = tmp_path / "env.toml"
    path.write_text(OK + '[python]\nrequirements_file = "requirements.txt"\n')
    spec = load_spec(path)
    assert spec.python is not None
    assert spec.python.requirements == ("idna==3.7", 'pyyaml==6.0.1 ; python_version >= "3.8"')
    assert spec.python.hashes == (("idna", (H1, H2)), ("pyyaml", (H3,)))
    assert spec.python.file_requirements == (
        f"idna==3.7 --hash=sha256:{H1} --hash=sha256:{H2}",
        f'pyyaml==6.0.1 ; python_version >= "3.8" --hash=sha256:{H3}',
    )
    # A hash is part of the spec: another one is another spec (and another lock).
    before = spec.spec_hash
    (tmp_path / "requirements.txt").write_text(PIP_COMPILE.replace(H3, "d" * 64))
    assert load_spec(path).spec_hash != before


def test_a_requirements_file_saved_with_a_bom_and_crlf_is_read(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_bytes(b"\xef\xbb\xbfnumpy>=2\r\nidna\r\n")
    path = tmp_path / "env.toml"
    path.write_text(OK + '[python]\nrequirements_file = "requirements.txt"\n')
    spec = load_spec(path)
    assert spec.python is not None and spec.python.requirements == ("numpy>=2", "idna")


def test_requirements_files_include_others_as_pip_does(tmp_path: Path) -> None:
    """``-r FILE`` is relative to the file that names it, read in place, inside the spec's
    folder; a file that includes itself, or one outside the folder, is one line each."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "requirements.txt").write_text("numpy\n-r sub/extra.txt\nidna\n")
    (tmp_path / "sub" / "extra.txt").write_text("--requirement=base.txt\nrequests\n")
    (tmp_path / "sub" / "base.txt").write_text("pyyaml\n")
    path = tmp_path / "env.toml"
    path.write_text(OK + '[python]\nrequirements_file = "requirements.txt"\n')
    spec = load_spec(path)
    assert spec.python is not None
    assert spec.python.requirements == ("numpy", "pyyaml", "requests", "idna")
    before = spec.spec_hash
    (tmp_path / "sub" / "base.txt").write_text("pyyaml==6.0.1\n")
    assert load_spec(path).spec_hash != before  # an included file is part of the spec

    (tmp_path / "sub" / "base.txt").write_text("-r ../requirements.txt\n-r ../../x.txt\n-r .\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.problems == [
        "env.toml: $.python.requirements_file: base.txt:1: ../requirements.txt includes itself",
        "env.toml: $.python.requirements_file: base.txt:2: ../../x.txt is outside the spec's "
        "folder",
        "env.toml: $.python.requirements_file: base.txt:3: . is not a file",
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("-c constraints.txt", "pip option -c (a constraints file) is not supported; pin"),
        ("--extra-index-url https://x", "pip option --extra-index-url is not supported here; use"),
        ("-i https://mirror.example/simple", "pip option -i is not supported here; use [python]"),
        ("--pre", "pip option --pre is not supported in a requirements_file"),
        (f"idna --hash=sha512:{H1}", f"--hash=sha512:{H1}: only sha256 hashes can be checked"),
        ("idna --no-binary :all:", "pip option --no-binary is not supported in a requir"),
        ("-r missing.txt", "missing.txt does not exist"),
    ],
)
def test_each_unsupported_pip_option_is_one_line(tmp_path: Path, line: str, problem: str) -> None:
    (tmp_path / "r.txt").write_text(f"requests\n{line}\n")
    path = tmp_path / "env.toml"
    path.write_text(OK + '[python]\nrequirements_file = "r.txt"\n')
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    (only,) = caught.value.problems
    assert only.startswith(f"env.toml: $.python.requirements_file: r.txt:2: {problem}")


def test_missing_spec_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "env.toml")
    assert "no such file" in caught.value.problems[0]


def test_a_folder_given_as_the_spec_names_the_spec_in_it(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    assert caught.value.problems == [
        f"{tmp_path}: a folder, with no env.toml in it: name the spec file"
    ]
    (tmp_path / "env.toml").write_text((EXAMPLE / "env.toml").read_text())
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path)
    assert caught.value.problems == [
        f"{tmp_path}: a folder; its spec is {tmp_path / 'env.toml'}: name that file"
    ]


CREDENTIAL_SPEC = """
name = "x"
[base]
image = "debian:bookworm"
[python]
requirements = ["numpy"]
index_url = "https://alice:s3cr3t-token@pypi.example.edu/simple"
extra_index_urls = [
    "https://__token__@pypi.example.edu/simple",
    "https://ok.example.edu/simple",
    "https://ok.example.edu/path/@scope/simple",
]
[env]
PIP_INDEX_URL = "https://bob:pw@x.example/simple"
REPO = "ssh://git@git.example.edu/lab/code"
[image]
labels = { "org.opencontainers.image.source" = "https://u:p@git.example.edu/lab" }
"""


def test_credentials_in_the_spec_are_refused_with_how_to_give_them(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from imagesmith.cli import app

    spec = tmp_path / "env.toml"
    spec.write_text(CREDENTIAL_SPEC)
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "$.env.PIP_INDEX_URL",
        '$.image.labels["org.opencontainers.image.source"]',
        "$.python.extra_index_urls[0]",
        "$.python.index_url",
    ]
    assert "~/.netrc" in lines[3] and "docs/troubleshooting.md#private-package-indexes" in lines[3]
    assert "[job] secret_env" in lines[0]


def test_url_credentials_are_spotted_only_in_the_user_part() -> None:
    from imagesmith.model.spec_checks import url_has_credentials

    assert url_has_credentials("https://alice:tok@host/simple")
    assert url_has_credentials("https://tok@host/simple")
    assert url_has_credentials("http://:tok@127.0.0.1:8080/")
    assert not url_has_credentials("https://host/simple")
    assert not url_has_credentials("https://host/simple/@scope")
    assert not url_has_credentials("https://host:8443/simple?x=a@b")
    assert not url_has_credentials("file:///srv/wheels")


def test_a_lock_made_before_the_rule_does_not_let_credentials_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spec that an intact lock vouches for skips the schema (validation's fast path):
    credentials are still checked there (a lock made by an older imagesmith let them in)."""
    from imagesmith.model.spec_loading import load_spec

    spec = tmp_path / "env.toml"
    spec.write_text(CREDENTIAL_SPEC)
    monkeypatch.setattr("imagesmith.model.spec_loading._validated_when_locked", lambda *_: True)
    with pytest.raises(SpecError, match=r"\$\.python\.index_url: holds a user name or password"):
        load_spec(spec)


def test_checking_a_spec_does_not_import_a_slow_optional_module(tmp_path: Path) -> None:
    """jsonschema imports rfc3987_syntax when it is installed, which builds a grammar for
    seconds; imagesmith never needs it (no schema of ours uses `format`)."""
    import subprocess
    import sys

    (tmp_path / "rfc3987_syntax.py").write_text("raise SystemExit('imported rfc3987_syntax')\n")
    spec = tmp_path / "env.toml"
    spec.write_text(OK + 'versoin = "1"\n')  # invalid: the schema check runs
    result = subprocess.run(
        [sys.executable, "-c", "from imagesmith.cli import main; main()", "validate", str(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 2, result.stderr
    assert "unknown key" in result.stderr and "rfc3987" not in result.stderr
