"""render_manifest / render_sbatch: exact output for the example spec, then real validators.

Every manifest these tests generate also goes through `kubernetes-validate --strict` (the
API schemas, offline) and `checkov` (security policy); both live in .venv-tools because
their pins clash with pytest's. A missing validator fails the test: it is part of the suite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagesmith.errors import InputError
from imagesmith.model.spec import CopyItem, Mount, SecretRef, Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.outputs.kubernetes import render_manifest
from imagesmith.outputs.names import dns_label, label_value
from imagesmith.outputs.pod_spec import ARRAY_LOOKUP
from imagesmith.outputs.sbatch import render_sbatch
from imagesmith.outputs.sbatch_parse import apply_overrides, parse_sbatch
from tests.conftest import EXAMPLE, REPO
from tests.fixtures.golden import check_golden

IMAGE = "registry.example.edu/lab/analysis@sha256:" + "ab" * 32
LOCK_HASH = "sha256:" + "0123456789abcdef" * 4
SBATCH = REPO / "tests" / "fixtures" / "sbatch"
SECRET_ENV = {"API_TOKEN": SecretRef("lab-api", "token"), "DB_PASSWORD": SecretRef("db.lab", "pw")}


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(EXAMPLE / "env.toml")


def documents(text: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(text))


def header(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def labels(spec: Spec, name: str = "lab-analysis") -> dict[str, str]:
    return {
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "imagesmith",
        "app.kubernetes.io/name": "lab-analysis",
        "app.kubernetes.io/version": "1.0.0",
        "imagesmith.dev/lock-hash": ("0123456789abcdef" * 4)[:63],
    }


def annotations_for(spec: Spec) -> dict[str, str]:
    return {
        "imagesmith.dev/image": IMAGE,
        "imagesmith.dev/lock-hash": LOCK_HASH,
        "imagesmith.dev/spec-hash": spec.spec_hash,
    }


def pod_spec(*, deadline: int | None = None) -> dict[str, Any]:
    amounts = {"cpu": "2", "memory": "32Gi", "nvidia.com/gpu": 1}
    spec: dict[str, Any] = {"restartPolicy": "Never"}
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    spec |= {
        "automountServiceAccountToken": False,
        "securityContext": {
            "fsGroup": 1000,
            "runAsGroup": 1000,
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "lab-analysis",
                "image": IMAGE,
                "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "train.py"],
                "env": [
                    {"name": "GREETING", "value": 'it\'s "quoted" $HOME and ünïcode'},
                    {"name": "OMP_NUM_THREADS", "value": "1"},
                ],
                "workingDir": "/work",
                "resources": {"requests": dict(amounts), "limits": dict(amounts)},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                },
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "workdir", "mountPath": "/work"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "workdir", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        ],
    }
    return spec


def network_policy(spec: Spec, name: str = "lab-analysis") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": labels(spec, name)},
        "spec": {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": name,
                    "app.kubernetes.io/managed-by": "imagesmith",
                }
            },
            "policyTypes": ["Ingress"],
        },
    }


# -- the example spec, exactly -------------------------------------------------------------


def test_job_for_the_example_spec(spec: Spec) -> None:
    text = render_manifest(spec, image=IMAGE, uid=1000, gid=1000, lock_hash=LOCK_HASH)
    assert documents(text) == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "lab-analysis",
                "labels": labels(spec),
                "annotations": annotations_for(spec),
            },
            "spec": {
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {"labels": labels(spec), "annotations": annotations_for(spec)},
                    "spec": pod_spec(),
                },
            },
        },
        network_policy(spec),
    ]
    assert header(text) == [
        "# Generated by imagesmith from env.toml (lab-analysis 1.0.0): do not edit by hand.",
        f"# Job lab-analysis: runs {IMAGE} as uid 1000, gid 1000.",
        "# read-only root filesystem; writable: /tmp, /work, /dev/shm (1Gi, counted as memory)",
        "# The NetworkPolicy admits no ingress to the job's pods.",
    ]
    # the header, then one `---`-opened document per object
    assert text.split("\n")[len(header(text))] == "---"
    assert text.count("\n---\n") == 2


def test_pod_for_the_example_spec_with_a_time_limit(spec: Spec) -> None:
    timed = dataclasses.replace(spec, job=dataclasses.replace(spec.job, time="1-02:03"))
    text = render_manifest(timed, image=IMAGE, uid=1000, gid=1000, kind="pod", lock_hash=LOCK_HASH)
    assert documents(text) == [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "lab-analysis",
                "labels": labels(spec),
                "annotations": annotations_for(spec),
            },
            "spec": pod_spec(deadline=86400 + 2 * 3600 + 3 * 60),
        },
        network_policy(spec),
    ]


@pytest.mark.parametrize(
    ("time", "seconds"),
    [
        ("30", 1800),
        ("30:15", 1815),
        ("2:30:15", 9015),
        ("1-12", 129600),
        ("1-12:30", 131400),
        ("2-03:04:05", 183845),
    ],
)
def test_job_deadline_from_every_time_form(spec: Spec, time: str, seconds: int) -> None:
    timed = dataclasses.replace(spec, job=dataclasses.replace(spec.job, time=time))
    job = documents(render_manifest(timed, image=IMAGE, uid=1000, gid=1000))[0]
    assert job["spec"]["activeDeadlineSeconds"] == seconds
    assert "activeDeadlineSeconds" not in job["spec"]["template"]["spec"]


def test_output_is_byte_identical_and_independent_of_env_order(spec: Spec) -> None:
    first = render_manifest(spec, image=IMAGE, uid=1000, gid=1000, lock_hash=LOCK_HASH)
    second = render_manifest(spec, image=IMAGE, uid=1000, gid=1000, lock_hash=LOCK_HASH)
    assert first == second
    reordered = dataclasses.replace(spec, env=dict(reversed(list(spec.env.items()))))
    assert render_manifest(reordered, image=IMAGE, uid=1000, gid=1000, lock_hash=LOCK_HASH) == (
        first
    )
    assert render_sbatch(spec, image=IMAGE) == render_sbatch(reordered, image=IMAGE)


# -- image references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        ("registry.example.edu/lab/analysis:1.0.0", "names a tag"),
        ("registry.example.edu/lab/analysis", "names a tag"),
        ("registry.example.edu/lab/analysis:1.0@sha256:" + "ab" * 32, "carries a tag"),
        ("registry.example.edu/lab/analysis@sha256:abc", "not an image reference"),
        ("Not A Reference", "not an image reference"),
    ],
)
def test_image_must_be_a_digest_reference(spec: Spec, image: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        render_manifest(spec, image=image, uid=1000, gid=1000)
    with pytest.raises(InputError, match=fragment):
        render_sbatch(spec, image=image)


def test_digest_reference_with_a_registry_port(spec: Spec) -> None:
    image = "127.0.0.1:5000/lab/analysis@sha256:" + "cd" * 32
    pod = documents(render_manifest(spec, image=image, uid=1000, gid=1000, kind="pod"))[0]
    assert pod["spec"]["containers"][0]["image"] == image


def test_root_user_is_refused(spec: Spec) -> None:
    with pytest.raises(InputError, match=r"uid 0"):
        render_manifest(spec, image=IMAGE, uid=0, gid=0)


def test_unknown_kind_and_runtime(spec: Spec) -> None:
    with pytest.raises(InputError, match="kind 'deployment'"):
        render_manifest(spec, image=IMAGE, uid=1, gid=1, kind="deployment")
    with pytest.raises(InputError, match="runtime 'docker'"):
        render_sbatch(spec, image=IMAGE, runtime="docker")


# -- the choices, one at a time -----------------------------------------------------------------


def test_names_and_label_values_are_sanitized(spec: Spec) -> None:
    assert dns_label("My_Lab.Analysis") == "my-lab-analysis"
    assert dns_label("x" * 80) == "x" * 63
    assert dns_label("___") == "job"
    assert label_value("1.0.0+build.5") == "1.0.0-build.5"
    assert label_value("_" + "v" * 70) == "v" * 62
    odd = dataclasses.replace(spec, name="lab_analysis.v2", version="_2024.05+rc1")
    job = documents(render_manifest(odd, image=IMAGE, uid=1000, gid=1000))[0]
    assert job["metadata"]["name"] == "lab-analysis-v2"
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == "lab_analysis.v2"
    assert job["metadata"]["labels"]["app.kubernetes.io/version"] == "2024.05-rc1"
    assert job["metadata"]["annotations"]["imagesmith.dev/version"] == "_2024.05+rc1"
    assert job["spec"]["template"]["spec"]["containers"][0]["name"] == "lab-analysis-v2"
    assert "imagesmith.dev/lock-hash" not in job["metadata"]["labels"]  # none given


def test_namespace_backoff_ttl(spec: Spec) -> None:
    job_settings = dataclasses.replace(
        spec.job, namespace="lab", backoff_limit=3, ttl_seconds_after_finished=60
    )
    custom = dataclasses.replace(spec, job=job_settings)
    job, policy = documents(render_manifest(custom, image=IMAGE, uid=1000, gid=1000))
    assert job["metadata"]["namespace"] == policy["metadata"]["namespace"] == "lab"
    assert job["spec"]["backoffLimit"] == 3
    assert job["spec"]["ttlSecondsAfterFinished"] == 60


def test_kind_from_the_spec(spec: Spec) -> None:
    as_pod = dataclasses.replace(spec, job=dataclasses.replace(spec.job, kind="pod"))
    assert documents(render_manifest(as_pod, image=IMAGE, uid=1, gid=2))[0]["kind"] == "Pod"
    pod = documents(render_manifest(as_pod, image=IMAGE, uid=1, gid=2))[0]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1
    assert pod["securityContext"]["runAsGroup"] == pod["securityContext"]["fsGroup"] == 2


def test_without_resources_gpu_or_command(spec: Spec) -> None:
    bare = dataclasses.replace(
        spec,
        env={},
        resources=dataclasses.replace(spec.resources, cpu=None, memory=None, gpu=0),
        job=dataclasses.replace(spec.job, command=None),
        image=dataclasses.replace(spec.image, workdir=None),
    )
    pod = documents(render_manifest(bare, image=IMAGE, uid=1000, gid=1000, kind="pod"))[0]
    container = pod["spec"]["containers"][0]
    for key in ("resources", "command", "args", "env", "workingDir"):
        assert key not in container
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["spec"]["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def test_shm_size_and_other_gpu_resource(spec: Spec) -> None:
    amd = dataclasses.replace(
        spec, resources=dataclasses.replace(spec.resources, gpu_resource="amd.com/gpu", shm="8Gi")
    )
    pod = documents(render_manifest(amd, image=IMAGE, uid=1000, gid=1000, kind="pod"))[0]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["amd.com/gpu"] == 1
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert pod["spec"]["volumes"][-1] == {
        "name": "dshm",
        "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"},
    }
    # shm without a GPU still gets its /dev/shm; no GPU and no shm: none
    cpu_only = dataclasses.replace(amd, resources=dataclasses.replace(amd.resources, gpu=0))
    pod = documents(render_manifest(cpu_only, image=IMAGE, uid=1000, gid=1000, kind="pod"))[0]
    assert pod["spec"]["volumes"][-1]["name"] == "dshm"
    plain = dataclasses.replace(
        cpu_only, resources=dataclasses.replace(cpu_only.resources, shm=None)
    )
    pod = documents(render_manifest(plain, image=IMAGE, uid=1000, gid=1000, kind="pod"))[0]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["tmp", "workdir"]


def test_entrypoint_keeps_the_command_as_args(spec: Spec) -> None:
    tini = dataclasses.replace(
        spec, image=dataclasses.replace(spec.image, entrypoint=("tini", "--"))
    )
    container = documents(render_manifest(tini, image=IMAGE, uid=1000, gid=1000, kind="pod"))[0][
        "spec"
    ]["containers"][0]
    assert container["args"] == ["python3", "train.py"]
    assert "command" not in container


def test_workdir_holding_copied_files_is_not_hidden(spec: Spec) -> None:
    copying = dataclasses.replace(
        spec,
        image=dataclasses.replace(spec.image, copy=(CopyItem("scripts/", "/work/scripts"),)),
    )
    text = render_manifest(copying, image=IMAGE, uid=1000, gid=1000, kind="pod")
    pod = documents(text)[0]["spec"]
    assert [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]] == [
        "/tmp",
        "/dev/shm",
    ]
    assert (
        "# /work is read-only: the image copies scripts/ to /work/scripts, which an emptyDir "
        "would hide; write to /tmp"
    ) in header(text)
    relative = dataclasses.replace(
        spec, image=dataclasses.replace(spec.image, copy=(CopyItem("data", "data"),))
    )
    pod = documents(render_manifest(relative, image=IMAGE, uid=1000, gid=1000, kind="pod"))[0]
    assert "workdir" not in [v["name"] for v in pod["spec"]["volumes"]]
    # an explicit workdir argument replaces the spec's
    elsewhere = render_manifest(copying, image=IMAGE, uid=1000, gid=1000, workdir="/scratch")
    container = documents(elsewhere)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["workingDir"] == "/scratch"
    assert {"name": "workdir", "mountPath": "/scratch"} in container["volumeMounts"]


def test_for_podman_leaves_out_long_annotations_but_keeps_them_in_the_header(
    spec: Spec,
) -> None:
    text = render_manifest(
        spec, image=IMAGE, uid=1000, gid=1000, kind="pod", lock_hash=LOCK_HASH, for_podman=True
    )
    pod = documents(text)[0]
    assert "annotations" not in pod["metadata"]  # all three values are over 63 characters
    assert pod["metadata"]["labels"] == labels(spec)
    assert header(text)[4:] == [
        "# for podman kube play (before podman 5.0 it refuses annotation values over 63 "
        "characters), these annotations are left out:",
        f"# imagesmith.dev/image: {IMAGE}",
        f"# imagesmith.dev/lock-hash: {LOCK_HASH}",
        f"# imagesmith.dev/spec-hash: {spec.spec_hash}",
    ]
    request = parse_sbatch((SBATCH / "gpu-train.sh").read_text(), source="gpu-train.sh")
    job = documents(
        render_manifest(spec, image=IMAGE, uid=1000, gid=1000, overrides=request, for_podman=True)
    )[0]
    short = {
        "imagesmith.dev/gpu-type": "a100",
        "imagesmith.dev/sbatch": "gpu-train.sh",
        "imagesmith.dev/slurm-partition": "gpu",
    }
    assert job["metadata"]["annotations"] == short
    assert job["spec"]["template"]["metadata"]["annotations"] == short


# -- #SBATCH overrides -----------------------------------------------------------------------


def test_overrides_from_sbatch_say_where_each_value_came_from(spec: Spec) -> None:
    request = parse_sbatch((SBATCH / "gpu-train.sh").read_text(), source="gpu-train.sh")
    text = render_manifest(
        spec, image=IMAGE, uid=1000, gid=1000, overrides=request, lock_hash=LOCK_HASH
    )
    assert header(text)[4:] == [
        "# values from gpu-train.sh (#SBATCH directives) replace the spec's:",
        "# name: train-resnet (from gpu-train.sh:2: -J train-resnet)",
        "# resources.cpu: 8 (from gpu-train.sh:3: -c8)",
        "# resources.memory: 16Gi (from gpu-train.sh:3: --mem=16G)",
        "# resources.gpu: 2 (nvidia.com/gpu) (from gpu-train.sh:4: --gres=gpu:a100:2)",
        "# job.time: 1-12:00:00 (activeDeadlineSeconds 129600) (from gpu-train.sh:5: --time 1-12)",
        "# job.command: /bin/bash -c '<script body, 3 lines>' (from gpu-train.sh:8-10: the script body)",
        "# partition: gpu (annotation imagesmith.dev/slurm-partition only) (from gpu-train.sh:4: -p gpu)",
        "# gpu_type: a100 (annotation imagesmith.dev/gpu-type only) (from gpu-train.sh:4: --gres=gpu:a100:2)",
        "# not carried over from gpu-train.sh:",
        *(f"# warning: {w}" for w in request.warnings),
        "# warning: gpu-train.sh:4: --gres=gpu:a100:2: GPU model 'a100' has no "
        "nvidia.com/gpu.product value to select nodes by; kept as the annotation "
        "imagesmith.dev/gpu-type only, so any GPU node may run it (map it with --gpu-map "
        "a100=VALUE or [resources.gpu_map])",
    ]
    job = documents(text)[0]
    assert job["metadata"]["name"] == "train-resnet"
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == "lab-analysis"
    assert job["metadata"]["annotations"]["imagesmith.dev/slurm-partition"] == "gpu"
    assert job["metadata"]["annotations"]["imagesmith.dev/gpu-type"] == "a100"
    assert job["metadata"]["annotations"]["imagesmith.dev/sbatch"] == "gpu-train.sh"
    assert job["spec"]["activeDeadlineSeconds"] == 129600
    container = job["spec"]["template"]["spec"]["containers"][0]
    amounts = {"cpu": "8", "memory": "16Gi", "nvidia.com/gpu": 2}
    assert container["resources"] == {"requests": amounts, "limits": amounts}
    assert container["command"] == ["/bin/bash", "-c", request.body]
    assert "nodeSelector" not in job["spec"]["template"]["spec"]


def test_every_warning_reaches_the_header(spec: Spec) -> None:
    request = parse_sbatch((SBATCH / "mpi.sh").read_text(), source="mpi.sh")
    lines = header(render_manifest(spec, image=IMAGE, uid=1000, gid=1000, overrides=request))
    assert [line for line in lines if line.startswith("# warning: ")] == [
        f"# warning: {w}" for w in request.warnings
    ]
    assert len(request.warnings) == 10


# -- the batch script ----------------------------------------------------------------------------


def test_sbatch_for_the_example_spec(spec: Spec) -> None:
    timed = dataclasses.replace(spec, job=dataclasses.replace(spec.job, time="90"))
    assert render_sbatch(timed, image=IMAGE) == (
        "#!/bin/bash\n"
        "# Generated by imagesmith from env.toml (lab-analysis 1.0.0): do not edit by hand.\n"
        f"# Runs {IMAGE} with podman; resources from [resources], time from [job].\n"
        "#SBATCH --job-name=lab-analysis\n"
        "#SBATCH --nodes=1\n"
        "#SBATCH --ntasks=1\n"
        "#SBATCH --cpus-per-task=2\n"
        "#SBATCH --mem=32768M\n"
        "#SBATCH --gpus=1\n"
        "#SBATCH --time=01:30:00\n"
        "set -euo pipefail\n"
        "exec podman run --rm"
        " --env 'GREETING=it'\"'\"'s \"quoted\" $HOME and ünïcode'"
        " --env OMP_NUM_THREADS=1"
        " --device nvidia.com/gpu=all"
        " --env CUDA_VISIBLE_DEVICES --env ROCR_VISIBLE_DEVICES --env GPU_DEVICE_ORDINAL"
        " --shm-size=1073741824"
        f" {IMAGE} python3 train.py\n"
    )


@pytest.mark.parametrize(
    ("cpu", "memory", "directives"),
    [
        ("500m", "1G", ["--cpus-per-task=1", "--mem=954M"]),
        ("2.5", "1536Mi", ["--cpus-per-task=3", "--mem=1536M"]),
        ("1", "1Ki", ["--cpus-per-task=1", "--mem=1M"]),
        ("4", "2Ti", ["--cpus-per-task=4", "--mem=2097152M"]),
    ],
)
def test_sbatch_rounds_cpu_and_memory_up(
    spec: Spec, cpu: str, memory: str, directives: list[str]
) -> None:
    res = dataclasses.replace(spec.resources, cpu=cpu, memory=memory, gpu=0)
    text = render_sbatch(dataclasses.replace(spec, resources=res), image=IMAGE)
    found = [line.removeprefix("#SBATCH ") for line in text.splitlines() if "#SBATCH" in line]
    assert found == ["--job-name=lab-analysis", "--nodes=1", "--ntasks=1", *directives]


def _stub(directory: Path, name: str) -> None:
    """A fake `podman`/`apptainer`/`srun` that records its argv and environment as JSON.

    `apptainer pull ... FILE docker://...` writes FILE (slowly, so that concurrent pulls
    would overlap) and appends a line to `pulls` beside the stub instead."""
    path = directory / name
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, time\n"
        "if sys.argv[1:2] == ['pull']:\n"
        f"    with open({str(directory / 'pulls')!r}, 'a') as log:\n"
        "        log.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "    time.sleep(0.5)\n"
        "    open(sys.argv[-2], 'w').write('SIF')\n"
        "    sys.exit(0)\n"
        "json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, sys.stdout)\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("runtime", ["podman", "apptainer"])
def test_sbatch_script_passes_every_word_intact(spec: Spec, runtime: str, tmp_path: Path) -> None:
    """Run the generated script with bash against a stub runtime: argv and env, exactly."""
    nasty = dict(spec.env) | {"COMMAS": "a,b=c", "SPACES": "  two  spaces ", "GLOB": "*"}
    weird = dataclasses.replace(
        spec, env=nasty, job=dataclasses.replace(spec.job, command=("sh", "-c", "echo \"$1\" 'x'"))
    )
    _stub(tmp_path, runtime)
    script = tmp_path / "job.sh"
    script.write_text(render_sbatch(weird, image=IMAGE, runtime=runtime))
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "CUDA_VISIBLE_DEVICES": "1,3",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, check=True
    )
    seen = json.loads(done.stdout)
    command = ["sh", "-c", "echo \"$1\" 'x'"]
    if runtime == "podman":
        expected = ["run", "--rm"]
        for key in sorted(nasty):
            expected += ["--env", f"{key}={nasty[key]}"]
        expected += ["--device", "nvidia.com/gpu=all"]
        expected += ["--env", "CUDA_VISIBLE_DEVICES", "--env", "ROCR_VISIBLE_DEVICES"]
        expected += ["--env", "GPU_DEVICE_ORDINAL", "--shm-size=1073741824", IMAGE, *command]
        assert seen["argv"] == expected
    else:
        sif = f"{tmp_path}/.cache/imagesmith/sif/sha256-{'ab' * 32}.sif"
        assert seen["argv"] == [
            "exec",
            "--cleanenv",
            "--containall",
            "--nv",
            "--pwd",
            "/work",
            sif,
            *command,
        ]
        assert Path(sif).read_text() == "SIF"
        (pull,) = (tmp_path / "pulls").read_text().splitlines()
        words = pull.split()
        assert words[:2] == ["pull", "--disable-cache"] and words[3:] == [f"docker://{IMAGE}"]
        assert words[2].startswith(f"{sif}.part.")
        assert not Path(words[2]).exists()  # moved into place
        passed = {
            k.removeprefix("APPTAINERENV_"): v
            for k, v in seen["env"].items()
            if k.startswith("APPTAINERENV_")
        }
        assert passed == nasty | {"CUDA_VISIBLE_DEVICES": "1,3"}


def test_apptainer_runs_the_entrypoint_when_there_is_one(spec: Spec) -> None:
    tini = dataclasses.replace(spec, image=dataclasses.replace(spec.image, entrypoint=("tini",)))
    text = render_sbatch(tini, image=IMAGE, runtime="apptainer")
    assert "exec apptainer run --cleanenv --containall" in text
    no_command = dataclasses.replace(spec, job=dataclasses.replace(spec.job, command=None))
    text = render_sbatch(no_command, image=IMAGE, runtime="apptainer")
    assert text.endswith('exec apptainer run --cleanenv --containall --nv --pwd /work "$sif"\n')


# -- the validators: kubernetes-validate --strict and checkov ----------------------------------

#: checkov checks that do not apply to a run-to-completion batch job. Nothing else is
#: skipped; in particular no security check is.
#: - CKV_K8S_8 (liveness probe): a liveness probe restarts a container that stops answering;
#:   a batch computation answers nothing and must not be killed for being busy.
#: - CKV_K8S_9 (readiness probe): readiness gates Service traffic; a job serves none.
NOT_FOR_BATCH = {"CKV_K8S_8", "CKV_K8S_9"}
#: What the example spec itself chooses (not the generator): no [job] namespace
#: (CKV_K8S_21: the default namespace). Its user has the default uid, 10001, which
#: CKV_K8S_40 (uid >= 10000) accepts; a spec that sets uid = 1000 (shared home folders)
#: fails that one check, as the `uid1000` variant shows. A spec with `namespace = "lab"`
#: passes both; the hardened variants below check exactly that.
SPEC_CHOICES = {"CKV_K8S_21"}


def _tool(name: str) -> str:
    for candidate in (REPO / ".venv-tools" / "bin" / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not installed: scripts/setup-venv.sh puts it in .venv-tools")


def _variants(spec: Spec) -> Iterator[tuple[str, str, set[str]]]:
    """(file name, manifest, checkov IDs the spec's own choices fail) for many specs."""
    hardened = dataclasses.replace(
        spec,
        image=dataclasses.replace(spec.image, uid=10001),
        job=dataclasses.replace(spec.job, namespace="lab", time="2:00:00"),
    )
    train = parse_sbatch((SBATCH / "gpu-train.sh").read_text(), source="gpu-train.sh")
    mpi = parse_sbatch((SBATCH / "mpi.sh").read_text(), source="mpi.sh")
    amd = dataclasses.replace(
        hardened,
        resources=dataclasses.replace(hardened.resources, gpu_resource="amd.com/gpu", shm="4Gi"),
        image=dataclasses.replace(
            hardened.image, entrypoint=("tini", "--"), copy=(CopyItem("a", "/work/a"),)
        ),
        job=dataclasses.replace(hardened.job, secret_env=SECRET_ENV),
    )
    cpu_only = dataclasses.replace(
        hardened, resources=dataclasses.replace(hardened.resources, gpu=0)
    )
    uid = spec.image.uid
    for kind in ("job", "pod"):
        yield (
            f"example-{kind}.yaml",
            render_manifest(spec, image=IMAGE, uid=uid, gid=uid, kind=kind, lock_hash=LOCK_HASH),
            SPEC_CHOICES,
        )
        yield (
            f"uid1000-{kind}.yaml",
            render_manifest(spec, image=IMAGE, uid=1000, gid=1000, kind=kind, lock_hash=LOCK_HASH),
            SPEC_CHOICES | {"CKV_K8S_40"},
        )
        mapped_request = parse_sbatch(
            (SBATCH / "gpu-train.sh").read_text(), source="gpu-train.sh", queue_map=QUEUES
        )
        arrays = [
            (Path(f).stem, hardened, parse_sbatch((SBATCH / f).read_text(), source=f))
            for f in FIXTURES
            if f.startswith("array-") and kind == "job"
        ]
        for label, variant, request in (
            ("hardened", hardened, None),
            ("train", hardened, train),
            ("mpi", hardened, mpi),
            *arrays,
            *([("mapped", _mapped(spec), mapped_request)] if kind == "job" else []),
            ("mounts", _with_mounts(hardened, host_path=False), None),
            # checkov has no check against hostPath; the header warns about Pod Security
            ("hostpath", _with_mounts(hardened, host_path=True), None),
            ("amd", amd, None),
            ("cpu", cpu_only, None),
            ("podman", cpu_only, None),
        ):
            yield (
                f"{label}-{kind}.yaml",
                render_manifest(
                    variant,
                    image=IMAGE,
                    uid=10001,
                    gid=10001,
                    kind=kind,
                    overrides=request,
                    lock_hash=LOCK_HASH,
                    for_podman=label == "podman",
                ),
                # CKV_K8S_35 prefers Secrets mounted as files: [job] secret_env asks for
                # variables, which is what tools such as Jupyter (JUPYTER_TOKEN) read.
                {"CKV_K8S_35"} if variant.job.secret_env else set(),
            )


@pytest.fixture(scope="module")
def manifest_files(spec: Spec, tmp_path_factory: pytest.TempPathFactory) -> dict[Path, set[str]]:
    folder = tmp_path_factory.mktemp("manifests")
    found: dict[Path, set[str]] = {}
    for name, text, expected in _variants(spec):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        found[path] = expected
    return found


def test_kubernetes_validate_strict(manifest_files: dict[Path, set[str]]) -> None:
    tool = _tool("kubernetes-validate")
    done = subprocess.run(
        [tool, "--strict", *map(str, manifest_files)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    passed = [line for line in done.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == 2 * len(manifest_files), done.stdout  # workload + NetworkPolicy


def test_checkov_finds_nothing_but_probes(manifest_files: dict[Path, set[str]]) -> None:
    tool = _tool("checkov")
    args = [tool, "--framework", "kubernetes", "--skip-download", "-o", "json", "--compact"]
    for path in manifest_files:
        args += ["-f", str(path)]
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.stdout.strip(), done.stderr
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed: dict[str, set[str]] = {path.name: set() for path in manifest_files}
    resources = 0
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        resources += report["summary"]["resource_count"]
        for check in report["results"]["failed_checks"]:
            failed[Path(check["file_path"]).name].add(check["check_id"])
    assert resources >= 2 * len(manifest_files)
    for path, expected in manifest_files.items():
        unexpected = failed[path.name] - NOT_FOR_BATCH
        assert unexpected == expected, f"{path.name}: {sorted(failed[path.name])}"


def _with_secrets(spec: Spec) -> Spec:
    return dataclasses.replace(spec, job=dataclasses.replace(spec.job, secret_env=SECRET_ENV))


@pytest.mark.parametrize("kind", ["job", "pod"])
def test_secret_env_comes_from_secret_key_refs(spec: Spec, kind: str) -> None:
    text = render_manifest(
        _with_secrets(spec), image=IMAGE, uid=1000, gid=1000, kind=kind, lock_hash=LOCK_HASH
    )
    workload = documents(text)[0]
    pod = workload["spec"]["template"]["spec"] if kind == "job" else workload["spec"]
    (container,) = pod["containers"]
    assert container["env"] == [
        {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "lab-api", "key": "token"}}},
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db.lab", "key": "pw"}}},
        {"name": "GREETING", "value": spec.env["GREETING"]},
        {"name": "OMP_NUM_THREADS", "value": "1"},
    ]


def test_secret_env_in_sbatch_comes_from_the_submitting_environment(spec: Spec) -> None:
    with_secrets = _with_secrets(spec)
    podman = render_sbatch(with_secrets, image=IMAGE, runtime="podman")
    assert "--env API_TOKEN --env DB_PASSWORD" in podman
    apptainer = render_sbatch(with_secrets, image=IMAGE, runtime="apptainer")
    assert 'if [ -n "${API_TOKEN+set}" ]; then export APPTAINERENV_API_TOKEN="$API_TOKEN"; fi' in (
        apptainer.splitlines()
    )
    for script in (podman, apptainer):
        assert "# API_TOKEN, DB_PASSWORD: from Kubernetes Secrets on a cluster" in script
    assert "API_TOKEN" not in render_sbatch(spec, image=IMAGE, runtime="podman")


# -- job arrays: Indexed Jobs -----------------------------------------------------------------

GOLDEN = REPO / "tests" / "golden" / "manifests"
FIXTURES = sorted(p.name for p in SBATCH.glob("*.sh") if not p.name.startswith("bad-"))


def _hardened(spec: Spec) -> Spec:
    return dataclasses.replace(
        spec,
        image=dataclasses.replace(spec.image, uid=10001),
        job=dataclasses.replace(spec.job, namespace="lab", time="2:00:00"),
    )


def _from_fixture(spec: Spec, fixture: str, **options: Any) -> str:
    request = parse_sbatch((SBATCH / fixture).read_text(), source=fixture)
    return render_manifest(
        _hardened(spec),
        image=IMAGE,
        uid=10001,
        gid=10001,
        overrides=request,
        lock_hash=LOCK_HASH,
        **options,
    )


@pytest.mark.parametrize("fixture", FIXTURES)
def test_from_sbatch_fixture_matches_its_golden_manifest(spec: Spec, fixture: str) -> None:
    text = _from_fixture(spec, fixture)
    check_golden(GOLDEN / f"{Path(fixture).stem}.yaml", text)


def _array_spec(spec: Spec, array: str, **job: Any) -> Spec:
    from imagesmith.model.slurmtime import parse_job_array

    settings = dataclasses.replace(spec.job, array=parse_job_array(array), **job)
    return dataclasses.replace(spec, job=settings)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize(
    ("array", "completions", "parallelism"),
    [("0-99", 100, 100), ("1-7:2%2", 4, 2), ("1,5,9%10", 3, 3)],
)
def test_array_is_an_indexed_job(
    spec: Spec, array: str, completions: int, parallelism: int
) -> None:
    swept = _array_spec(spec, array, backoff_limit=3)
    text = render_manifest(swept, image=IMAGE, uid=1000, gid=1000)
    job = documents(text)[0]
    assert job["spec"] == {
        "backoffLimitPerIndex": 3,
        "completionMode": "Indexed",
        "completions": completions,
        "parallelism": parallelism,
        "ttlSecondsAfterFinished": 86400,
        "template": job["spec"]["template"],
    }
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "/bin/sh",
        "-c",
        ARRAY_LOOKUP,
        "imagesmith-array",
        "python3",
        "train.py",
    ]
    assert "args" not in container
    env = _env(container)
    assert env["JOB_COMPLETION_INDEX"] == {
        "fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        }
    }
    assert swept.job.array is not None
    assert env["IMAGESMITH_ARRAY_RUNS"] == swept.job.array.runs_text
    assert env["SLURM_ARRAY_TASK_COUNT"] == str(completions)
    assert [e["name"] for e in container["env"]] == sorted(env)
    assert f"# array {array}: an Indexed Job of {completions} pods, {parallelism} at a time" in (
        text
    )


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "busybox"])
@pytest.mark.parametrize("array", ["1-7:2%2", "1,5,9,20-30:5", "0-3", "3,1,2,10-40:10"])
def test_the_lookup_gives_each_completion_index_its_slurm_index(
    spec: Spec, shell: str, array: str
) -> None:
    """Run the pod's command line as Kubernetes would, once per completion index."""
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    swept = _array_spec(spec, array, command=("sh", "-c", 'echo "$SLURM_ARRAY_TASK_ID $0 $1"'))
    job = documents(render_manifest(swept, image=IMAGE, uid=1000, gid=1000))[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    fixed = {k: v for k, v in _env(container).items() if isinstance(v, str)}
    argv = container["command"]
    prefix = [shell, "sh"] if shell == "busybox" else [shell]
    assert argv[0] == "/bin/sh"
    assert swept.job.array is not None
    seen = []
    for index in range(job["spec"]["completions"]):
        done = subprocess.run(
            [*prefix, *argv[1:]],
            env={"PATH": "/usr/bin:/bin", **fixed, "JOB_COMPLETION_INDEX": str(index)},
            capture_output=True,
            text=True,
            check=True,
        )
        seen.append(done.stdout)
    assert seen == [f"{i} sh -c\n".replace(" sh -c", " sh ") for i in swept.job.array.indices()]
    # outside the array, or without the index: a clear failure, not index 0
    beyond = subprocess.run(
        [*prefix, *argv[1:]],
        env={"PATH": "/usr/bin:/bin", **fixed, "JOB_COMPLETION_INDEX": "999"},
        capture_output=True,
        text=True,
    )
    assert beyond.returncode == 2 and "outside the array" in beyond.stderr
    unset = subprocess.run([*prefix, *argv[1:]], env=fixed, capture_output=True, text=True)
    assert unset.returncode != 0 and "JOB_COMPLETION_INDEX" in unset.stderr


def test_array_keeps_the_entrypoint_and_falls_back_to_cmd(spec: Spec) -> None:
    tini = dataclasses.replace(
        _array_spec(spec, "0-3", command=None),
        image=dataclasses.replace(spec.image, entrypoint=("tini", "--"), cmd=("run.sh",)),
    )
    container = documents(render_manifest(tini, image=IMAGE, uid=1000, gid=1000))[0]["spec"][
        "template"
    ]["spec"]["containers"][0]
    assert container["command"][3:] == ["imagesmith-array", "tini", "--", "run.sh"]
    bare = dataclasses.replace(
        _array_spec(spec, "0-3", command=None),
        image=dataclasses.replace(spec.image, entrypoint=None, cmd=None),
    )
    with pytest.raises(InputError, match=r"array job needs its command spelled out"):
        render_manifest(bare, image=IMAGE, uid=1000, gid=1000)


def test_array_needs_kind_job(spec: Spec) -> None:
    with pytest.raises(InputError, match=r"^array 0-3 needs kind job"):
        render_manifest(_array_spec(spec, "0-3"), image=IMAGE, uid=1000, gid=1000, kind="pod")


def test_sbatch_writes_the_array_and_passes_its_variables(spec: Spec, tmp_path: Path) -> None:
    swept = _array_spec(spec, "1-7:2%2")
    text = render_sbatch(swept, image=IMAGE)
    assert "#SBATCH --array=1-7:2%2\n" in text
    assert (
        "--env SLURM_ARRAY_TASK_COUNT --env SLURM_ARRAY_TASK_ID --env SLURM_ARRAY_TASK_MAX "
        "--env SLURM_ARRAY_TASK_MIN"
    ) in text
    _stub(tmp_path, "apptainer")
    script = tmp_path / "job.sh"
    script.write_text(render_sbatch(swept, image=IMAGE, runtime="apptainer"))
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "5", "HOME": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, check=True
    )
    assert json.loads(done.stdout)["env"]["APPTAINERENV_SLURM_ARRAY_TASK_ID"] == "5"
    assert "SLURM_ARRAY" not in render_sbatch(spec, image=IMAGE)


# -- queues (Kueue) and GPU models --------------------------------------------------------------

QUEUES = {"gpu": "lab-gpu-queue", "cpu": "lab-cpu-queue"}
GPUS = {"a100": "NVIDIA-A100-SXM4-80GB"}


def _mapped(spec: Spec) -> Spec:
    return dataclasses.replace(
        _hardened(spec),
        resources=dataclasses.replace(spec.resources, gpu_map=GPUS),
        job=dataclasses.replace(_hardened(spec).job, queue_map=QUEUES),
    )


def _mapped_manifest(spec: Spec, fixture: str = "gpu-train.sh", **options: Any) -> str:
    mapped = _mapped(spec)
    request = parse_sbatch(
        (SBATCH / fixture).read_text(), source=fixture, queue_map=mapped.job.queue_map
    )
    return render_manifest(
        mapped, image=IMAGE, uid=10001, gid=10001, overrides=request, lock_hash=LOCK_HASH, **options
    )


def test_mapped_partition_and_gpu_model_match_the_golden_manifest(spec: Spec) -> None:
    text = _mapped_manifest(spec)
    check_golden(GOLDEN / "gpu-train-mapped.yaml", text)
    job = documents(text)[0]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "lab-gpu-queue"
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    assert job["spec"]["suspend"] is True
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert "# job.queue: lab-gpu-queue (label kueue.x-k8s.io/queue-name, from partition gpu) " in (
        text
    )
    warned = [line for line in header(text) if line.startswith("# warning: ")]
    assert warned == [
        "# warning: gpu-train.sh:8: environment modules do not exist in the container; the "
        "image holds the software (add it to [apt] packages or [python] requirements): "
        "module load cuda"
    ]
    other = documents(_mapped_manifest(spec, gpu_label="example.com/gpu-model"))[0]
    assert other["spec"]["template"]["spec"]["nodeSelector"] == {
        "example.com/gpu-model": "NVIDIA-A100-SXM4-80GB"
    }


def test_unknown_partition_with_a_queue_map_names_the_line(spec: Spec) -> None:
    text = "#!/bin/bash\n#SBATCH -c 2\n#SBATCH --partition=debug\necho hi\n"
    with pytest.raises(InputError) as caught:
        parse_sbatch(text, queue_map=QUEUES)
    assert str(caught.value) == (
        "job.sh:3: --partition=debug: partition 'debug' has no queue in the queue map (it maps "
        "cpu, gpu); add --queue-map debug=QUEUE or a [job.queue_map] entry"
    )
    several = parse_sbatch(text.replace("=debug", "=debug,cpu"), queue_map=QUEUES)
    assert several.queue == "lab-cpu-queue"
    assert several.warnings == [
        "job.sh:3: --partition=debug,cpu: a Job waits in one queue; cpu's (lab-cpu-queue) is used"
    ]


@pytest.mark.parametrize("kind", ["job", "pod"])
def test_queue_from_the_spec(spec: Spec, kind: str) -> None:
    queued = dataclasses.replace(
        spec, job=dataclasses.replace(spec.job, queue="lab-queue", time="1:00:00")
    )
    text = render_manifest(queued, image=IMAGE, uid=1000, gid=1000, kind=kind)
    workload, policy = documents(text)
    assert workload["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "lab-queue"
    assert "kueue.x-k8s.io/queue-name" not in policy["metadata"]["labels"]
    if kind == "job":
        assert workload["spec"]["suspend"] is True
        assert (
            "# queue lab-queue: label kueue.x-k8s.io/queue-name (a Kueue LocalQueue in the job's "
            "namespace); created suspended; Kueue starts it when admitted; activeDeadlineSeconds "
            "counts from the start, not from creation"
        ) in header(text)
    else:
        assert "suspend" not in workload["spec"]
    assert "#SBATCH --partition=lab-queue\n" in render_sbatch(queued, image=IMAGE)
    plain = documents(render_manifest(spec, image=IMAGE, uid=1000, gid=1000))[0]
    assert "suspend" not in plain["spec"]


def test_gpu_model_from_the_spec(spec: Spec) -> None:
    from imagesmith.outputs.kubernetes import manifest_warnings

    model = dataclasses.replace(
        spec, resources=dataclasses.replace(spec.resources, gpu_model="a100")
    )
    assert "#SBATCH --gpus=a100:1\n" in render_sbatch(model, image=IMAGE)
    text = render_manifest(model, image=IMAGE, uid=1000, gid=1000)
    job = documents(text)[0]
    assert "nodeSelector" not in job["spec"]["template"]["spec"]
    assert job["metadata"]["annotations"]["imagesmith.dev/gpu-type"] == "a100"
    (warning,) = manifest_warnings(model)
    assert warning.startswith("GPU model 'a100' has no nvidia.com/gpu.product value")
    assert f"# warning: {warning}" in header(text)
    mapped = dataclasses.replace(
        model, resources=dataclasses.replace(model.resources, gpu_map=GPUS)
    )
    assert manifest_warnings(mapped) == []
    pod = documents(render_manifest(mapped, image=IMAGE, uid=1000, gid=1000))[0]["spec"]
    assert pod["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"
    }
    # a script that asks for any GPU drops the spec's model; one without GPUs keeps it
    assert (
        apply_overrides(
            mapped, parse_sbatch("#!/bin/bash\n#SBATCH --gpus=2\nx\n")
        ).resources.gpu_model
        is None
    )
    assert (
        apply_overrides(mapped, parse_sbatch("#!/bin/bash\n#SBATCH -c 2\nx\n")).resources.gpu_model
        == "a100"
    )


# -- runtimes: apptainer (and singularity), pyxis; every script passes bash -n and shellcheck ---


def _runtime_variants(spec: Spec) -> Iterator[tuple[str, Spec]]:
    yield "example", spec
    yield "array", _array_spec(_with_secrets(spec), "1-7:2%2")
    yield (
        "cpu-no-workdir",
        dataclasses.replace(
            spec,
            resources=dataclasses.replace(spec.resources, gpu=0, gpu_model=None),
            image=dataclasses.replace(spec.image, workdir=None, entrypoint=("tini", "--")),
            job=dataclasses.replace(spec.job, queue="batch"),
        ),
    )
    yield "mounts", _with_mounts(spec, host_path=True)
    yield (
        "amd",
        dataclasses.replace(
            spec,
            resources=dataclasses.replace(spec.resources, gpu=2, gpu_resource="amd.com/gpu"),
        ),
    )


@pytest.mark.parametrize("runtime", ["podman", "apptainer", "singularity", "pyxis"])
def test_every_runtime_script_passes_bash_n_and_shellcheck(
    spec: Spec, runtime: str, tmp_path: Path
) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: scripts/install-host.sh installs it")
    for label, variant in _runtime_variants(spec):
        for sif_dir in (
            (None, "/scratch/lab sifs") if runtime in ("apptainer", "singularity") else (None,)
        ):
            path = tmp_path / f"{label}-{runtime}-{sif_dir is None}.sh"
            path.write_text(render_sbatch(variant, image=IMAGE, runtime=runtime, sif_dir=sif_dir))
            syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            assert syntax.returncode == 0, f"{path.name}: {syntax.stderr}"
            lint = subprocess.run(
                [shellcheck, "--severity=style", str(path)], capture_output=True, text=True
            )
            assert lint.returncode == 0, f"{path.name}:\n{lint.stdout}"


def test_array_tasks_pull_the_sif_once(spec: Spec, tmp_path: Path) -> None:
    """Four array tasks start at once: one pulls (under flock), all run the same file."""
    _stub(tmp_path, "apptainer")
    sifs = tmp_path / "shared sifs"
    script = tmp_path / "job.sh"
    swept = _array_spec(spec, "0-3")
    script.write_text(render_sbatch(swept, image=IMAGE, runtime="apptainer", sif_dir=str(sifs)))
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}
    tasks = [
        subprocess.Popen(
            ["bash", str(script)],
            env={**env, "SLURM_ARRAY_TASK_ID": str(i)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [json.loads(task.communicate(timeout=60)[0]) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0, 0, 0]
    assert len((tmp_path / "pulls").read_text().splitlines()) == 1
    sif = f"{sifs}/sha256-{'ab' * 32}.sif"
    assert {out["argv"][-3] for out in outputs} == {sif}
    ids = sorted(out["env"]["APPTAINERENV_SLURM_ARRAY_TASK_ID"] for out in outputs)
    assert ids == ["0", "1", "2", "3"]
    assert sorted(p.name for p in sifs.iterdir()) == [
        f"sha256-{'ab' * 32}.sif" + s for s in ("", ".lock")
    ]
    # a pull that fails leaves no partial file, and the task fails
    (tmp_path / "apptainer").write_text("#!/bin/sh\nexit 7\n")
    (sifs / f"sha256-{'ab' * 32}.sif").unlink()
    failed = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert failed.returncode != 0
    assert sorted(p.name for p in sifs.iterdir()) == [f"sha256-{'ab' * 32}.sif.lock"]


def test_gpu_flags_only_with_gpus(spec: Spec) -> None:
    cpu = dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, gpu=0))
    for runtime in ("apptainer", "singularity"):
        assert " --nv " in render_sbatch(spec, image=IMAGE, runtime=runtime)
        text = render_sbatch(cpu, image=IMAGE, runtime=runtime)
        assert " --nv " not in text and "--rocm" not in text and "CUDA_VISIBLE" not in text


def test_singularity_is_the_older_name_of_apptainer(spec: Spec) -> None:
    text = render_sbatch(spec, image=IMAGE, runtime="singularity")
    assert "exec singularity exec --cleanenv --containall --nv" in text
    assert "singularity pull --disable-cache" in text
    assert "export SINGULARITYENV_OMP_NUM_THREADS=1" in text and "APPTAINER" not in text


@pytest.mark.parametrize(
    ("image", "enroot"),
    [
        (IMAGE, f"registry.example.edu#lab/analysis@sha256:{'ab' * 32}"),
        (f"127.0.0.1:5000/lab/x@sha256:{'cd' * 32}", f"127.0.0.1:5000#lab/x@sha256:{'cd' * 32}"),
        (f"debian@sha256:{'ef' * 32}", f"library/debian@sha256:{'ef' * 32}"),
        (f"lab/x@sha256:{'ef' * 32}", f"lab/x@sha256:{'ef' * 32}"),
    ],
)
def test_enroot_names_the_registry_with_a_hash(image: str, enroot: str) -> None:
    from imagesmith.outputs.sbatch import enroot_image

    assert enroot_image(image) == enroot


def test_pyxis_passes_env_and_workdir(spec: Spec, tmp_path: Path) -> None:
    nasty = dict(spec.env) | {"COMMAS": "a,b=c", "SPACES": "  two  spaces "}
    variant = _with_secrets(dataclasses.replace(spec, env=nasty))
    _stub(tmp_path, "srun")
    script = tmp_path / "job.sh"
    script.write_text(render_sbatch(variant, image=IMAGE, runtime="pyxis"))
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "API_TOKEN": "t0k", "CUDA_VISIBLE_DEVICES": "0"}
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, check=True
    )
    seen = json.loads(done.stdout)
    names = sorted(
        {
            *nasty,
            "API_TOKEN",
            "DB_PASSWORD",
            "CUDA_VISIBLE_DEVICES",
            "ROCR_VISIBLE_DEVICES",
            "GPU_DEVICE_ORDINAL",
        }
    )
    assert seen["argv"] == [
        f"--container-image=registry.example.edu#lab/analysis@sha256:{'ab' * 32}",
        f"--container-env={','.join(names)}",
        "--container-workdir=/work",
        "python3",
        "train.py",
    ]
    assert {k: seen["env"][k] for k in nasty} == nasty
    assert seen["env"]["API_TOKEN"] == "t0k"
    bare = dataclasses.replace(
        spec,
        job=dataclasses.replace(spec.job, command=None),
        image=dataclasses.replace(spec.image, cmd=None, entrypoint=None),
    )
    with pytest.raises(InputError, match="runtime pyxis runs the command it is given"):
        render_sbatch(bare, image=IMAGE, runtime="pyxis")


def test_sif_dir_is_only_for_apptainer(spec: Spec) -> None:
    with pytest.raises(InputError, match="--sif-dir is for apptainer or singularity, not pyxis"):
        render_sbatch(spec, image=IMAGE, runtime="pyxis", sif_dir="/x")


def test_a_cpu_only_script_gets_no_gpu_unless_asked(spec: Spec) -> None:
    request = parse_sbatch((SBATCH / "array-range.sh").read_text(), source="array-range.sh")
    text = render_manifest(spec, image=IMAGE, uid=1000, gid=1000, overrides=request)
    pod = documents(text)[0]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "dshm" not in [v["name"] for v in pod["volumes"]]
    assert (
        "# resources.gpu: 0: the script asks for none, so the spec's 1 is not inherited "
        "(--spec-gpu keeps it)"
    ) in header(text)
    kept = render_manifest(spec, image=IMAGE, uid=1000, gid=1000, overrides=request, spec_gpu=True)
    pod = documents(kept)[0]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "# resources.gpu: 1 (nvidia.com/gpu)" in header(kept)
    assert "# values from env.toml (the script does not set them):" in header(kept)


# -- [job] mounts ---------------------------------------------------------------------------------


def _with_mounts(spec: Spec, *, host_path: bool) -> Spec:
    mounts = [
        Mount("./out", "/out"),
        Mount("/scratch/$USER", "/scratch", read_only=True, claim="lab-scratch"),
        Mount("$HOME/ref", "/ref", read_only=True),
        Mount(".", "/work"),
    ]
    if host_path:
        mounts.append(Mount("/data/shared", "/shared", host_path=True))
    return dataclasses.replace(spec, job=dataclasses.replace(spec.job, mounts=tuple(mounts)))


def test_mounts_become_volumes(spec: Spec) -> None:
    from imagesmith.outputs.kubernetes import manifest_warnings

    mounted = _with_mounts(spec, host_path=True)
    text = render_manifest(mounted, image=IMAGE, uid=1000, gid=1000)
    pod = documents(text)[0]["spec"]["template"]["spec"]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "mount-0", "mountPath": "/out"},
        {"name": "mount-1", "mountPath": "/scratch", "readOnly": True},
        {"name": "mount-2", "mountPath": "/ref", "readOnly": True},
        {"name": "mount-3", "mountPath": "/work"},  # the workdir: no emptyDir of its own
        {"name": "mount-4", "mountPath": "/shared"},
    ]
    assert pod["volumes"][2:] == [
        {"name": "mount-0", "emptyDir": {}},
        {
            "name": "mount-1",
            "persistentVolumeClaim": {"claimName": "lab-scratch", "readOnly": True},
        },
        {"name": "mount-2", "emptyDir": {}},
        {"name": "mount-3", "emptyDir": {}},
        {"name": "mount-4", "hostPath": {"path": "/data/shared", "type": "Directory"}},
    ]
    lines = header(text)
    assert (
        "# mount /scratch (read-only): PersistentVolumeClaim lab-scratch (on Slurm: /scratch/$USER)"
        in lines
    )
    warnings = manifest_warnings(mounted)
    assert [f"# warning: {w}" for w in warnings] == [line for line in lines if "warning" in line]
    assert warnings[0] == (
        "mount /out (read-write): an empty emptyDir stands in for the submit folder, which has "
        "no counterpart here (set claim = NAME for a PersistentVolumeClaim)"
    )
    assert "Pod Security Standards refuse" in warnings[-1]
    assert lines[2] == (
        "# read-only root filesystem; writable: /tmp, /dev/shm (1Gi, counted as memory), "
        "/out, /work, /shared"
    )


@pytest.mark.parametrize("runtime", ["podman", "apptainer", "pyxis"])
def test_mounts_bind_the_same_folders_with_every_runtime(
    spec: Spec, runtime: str, tmp_path: Path
) -> None:
    mounted = _with_mounts(spec, host_path=False)
    tool = {"podman": "podman", "apptainer": "apptainer", "pyxis": "srun"}[runtime]
    _stub(tmp_path, tool)
    script = tmp_path / "job.sh"
    script.write_text(render_sbatch(mounted, image=IMAGE, runtime=runtime))
    submit = tmp_path / "submit dir"
    submit.mkdir()
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "USER": "ada",
        "SLURM_SUBMIT_DIR": str(submit),
    }
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout)["argv"]
    binds = [
        f"{submit}/out:/out",
        "/scratch/ada:/scratch:ro",
        f"{tmp_path}/home/ref:/ref:ro",
        f"{submit}:/work",
    ]
    if runtime == "pyxis":
        assert f"--container-mounts={','.join(binds)}" in argv
    else:
        flag = "--volume" if runtime == "podman" else "--bind"
        found = [argv[i + 1] for i, word in enumerate(argv) if word == flag]
        assert found == binds
    assert (submit / "out").is_dir()  # a folder the job writes to is made first


def test_a_mount_that_escapes_is_refused_before_the_shell(spec: Spec) -> None:
    bad = dataclasses.replace(
        spec, job=dataclasses.replace(spec.job, mounts=(Mount('/x"; rm -rf /; "', "/x"),))
    )
    with pytest.raises(InputError, match="not a path imagesmith binds"):
        render_sbatch(bad, image=IMAGE)
