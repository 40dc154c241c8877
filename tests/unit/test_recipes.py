"""The ready specs under recipes/: each one validates, renders, and makes a manifest that passes.

Every recipe becomes a Job or Pod through `render_manifest` (with a made-up digest: no build,
no engine) and goes through `kubernetes-validate --strict` and `checkov`, the validators
tests/unit/test_manifests.py uses; a missing validator fails the test. `imagesmith init
--recipe NAME` must write each one, and `init --list` must show its README's first sentence.

The recipes added for labs (python-science, jupyter, pytorch-gpu, r-base) run as uid 10001,
which checkov's CKV_K8S_40 (uid >= 10000) asks for and which never collides with a user on
the node. None sets [job] namespace: a namespace written into the manifest makes `kubectl
apply -n LAB` fail for every lab whose namespace has another name, so the manifest follows
kubectl's context (or -n) instead, and checkov's CKV_K8S_21 (default namespace) is the one
check they are expected to fail; a lab that sets `namespace` passes it too (checked below).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.model.lock import AptLock, AptPackage, BaseImageLock, Lock, PythonLock, copy_locks
from imagesmith.model.reference import parse_reference
from imagesmith.model.spec import Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.outputs.kubernetes import render_manifest
from imagesmith.recipebook import available_recipes
from imagesmith.render.containerfile import render
from tests.conftest import RECIPES, REPO
from tests.support import tool

ALL = sorted(p.name for p in RECIPES.iterdir() if (p / "env.toml").is_file())
NEW = ("jupyter", "python-science", "pytorch-gpu", "r-base")
DIGEST = "sha256:" + "5e" * 32
LOCK_HASH = "sha256:" + "0123456789abcdef" * 4
#: Checks that do not apply to what imagesmith generates (see tests/unit/test_manifests.py):
#: liveness and readiness probes, for a run-to-completion job or an interactive Pod.
NOT_FOR_BATCH = {"CKV_K8S_8", "CKV_K8S_9"}
runner = CliRunner()


def spec_of(name: str) -> Spec:
    return load_spec(RECIPES / name / "env.toml")


def image_for(spec: Spec) -> str:
    return f"registry.example.edu/lab/{spec.name}@{DIGEST}"


def manifest_of(spec: Spec) -> str:
    return render_manifest(
        spec,
        image=image_for(spec),
        uid=spec.image.uid,
        gid=spec.image.group_id,
        lock_hash=LOCK_HASH,
    )


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = (
        workload["spec"]["template"]["spec"] if workload["kind"] == "Job" else workload["spec"]
    )
    return found


def test_the_lab_recipes_are_there() -> None:
    assert set(NEW) <= set(ALL)


# -- what each recipe says -------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_new_recipes_share_the_conventions(name: str) -> None:
    spec = spec_of(name)
    assert spec.name == name
    assert spec.image.uid >= 10000 and spec.image.user != "root"
    assert spec.image.workdir == "/work"
    assert spec.job.namespace is None
    assert spec.job.time is not None  # nothing holds its resources forever
    assert spec.resources.cpu is not None and spec.resources.memory is not None
    assert spec.base_image == "debian:bookworm"  # pytorch-gpu too: its wheels bring CUDA
    threads = spec.env.get("OMP_NUM_THREADS")
    assert threads is None or threads == spec.resources.cpu


def test_python_science() -> None:
    spec = spec_of("python-science")
    assert spec.python is not None
    wanted = {"numpy", "scipy", "pandas", "matplotlib", "h5py"}
    assert {re.split(r"[<>=!~ \[]", r)[0] for r in spec.python.requirements} == wanted
    assert "libhdf5-103-1" in spec.apt_packages
    assert spec.env["MPLBACKEND"] == "Agg" and spec.env["MPLCONFIGDIR"].startswith("/tmp/")


def test_jupyter_is_an_interactive_pod_with_no_token_in_the_image() -> None:
    spec = spec_of("jupyter")
    assert spec.job.kind == "pod" and spec.job.command is None  # the image's cmd runs
    assert spec.image.ports == (8888,)
    assert spec.image.cmd is not None and spec.image.cmd[:2] == ("jupyter", "lab")
    assert "--ip=0.0.0.0" in spec.image.cmd and "--port=8888" in spec.image.cmd
    # Jupyter reads JUPYTER_TOKEN itself; the spec must not bake a token into the image.
    assert "JUPYTER_TOKEN" not in spec.env and "JUPYTER_TOKEN" in spec.job.secret_env
    assert not any("token" in word.lower() for word in spec.image.cmd)
    for key in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
        assert spec.env[key].startswith("/tmp/"), key  # the root filesystem is read-only
    pod = documents(manifest_of(spec))[0]
    assert pod["kind"] == "Pod"
    container = pod["spec"]["containers"][0]
    assert "command" not in container and "args" not in container
    assert pod["spec"]["activeDeadlineSeconds"] == 8 * 3600


def test_jupyter_adds_packages_at_run_time_where_the_pod_can_write() -> None:
    """%pip install: the venv carries a pinned pip, and [env] sends it to a folder on a
    writable volume of the generated Pod that the kernel imports from (its README says how;
    tests/integration/test_jupyter_pip.py runs it)."""
    spec = spec_of("jupyter")
    assert spec.python is not None
    assert "pip" in {re.split(r"[<>=!~ \[]", r)[0] for r in spec.python.requirements}
    prefix = spec.env["PIP_PREFIX"]
    assert spec.env["PYTHONPATH"] == f"{prefix}/lib/python3.11/site-packages"  # bookworm's
    pod = documents(manifest_of(spec))[0]
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {
        m["mountPath"]
        for m in container["volumeMounts"]
        if not m.get("readOnly")
        and "emptyDir" in next(v for v in pod["spec"]["volumes"] if v["name"] == m["name"])
    }
    assert any(prefix == w or prefix.startswith(w + "/") for w in writable), (prefix, writable)
    assert not prefix.startswith("/opt/venv")
    readme = (RECIPES / "jupyter" / "README.md").read_text()
    assert "%pip install NAME" in readme and f"PIP_PREFIX={prefix}" in readme
    assert spec.env["PYTHONPATH"] in readme


def test_r_base_has_no_python() -> None:
    spec = spec_of("r-base")
    assert spec.python is None
    assert {"r-base-core", "r-cran-data.table", "r-cran-ggplot2"} <= set(spec.apt_packages)
    assert spec.image.cmd == ("R", "--vanilla")


def test_pytorch_gpu_job_has_one_gpu_requests_equal_limits_and_8gi_shm() -> None:
    spec = spec_of("pytorch-gpu")
    # A plain base: the torch wheels bring CUDA 12.4; a CUDA base would be a second copy.
    assert spec.base_image == "debian:bookworm" and not spec.apt_packages
    assert spec.python is not None and "torch==2.6.0" in spec.python.requirements
    # The NVIDIA runtime mounts libcuda only when asked for "compute" (CUDA images ask).
    assert "compute" in spec.env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    job, policy = documents(manifest_of(spec))
    assert job["kind"] == "Job" and policy["kind"] == "NetworkPolicy"
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    assert job["spec"]["backoffLimit"] == 0
    pod = pod_spec(job)
    (container,) = pod["containers"]
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["limits"]["cpu"] == "8" and resources["limits"]["memory"] == "32Gi"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert container["image"] == image_for(spec)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_reference_recipe_runs_only_what_its_image_holds() -> None:
    """The tour's Job (lab-analysis) must run as shipped: no GPU for a numpy job, and a
    command whose program and files are in the image (the venv's python3, and the script
    [image] copy puts there from beside env.toml)."""
    import ast
    import sys

    spec = spec_of("lab-analysis")
    assert spec.resources.gpu == 0
    assert spec.python is not None and spec.job.command is not None
    program, *arguments = spec.job.command
    assert program == "python3"  # the venv's, first on PATH in every image with [python]
    copied = {item.dest: RECIPES / "lab-analysis" / item.src for item in spec.image.copy}
    paths = [a for a in arguments if a.startswith("/")]
    assert paths, "the command runs a file"
    for path in paths:
        assert path in copied, f"{path} is not put in the image by [image] copy"
        assert copied[path].is_file(), f"{copied[path]} is not in the recipe"
    assert not [a for a in arguments if not a.startswith(("/", "-"))], "relative paths"
    # The script imports only the standard library and what [python] installs.
    script = ast.parse(copied[paths[0]].read_text())
    imported = {
        name.split(".")[0]
        for node in ast.walk(script)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    requirements = {re.split(r"[<>=!~ \[]", r)[0] for r in spec.python.requirements}
    assert imported - set(sys.stdlib_module_names) <= requirements, imported

    text = render(fake_lock(spec))
    assert "/opt/lab/train.py" in text
    job = documents(manifest_of(spec))[0]
    (container,) = pod_spec(job)["containers"]
    assert [*container.get("command", []), *container.get("args", [])] == list(spec.job.command)
    assert not any("gpu" in key for key in container["resources"]["limits"])
    assert "/dev/shm" not in {m["mountPath"] for m in container["volumeMounts"]}


# -- every recipe through the validators -------------------------------------------------------


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("recipe-manifests")
    found: dict[str, Path] = {}
    for name in ALL:
        path = folder / f"{name}.yaml"
        path.write_text(manifest_of(spec_of(name)), encoding="utf-8")
        found[name] = path
        namespaced = dataclasses.replace(
            spec_of(name), job=dataclasses.replace(spec_of(name).job, namespace="lab")
        )
        path = folder / f"{name}-namespaced.yaml"
        path.write_text(manifest_of(namespaced), encoding="utf-8")
        found[f"{name}-namespaced"] = path
    return found


def test_every_recipe_manifest_passes_kubernetes_validate_strict(
    manifests: dict[str, Path],
) -> None:
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", *map(str, manifests.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    passed = [line for line in done.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == 2 * len(manifests), done.stdout  # workload + NetworkPolicy each


def expected_checkov_failures(name: str) -> set[str]:
    spec = spec_of(name.removesuffix("-namespaced"))
    expected = set()
    if not name.endswith("-namespaced"):
        expected.add("CKV_K8S_21")  # no [job] namespace: kubectl's context decides
    if spec.image.uid < 10000:
        expected.add("CKV_K8S_40")  # a uid people have on hosts (none of the recipes)
    if spec.job.secret_env:
        expected.add("CKV_K8S_35")  # jupyter: a Secret as a variable, which Jupyter reads
    return expected


def test_checkov_finds_only_what_the_recipes_chose(manifests: dict[str, Path]) -> None:
    args = [tool("checkov"), "--framework", "kubernetes", "--skip-download", "-o", "json"]
    for path in manifests.values():
        args += ["-f", str(path)]
    done = subprocess.run([*args, "--compact"], capture_output=True, text=True, check=False)
    assert done.stdout.strip(), done.stderr
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed: dict[str, set[str]] = {name: set() for name in manifests}
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        for check in report["results"]["failed_checks"]:
            failed[Path(check["file_path"]).stem].add(check["check_id"])
    for name in manifests:
        assert failed[name] - NOT_FOR_BATCH == expected_checkov_failures(name), name


# -- the Containerfile of each new recipe, from a lock made without any network ---------------


def fake_lock(spec: Spec) -> Lock:
    """A lock with made-up pins: what `imagesmith lock` would write, minus the network."""
    ref = parse_reference(spec.base_image)
    packages = [*spec.apt_packages]
    if spec.python is not None:
        packages += [p for p in ("python3", "python3-venv") if p not in packages]
    python = None
    if spec.python is not None:
        python = PythonLock(version="3.11", platform="x86_64-manylinux_2_36")
    return Lock(
        spec_hash=spec.spec_hash,
        inputs_hash=DIGEST,
        platform="linux/amd64",
        source_date_epoch=1747699200,
        spec_data=spec.image_data,
        spec_path=spec.path,
        base=BaseImageLock(
            reference=spec.base_image, repository=ref.familiar_repository, digest=DIGEST
        ),
        apt=AptLock(
            suite="jammy" if "ubuntu" in spec.base_image else "bookworm",
            packages=tuple(
                AptPackage(
                    name=p,
                    version="1.0-1",
                    arch="amd64",
                    requested=True,
                    sha256="ab" * 32,
                    path=f"pool/main/{p[0]}/{p}/{p}_1.0-1_amd64.deb",
                    size=1000,
                    source="http://deb.debian.org/debian",
                )
                for p in sorted(packages)
            ),
        ),
        python=python,
        copy=copy_locks(spec),
    )


@pytest.mark.parametrize("name", NEW)
def test_new_recipes_render_a_containerfile_hadolint_accepts(name: str, tmp_path: Path) -> None:
    spec = spec_of(name)
    text = render(fake_lock(spec))
    repository = parse_reference(spec.base_image).familiar_repository
    assert f"FROM {repository}@{DIGEST} AS system" in text
    assert f"USER {spec.image.uid}:{spec.image.group_id}" in text
    assert ("python3 -m venv --without-pip /opt/venv" in text) == (spec.python is not None)
    for port in spec.image.ports:
        assert f"EXPOSE {port}/tcp" in text
    path = tmp_path / "Containerfile"
    path.write_text(text)
    hadolint = shutil.which("hadolint", path=str(REPO / ".venv" / "bin")) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is not installed: run scripts/setup-venv.sh"
    done = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


# -- imagesmith init ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_init_writes_each_recipe(name: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / name), "--recipe", name])
    assert result.exit_code == 0, result.output
    written = tmp_path / name / "env.toml"
    assert written.read_text() == (RECIPES / name / "env.toml").read_text()
    for item in load_spec(RECIPES / name / "env.toml").image.copy:  # what the image takes
        assert (tmp_path / name / item.src).exists(), item.src
    checked = runner.invoke(app, ["validate", str(written)])
    assert checked.exit_code == 0, checked.output


def test_init_list_shows_each_readme_first_sentence() -> None:
    result = runner.invoke(app, ["init", "--list"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines()}
    assert sorted(listed) == ALL
    for name in ALL:
        readme = (RECIPES / name / "README.md").read_text().splitlines()
        assert readme[0] == f"# {name}" and readme[1] == ""
        first_sentence = readme[2].split(". ")[0].rstrip(".")
        assert listed[name] == first_sentence == available_recipes()[name]
        if name in NEW:
            assert 20 <= len(first_sentence) <= 120, name  # one line of `init --list`


# -- the jupyter token: from the Secret the README makes ------------------------------------------


def test_jupyter_pod_takes_its_token_from_the_secret_the_readme_makes(tmp_path: Path) -> None:
    spec = spec_of("jupyter")
    manifest = manifest_of(spec)
    pod = next(d for d in documents(manifest) if d["kind"] == "Pod")
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["JUPYTER_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "jupyter-token", "key": "JUPYTER_TOKEN"}
    assert container["ports"] == [{"containerPort": 8888, "protocol": "TCP"}]
    readme = (RECIPES / "jupyter" / "README.md").read_text()
    # The README's commands make that very Secret and key, and read the token back from it.
    assert f"kubectl create secret generic {ref['name']} --from-literal={ref['key']}=" in readme
    assert f"kubectl get secret {ref['name']} -o jsonpath='{{.data.{ref['key']}}}'" in readme
    path = tmp_path / "jupyter.yaml"
    path.write_text(manifest)
    check = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
