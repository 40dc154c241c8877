"""`build --on kubernetes` without a cluster or an engine: the build context (its bytes,
what it holds, how it unpacks), the Job it writes (checked by kubernetes-validate), which
context a pod picks, and the refusals (issue 15, item 4). The pod building for real under
`podman kube play` is tests/integration/test_kube_build.py."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.cluster import kube_build
from imagesmith.errors import InputError, RegistryError
from imagesmith.model.spec_loading import load_spec
from tests.support import TINY_SPEC, locked, tool, write_spec

runner = CliRunner()

SPEC_WITH_FILES = (
    TINY_SPEC
    + """
[image]
copy = [{ src = "code", dest = "/opt/code" }, { src = "run.sh", dest = "/usr/local/bin/run.sh" }]

[registry]
repository = "registry.example.edu/lab/analysis"
"""
)


def _spec(folder: Path) -> Path:
    spec = write_spec(
        folder,
        SPEC_WITH_FILES,
        files={"code/a.py": "print(1)\n", "code/pkg/b.py": "B = 2\n", "run.sh": "#!/bin/sh\n"},
    )
    (folder / "run.sh").chmod(0o755)
    (folder / "code" / "link.py").symlink_to("a.py")
    (folder / "unrelated.csv").write_text("not part of the build\n")
    locked(spec)
    return spec


def test_the_context_holds_what_the_build_reads_and_nothing_else(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path / "lab"))
    names = [name for name, _ in kube_build.context_members(spec)]
    assert names == [
        "code/a.py",
        "code/link.py",
        "code/pkg/b.py",
        "env.lock",
        "env.toml",
        "run.sh",
    ]
    with tarfile.open(fileobj=io.BytesIO(kube_build.context_tar(spec))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["run.sh"].mode == 0o755 and members["env.toml"].mode == 0o644
    assert members["code/link.py"].issym() and members["code/link.py"].linkname == "a.py"
    assert {m.mtime for m in members.values()} == {0}
    assert {m.uid for m in members.values()} == {0}


def test_the_same_files_give_the_same_context_bytes(tmp_path: Path) -> None:
    first = load_spec(_spec(tmp_path / "one"))
    data = kube_build.context_tar(first)
    os.utime(tmp_path / "one" / "code" / "a.py", (1, 1))
    assert kube_build.context_tar(first) == data  # times are not part of it
    second = load_spec(_spec(tmp_path / "two"))  # the same files in another folder
    assert kube_build.context_tar(second) == data
    (tmp_path / "one" / "code" / "a.py").write_text("print(2)\n")
    assert kube_build.context_tar(first) != data


def test_a_context_unpacks_to_a_spec_that_loads(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path / "lab"))
    into = tmp_path / "unpacked"
    into.mkdir()
    kube_build._extract(kube_build.context_tar(spec), into, label="ctx")
    again = load_spec(into / "env.toml")
    assert again.spec_hash == spec.spec_hash
    assert (into / "code" / "link.py").resolve() == (into / "code" / "a.py").resolve()
    assert os.access(into / "run.sh", os.X_OK)


def _tar(name: str, *, link: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_tar("../escape"), "outside it"),
        (_tar("/etc/passwd"), "outside it"),
        (_tar("out", link="../../etc/passwd"), "links outside"),
        (_tar("out", link="/etc/passwd"), "links outside"),
    ],
)
def test_a_context_cannot_write_outside_its_folder(tmp_path: Path, data: bytes, why: str) -> None:
    into = tmp_path / "ctx"
    into.mkdir()
    with pytest.raises(RegistryError, match=why):
        kube_build._extract(data, into, label="ctx")
    assert not (tmp_path / "escape").exists()


def _targets(tmp_path: Path, count: int) -> list[kube_build.BuildTarget]:
    targets = []
    for index in range(count):
        spec = load_spec(_spec(tmp_path / f"lab{index}"))
        digest = f"sha256:{index:064x}"
        targets.append(kube_build.BuildTarget(spec, f"registry.example.edu/lab/analysis@{digest}"))
    return targets


@pytest.mark.parametrize("count", [1, 3])
def test_the_job_passes_kubernetes_validate_strict(tmp_path: Path, count: int) -> None:
    targets = _targets(tmp_path, count)
    job = kube_build.render_job(
        targets,
        builder="registry.example.edu/lab/imagesmith-builder@sha256:" + "b" * 64,
        registry_secret="lab-registry",
    )
    path = tmp_path / "build.yaml"
    path.write_text(kube_build.job_yaml(job, targets))
    checked = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    loaded = yaml.safe_load(path.read_text())
    pod = loaded["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["build-from", *(t.context for t in targets)]
    assert pod["hostUsers"] is False  # root in the pod is not root on the node
    assert container["securityContext"].get("privileged") is not True
    assert {v["mountPath"] for v in container["volumeMounts"]} >= {"/var/lib/containers"}
    assert pod["imagePullSecrets"] == [{"name": "lab-registry"}]
    if count == 1:
        assert "completionMode" not in loaded["spec"]
    else:
        assert loaded["spec"]["completionMode"] == "Indexed"
        assert loaded["spec"]["completions"] == count
    assert len(loaded["metadata"]["name"]) <= 63


def test_a_pod_builds_the_context_of_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    contexts = ["r@sha256:" + "0" * 64, "r@sha256:" + "1" * 64]
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert kube_build.pick_context(contexts[:1], None) == contexts[0]
    with pytest.raises(InputError, match="give --index N"):
        kube_build.pick_context(contexts, None)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert kube_build.pick_context(contexts, None) == contexts[1]
    assert kube_build.pick_context(contexts, 0) == contexts[0]
    with pytest.raises(InputError, match=r"there are 2 contexts \(0-1\)"):
        kube_build.pick_context(contexts, 2)


def test_the_builder_goes_beside_the_first_repository(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path / "lab"))
    assert kube_build.builder_repository(spec) == "registry.example.edu/lab/imagesmith-builder"


def test_init_of_the_builder_recipe_writes_this_imagesmiths_wheel(tmp_path: Path) -> None:
    from imagesmith.inputs.tool_wheel import tool_wheel, wheel_name

    result = runner.invoke(app, ["init", "--recipe", "imagesmith-builder", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    wheel = tmp_path / "b" / "wheel" / wheel_name()
    assert wheel.read_bytes() == tool_wheel()[1]
    assert load_spec(tmp_path / "b" / "env.toml").name == "imagesmith-builder"


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--wait"], "--wait: not with --on kubernetes"),
        (["--jobs", "2"], "--jobs: not with --on kubernetes"),
        (["--json"], "--json with --on kubernetes needs -o FILE"),
        (["--registry-secret", "Lab_Registry"], "--registry-secret 'Lab_Registry': not a Secret"),
    ],
)
def test_slurm_and_local_options_are_refused(tmp_path: Path, extra: list[str], said: str) -> None:
    spec = _spec(tmp_path / "lab")
    result = runner.invoke(app, ["build", str(spec), "--on", "kubernetes", *extra])
    assert result.exit_code == 2
    assert said in result.output
    assert "Traceback" not in result.output


def test_kubernetes_options_need_on_kubernetes(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "lab")
    result = runner.invoke(app, ["build", str(spec), "-o", "x.yaml", "--builder", "r@sha256:1"])
    assert result.exit_code == 2
    assert "--output and --builder: these go with --on kubernetes" in result.output


def test_a_spec_without_registry_is_refused_before_anything_runs(tmp_path: Path) -> None:
    good = _spec(tmp_path / "good")
    bare = write_spec(tmp_path / "bare")
    out = tmp_path / "build.yaml"
    result = runner.invoke(
        app, ["build", str(good), str(bare), "--on", "kubernetes", "-o", str(out)]
    )
    assert result.exit_code == 2
    assert f"{bare}: --on kubernetes ships the build context through the registry" in result.output
    assert not out.exists()


def test_a_folder_without_specs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["build", str(tmp_path / "empty"), "--on", "kubernetes"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "no env.toml" in result.output or "no specs" in result.output


#: What checkov finds in the build Job, each for a reason docs/catalogue.md gives: building
#: in a pod needs root (in the pod's own user namespace), SYS_ADMIN, and so privilege
#: escalation; podman writes to its root file system; the namespace and the
#: NetworkPolicy are the cluster's to choose.
BUILD_JOB_FINDINGS = {
    "CKV_K8S_20",  # allowPrivilegeEscalation: Kubernetes refuses SYS_ADMIN without it
    "CKV_K8S_21",  # no namespace: kubectl's context decides
    "CKV_K8S_22",  # a writable root file system: podman writes /run, /var/tmp
    "CKV_K8S_23",  # root: in the pod's own user namespace (hostUsers: false)
    "CKV_K8S_25",  # added capabilities: the list in kube_build.CAPABILITIES
    "CKV_K8S_39",  # SYS_ADMIN: overlay and chroot mounts
    "CKV2_K8S_6",  # no NetworkPolicy: the cluster's
}


def test_checkov_finds_in_the_build_job_only_what_building_needs(tmp_path: Path) -> None:
    import json

    targets = _targets(tmp_path, 1)
    job = kube_build.render_job(targets, builder="r.example/b@sha256:" + "b" * 64)
    path = tmp_path / "build.yaml"
    path.write_text(kube_build.job_yaml(job, targets))
    args = [tool("checkov"), "--framework", "kubernetes", "--skip-download", "-o", "json"]
    done = subprocess.run([*args, "--compact", "-f", str(path)], capture_output=True, text=True)
    report = json.loads(done.stdout)
    assert report["summary"]["parsing_errors"] == 0
    found = {check["check_id"] for check in report["results"]["failed_checks"]}
    assert found == BUILD_JOB_FINDINGS


def test_an_unreachable_registry_is_one_line_before_anything_is_built(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = write_spec(
        tmp_path / "lab", TINY_SPEC + f'\n[registry]\nrepository = "127.0.0.1:{port}/lab/a"\n'
    )
    result = runner.invoke(app, ["build", str(spec), "--on", "kubernetes", "-o", "b.yaml"])
    assert result.exit_code == 1, result.output
    assert f"127.0.0.1:{port}/lab/a: cannot reach registry 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not spec.with_suffix(".lock").exists()  # nothing locked, nothing built


def test_the_packaged_builder_pushes_beside_the_spec_with_this_imagesmith(tmp_path: Path) -> None:
    from imagesmith.inputs.tool_wheel import tool_wheel, wheel_name

    folder = tmp_path / "builder"
    spec = kube_build.prepare_builder(folder, repository="reg.example/lab/imagesmith-builder")
    loaded = load_spec(spec)
    assert loaded.registry_repository == "reg.example/lab/imagesmith-builder"
    assert [p.name for p in (folder / "wheel").glob("*.whl")] == [wheel_name()]
    # An older imagesmith's wheel goes: the image installs exactly one.
    (folder / "wheel" / wheel_name()).unlink()
    (folder / "wheel" / "imagesmith-0.1.0-py3-none-any.whl").write_bytes(b"old")
    (folder / "storage.conf").unlink()  # as a run killed half-way may leave it
    again = kube_build.prepare_builder(folder, repository="elsewhere.example/x")
    assert load_spec(again).registry_repository == "elsewhere.example/x"
    assert (folder / "storage.conf").is_file()
    assert [p.read_bytes() for p in (folder / "wheel").glob("*.whl")] == [tool_wheel()[1]]
