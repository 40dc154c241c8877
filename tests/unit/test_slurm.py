"""parse_sbatch: #SBATCH directives in, Kubernetes values out; nothing dropped silently."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from imagesmith.errors import InputError
from imagesmith.model.quantity import quantity_value
from imagesmith.model.slurmtime import parse_job_array
from imagesmith.model.spec_loading import load_spec
from imagesmith.outputs.sbatch import memory_megabytes, render_sbatch
from imagesmith.outputs.sbatch_parse import SlurmRequest, apply_overrides, parse_sbatch
from tests.conftest import EXAMPLE, REPO

SBATCH = REPO / "tests" / "fixtures" / "sbatch"
IMAGE = "registry.example.edu/lab/analysis@sha256:" + "ab" * 32


def fixture_text(name: str) -> str:
    return (SBATCH / name).read_text()


def script(*directives: str, body: str = "echo hi\n") -> str:
    return "#!/bin/bash\n" + "".join(f"#SBATCH {d}\n" for d in directives) + body


def parse(*directives: str, body: str = "echo hi\n") -> SlurmRequest:
    return parse_sbatch(script(*directives, body=body))


# -- time limits: every form Slurm accepts ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30 * 60),  # MM
        ("90", 90 * 60),
        ("30:15", 30 * 60 + 15),  # MM:SS
        ("2:30:15", 2 * 3600 + 30 * 60 + 15),  # HH:MM:SS
        ("1-12", 86400 + 12 * 3600),  # D-HH
        ("1-12:30", 86400 + 12 * 3600 + 30 * 60),  # D-HH:MM
        ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),  # D-HH:MM:SS
    ],
)
def test_time_forms(text: str, seconds: int) -> None:
    for form in (f"-t {text}", f"-t{text}", f"--time={text}", f"--time {text}"):
        request = parse(form)
        assert request.time_seconds == seconds, form
        assert request.origins["job.time"] == f"job.sh:2: {form}"
        assert request.warnings == []


@pytest.mark.parametrize("text", ["1:2:3:4", "1-", "abc", "1.5", "-5"])
def test_bad_time_names_file_line_and_directive(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse("-c 1", f"--time={text}")
    assert str(caught.value).startswith(f"job.sh:3: --time={text}: ")


def test_zero_time_is_refused() -> None:
    with pytest.raises(InputError, match=r"^job.sh:2: -t 0: a zero time limit$"):
        parse("-t 0")


def test_unlimited_time_is_a_warning() -> None:
    request = parse("--time=UNLIMITED")
    assert request.time_seconds is None
    assert request.warnings == [
        "job.sh:2: --time=UNLIMITED: no time limit; the manifest keeps [job] time "
        "when the spec has one"
    ]


# -- memory: Slurm's units are binary, exactly -----------------------------------------------


@pytest.mark.parametrize(
    ("directive", "quantity"),
    [
        ("--mem=16G", "16Gi"),
        ("--mem=16g", "16Gi"),
        ("--mem=16GB", "16Gi"),
        ("--mem=1500", "1500Mi"),  # no unit: MiB
        ("--mem=1500M", "1500Mi"),
        ("--mem=512K", "512Ki"),
        ("--mem=2T", "2Ti"),
        ("--mem 4096", "4096Mi"),
        ("--mem-per-cpu=2G -c 4", "8Gi"),
        ("--mem-per-cpu=2G -c 3 -n 2", "12Gi"),
        ("--mem-per-cpu=100", "100Mi"),  # one CPU when none is asked for
        ("--mem-per-gpu=10G --gpus=2", "20Gi"),
    ],
)
def test_memory_units(directive: str, quantity: str) -> None:
    request = parse(directive)
    assert request.memory == quantity
    gib = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = int(quantity[:-2]), quantity[-2:]
    assert quantity_value(request.memory) == Decimal(number * gib[unit])


@pytest.mark.parametrize("value", ["lots", "1.5G", "16GiB", "16X", "-1", "G", ""])
def test_bad_memory(value: str) -> None:
    with pytest.raises(InputError) as caught:
        parse("-c 2", f"--mem={value}")
    assert str(caught.value) == (
        f"job.sh:3: --mem={value}: {value!r} is not a memory size (a whole number with an "
        "optional K, M, G or T suffix, e.g. 16G; no suffix is MiB)"
    )


def test_bad_memory_fixture_names_its_file() -> None:
    with pytest.raises(InputError, match=r"^bad-mem\.sh:3: --mem=lots: 'lots' is not"):
        parse_sbatch((SBATCH / "bad-mem.sh").read_text(), source="bad-mem.sh")


def test_mem_zero_means_the_whole_node_and_is_not_carried_over() -> None:
    request = parse("--mem=0")
    assert request.memory is None
    assert request.warnings == [
        "job.sh:2: --mem=0: 0 means all of the node's memory, which a pod cannot ask for; "
        "not carried over"
    ]


def test_mem_and_mem_per_cpu_are_exclusive() -> None:
    with pytest.raises(InputError, match=r"^job.sh:3: --mem-per-cpu=1G: --mem \(line 2\)"):
        parse("--mem=4G", "--mem-per-cpu=1G")


def test_mem_per_gpu_needs_gpus() -> None:
    with pytest.raises(InputError, match="needs a GPU count"):
        parse("--mem-per-gpu=4G")


def test_memory_megabytes_rounds_up_exactly() -> None:
    assert memory_megabytes("32Gi") == 32 * 1024
    assert memory_megabytes("1536Mi") == 1536
    assert memory_megabytes("1G") == 954  # 10**9 bytes = 953.67 MiB
    assert memory_megabytes("1Ki") == 1
    assert memory_megabytes("1048576") == 1


# -- CPUs, option forms ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    ["-c 4", "-c4", "--cpus-per-task=4", "--cpus-per-task 4", "--cpus-per-t=4", "-c '4'"],
)
def test_cpu_forms(form: str) -> None:
    request = parse(form)
    assert request.cpu == "4"
    assert request.warnings == []


def test_cpus_are_per_task_times_tasks() -> None:
    request = parse("-n 3", "-c 2")
    assert request.cpu == "6"
    assert request.origins["resources.cpu"] == "job.sh:3: -c 2 x job.sh:2: -n 3"
    assert request.warnings == [
        "job.sh:2: -n 3: 3 tasks (MPI ranks) become one container with 3 x cpus-per-task "
        "CPUs; nothing launches the tasks"
    ]


def test_later_option_wins() -> None:
    assert parse("-c 2", "--cpus-per-task=5").cpu == "5"


def test_ambiguous_prefix_is_an_error() -> None:
    with pytest.raises(InputError, match=r"--cpus is ambiguous"):
        parse("--cpus=4")


@pytest.mark.parametrize("value", ["0", "x", "2.5", "-1"])
def test_bad_cpu_count(value: str) -> None:
    with pytest.raises(InputError, match=rf"^job.sh:2: --cpus-per-task={value}: "):
        parse(f"--cpus-per-task={value}")


def test_missing_value() -> None:
    with pytest.raises(InputError, match=r"^job.sh:2: -c needs a value$"):
        parse("-c")


# -- GPUs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "count", "kind"),
    [
        ("--gres=gpu", 1, None),
        ("--gres=gpu:2", 2, None),
        ("--gres=gpu:a100:2", 2, "a100"),
        ("--gres=gpu:a100", 1, "a100"),
        ("--gres gpu:4", 4, None),
        ("--gpus=2", 2, None),
        ("--gpus=v100:3", 3, "v100"),
        ("-G 2", 2, None),
        ("-G2", 2, None),
        ("--gpus-per-node=2", 2, None),
        ("--gpus-per-task=1 -n 2", 2, None),
    ],
)
def test_gpu_forms(directive: str, count: int, kind: str | None) -> None:
    request = parse(directive)
    assert request.gpu == count
    assert request.gpu_type == kind
    assert not any("GPU" in w for w in request.warnings)  # the manifest decides the model
    if kind is not None:
        assert request.origins["gpu_type"] == f"job.sh:2: {directive}"


def test_other_gres_is_a_warning() -> None:
    request = parse("--gres=gpu:1,shard:2")
    assert request.gpu == 1
    assert request.warnings == [
        "job.sh:2: --gres=gpu:1,shard:2: GRES 'shard' has no Kubernetes counterpart known "
        "to imagesmith; not carried over"
    ]


@pytest.mark.parametrize("directive", ["--gres=gpu:a:b:c", "--gpus=two", "--gpus=a100:"])
def test_bad_gpus(directive: str) -> None:
    with pytest.raises(InputError, match=rf"^job.sh:2: {directive}: "):
        parse(directive)


# -- what does not map is reported, never dropped -------------------------------------------


def test_mpi_fixture_reports_everything() -> None:
    request = parse_sbatch((SBATCH / "mpi.sh").read_text(), source="mpi.sh")
    assert request.job_name == "sweep"
    assert request.cpu == "128"
    assert request.memory == "256000Mi"
    assert request.time_seconds == 1800
    assert request.warnings == [
        "mpi.sh:3: -N 2: a multi-node job needs an MPI operator or a JobSet; this "
        "manifest runs one pod on one node; not carried over",
        "mpi.sh:3: --ntasks=64: 64 tasks (MPI ranks) become one container with 64 x "
        "cpus-per-task CPUs; nothing launches the tasks",
        "mpi.sh:6: --exclusive: node selection: write a nodeSelector or affinity for your "
        "cluster by hand; not carried over",
        "mpi.sh:7: --dependency=afterok:1234: Kubernetes Jobs have no dependencies; "
        "submit them in order; not carried over",
        "mpi.sh:8: --mail-type=END,FAIL: Kubernetes sends no mail; not carried over",
        "mpi.sh:8: --mail-user=someone@example.edu: Kubernetes sends no mail; not carried over",
        "mpi.sh:9: -o logs/%x-%A_%a.out: Kubernetes keeps the container's output as "
        "its log (kubectl logs); not carried over",
        "mpi.sh:10: --frobnicate=7: unknown sbatch option; not carried over",
        "mpi.sh:12: uses a SLURM_* variable, which Kubernetes does not set: srun "
        './simulate --case "$SLURM_ARRAY_TASK_ID"',
        "mpi.sh:12: srun is not available in the container: srun ./simulate --case "
        '"$SLURM_ARRAY_TASK_ID"',
    ]


@pytest.mark.parametrize(
    ("directive", "fragment"),
    [
        ("-N 2", "multi-node"),
        ("--nodes=1-4", "multi-node"),
        ("-d afterany:1", "no dependencies"),
        ("--exclusive", "node selection"),
        ("-C haswell", "node selection"),
        ("--account=lab", "accounting"),
        ("--frob", "unknown sbatch option"),
        ("--frob value", "unknown sbatch option"),
        ("-Z", "unknown sbatch option"),
        ("stray", "not an option"),
    ],
)
def test_unmapped_directives_warn(directive: str, fragment: str) -> None:
    request = parse(directive)
    assert len(request.warnings) == 1, request.warnings
    assert request.warnings[0].startswith(f"job.sh:2: {directive if directive != 'stray' else ''}")
    assert fragment in request.warnings[0]


def test_one_node_and_one_task_are_fine() -> None:
    request = parse("-N 1", "-n 1", "--nodes=1-1")
    assert request.warnings == []
    assert request.cpu == "1"


# -- Slurm's rules for where directives are ---------------------------------------------------


def test_directives_stop_at_the_first_command() -> None:
    request = parse_sbatch((SBATCH / "gpu-train.sh").read_text(), source="gpu-train.sh")
    assert request.memory == "16Gi"  # the --mem=1T after the first command is not a directive
    assert request.job_name == "train-resnet"
    assert request.cpu == "8"
    assert (request.gpu, request.gpu_type) == (2, "a100")
    assert request.partition == "gpu"
    assert request.time_seconds == 86400 + 12 * 3600
    assert request.body == "module load cuda\npython3 train.py --epochs 90\n#SBATCH --mem=1T\n"
    assert request.command == ("/bin/bash", "-c", request.body)
    assert request.origins == {
        "name": "gpu-train.sh:2: -J train-resnet",
        "resources.cpu": "gpu-train.sh:3: -c8",
        "resources.memory": "gpu-train.sh:3: --mem=16G",
        "resources.gpu": "gpu-train.sh:4: --gres=gpu:a100:2",
        "gpu_type": "gpu-train.sh:4: --gres=gpu:a100:2",
        "job.time": "gpu-train.sh:5: --time 1-12",
        "partition": "gpu-train.sh:4: -p gpu",
        "job.command": "gpu-train.sh:8-10: the script body",
    }


def test_indented_or_spaced_directives_are_comments() -> None:
    text = "#!/bin/sh\n  #SBATCH -c 4\n# SBATCH -c 5\n#sbatch -c 6\n\n#SBATCH -c 7\necho\n"
    assert parse_sbatch(text).cpu == "7"


def test_quotes_and_trailing_comments() -> None:
    request = parse('-J "my job"   # named', "--comment='a # b' -c 2 # -c 9")
    assert request.job_name == "my job"
    assert request.cpu == "2"
    assert request.warnings == [
        "job.sh:3: --comment=a # b: not carried over; add an annotation by hand; not carried over"
    ]


def test_unmatched_quote() -> None:
    with pytest.raises(InputError, match=r"^job.sh:2: unmatched \""):
        parse('-J "oops')


def test_no_shebang_is_refused_like_sbatch_does() -> None:
    with pytest.raises(InputError, match=r"^job.sh:1: a batch script starts with #!"):
        parse_sbatch("#SBATCH -c 2\necho hi\n")


def test_dos_line_breaks_are_refused_like_sbatch_does() -> None:
    with pytest.raises(InputError, match="DOS line breaks"):
        parse_sbatch("#!/bin/bash\r\n#SBATCH -c 2\r\necho hi\r\n")


# -- the body becomes the command ------------------------------------------------------------


def test_env_python_script() -> None:
    request = parse_sbatch((SBATCH / "python-env.sh").read_text(), source="python-env.sh")
    assert request.interpreter == ("/usr/bin/env", "python3")
    assert request.command == (
        "/usr/bin/env",
        "python3",
        "-c",
        'import os\nprint("threads:", os.cpu_count())\n',
    )
    assert (request.cpu, request.memory, request.time_seconds) == ("4", "4Gi", 7200)
    assert request.warnings == []


def test_interpreter_argument_and_perl() -> None:
    assert parse_sbatch("#!/bin/bash -l\necho hi\n").command == (
        "/bin/bash",
        "-l",
        "-c",
        "echo hi\n",
    )
    assert parse_sbatch("#!/usr/bin/perl\nprint 1;\n").command == (
        "/usr/bin/perl",
        "-e",
        "print 1;\n",
    )
    odd = parse_sbatch("#!/opt/bin/mystery\nrun\n")
    assert odd.command == ("/opt/bin/mystery", "-c", "run\n")
    assert odd.warnings == [
        "job.sh:1: interpreter 'mystery': assumed to run a program given as `-c TEXT`; "
        "check the command"
    ]


def test_body_is_kept_byte_for_byte() -> None:
    body = "printf '%s\\n' \"ünïcode\" \t# tab\n\n  indented\nno newline at end"
    assert parse(body=body).body == body


def test_empty_body_keeps_the_images_command() -> None:
    request = parse("-c 2", body="\n# only comments\n")
    assert request.command is None
    assert request.warnings == [
        "job.sh: the script has no commands after its directives; the image's CMD "
        "(or [job] command) runs instead"
    ]


# -- into the spec and back -------------------------------------------------------------------


def test_apply_overrides_replaces_resources_and_job() -> None:
    spec = load_spec(EXAMPLE / "env.toml")
    request = parse_sbatch((SBATCH / "gpu-train.sh").read_text(), source="gpu-train.sh")
    changed = apply_overrides(spec, request)
    assert changed.resources.cpu == "8"
    assert changed.resources.memory == "16Gi"
    assert changed.resources.gpu == 2
    assert changed.resources.gpu_resource == spec.resources.gpu_resource
    assert changed.job.time == "1-12:00:00"
    assert changed.job.command == request.command
    assert changed.name == spec.name and changed.env == spec.env
    # what the script does not say stays as the spec says it
    unchanged = apply_overrides(spec, parse("--mem=1G"))
    assert unchanged.resources.cpu == spec.resources.cpu
    assert unchanged.job.command == ("/bin/bash", "-c", "echo hi\n")
    assert unchanged.job.time == spec.job.time
    # ...but a script that asks for no GPU gets none, unless the spec's are asked for
    assert spec.resources.gpu == 1
    assert unchanged.resources.gpu == 0
    assert apply_overrides(spec, parse("--mem=1G"), spec_gpu=True).resources.gpu == 1


def test_setup_lines_get_warnings_that_say_what_replaces_them() -> None:
    body = (
        "module load cuda/12\nml purge\nsource ~/venvs/x/bin/activate\nconda activate torch\n"
        ". /opt/env/bin/activate\npython x.py --data /scratch/$USER/d\necho module load\n"
    )
    warnings = parse(body=body).warnings
    assert [w.split(": ", 1)[0] for w in warnings] == [f"job.sh:{n}" for n in range(2, 8)]
    assert "the image holds the software" in warnings[0] and "ml purge" in warnings[1]
    assert "already active ([python] requirements)" in warnings[2]
    assert "conda environments" in warnings[3] and "host virtualenv" in warnings[4]
    assert "/scratch is not in the container; name it in [job] mounts" in warnings[5]


@pytest.mark.parametrize(
    "fixture",
    sorted(p.name for p in SBATCH.glob("*.sh") if not p.name.startswith("bad-")),
)
@pytest.mark.parametrize("runtime", ["podman", "apptainer"])
def test_round_trip_sbatch_spec_sbatch(fixture: str, runtime: str) -> None:
    """sbatch -> spec resources -> render_sbatch -> parse_sbatch gives the same resources."""
    spec = load_spec(EXAMPLE / "env.toml")
    first = parse_sbatch(fixture_text(fixture), source=fixture)
    merged = apply_overrides(spec, first)
    text = render_sbatch(merged, image=IMAGE, runtime=runtime)
    again = parse_sbatch(text, source="gen.sh")
    # Every directive maps; only the original body (now inside the exec line) may be noted.
    run_line = next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith("exec "))
    assert all(w.startswith(f"gen.sh:{run_line}: ") for w in again.warnings), again.warnings
    assert "SLURM_" in fixture_text(fixture) or again.warnings == []
    assert again.cpu == merged.resources.cpu
    assert merged.resources.memory is not None and again.memory is not None
    assert quantity_value(again.memory) == quantity_value(merged.resources.memory)
    assert (again.gpu or 0) == merged.resources.gpu
    assert again.time_seconds == (first.time_seconds or None)
    assert again.job_name == spec.name
    # and the regenerated spec asks for the same (memory in MiB now: "16Gi" -> "16384Mi")
    regenerated = apply_overrides(spec, again).resources
    assert regenerated.memory is not None
    assert quantity_value(regenerated.memory) == quantity_value(merged.resources.memory)
    assert (regenerated.cpu, regenerated.gpu) == (merged.resources.cpu, merged.resources.gpu)


# -- job arrays ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "indices", "limit"),
    [
        ("0-99", list(range(100)), None),
        ("1-99:2", list(range(1, 100, 2)), None),
        ("1,5,9", [1, 5, 9], None),
        ("1-7:2%2", [1, 3, 5, 7], 2),
        ("1,5,9,20-30:5%3", [1, 5, 9, 20, 25, 30], 3),
        ("5,1,3-4,4", [1, 3, 4, 5], None),  # Slurm's bitmap: sorted, each index once
        ("7", [7], None),
    ],
)
def test_array_forms(text: str, indices: list[int], limit: int | None) -> None:
    request = parse(f"--array={text}")
    assert request.array is not None
    assert list(request.array.indices()) == indices
    assert (request.array.count, request.array.first, request.array.last) == (
        len(indices),
        indices[0],
        indices[-1],
    )
    assert request.array.limit == limit
    assert request.array.text == text
    assert request.origins["job.array"] == f"job.sh:2: --array={text}"
    assert request.warnings == []


def test_array_runs_are_as_few_as_the_indices_allow() -> None:
    assert parse_job_array("0-99").runs == ((0, 1, 100),)
    assert parse_job_array("1,5,9").runs == ((1, 4, 3),)
    assert parse_job_array("1,3,5,10").runs == ((1, 2, 3), (10, 1, 1))
    assert parse_job_array("1,3,5,10").runs_text == "1:2:3 10:1:1"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1-100001", "over 100,000 indices; split the sweep into several arrays"),
        ("0-99999,200000-200001", "over 100,000 indices"),
        ("1-9:0", "'1-9:0' has a step of 0; a step is 1 or more"),
        ("1,,5", "'' is not an index, a range or a stepped range (e.g. 5, 0-99 or 1-99:2)"),
        ("1-5:2:3", "'1-5:2:3' is not an index, a range or a stepped range"),
        ("x", "'x' is not an index"),
        ("9-1", "'9-1' runs backwards; write it as 1-9"),
        ("1-5%0", "%0 is not a task limit (a whole number, 1 or more)"),
        ("1-5%", "% is not a task limit"),
        ("%4", "names no indices"),
        ("4000001", "index 4000001 is over 4,000,000, Slurm's largest"),
    ],
)
def test_bad_array_names_the_line(value: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        parse("-c 2", f"--array={value}")
    assert str(caught.value).startswith(f"job.sh:3: --array={value}: {message}")


def test_array_with_several_nodes_is_refused_with_both_lines() -> None:
    text = fixture_text("bad-array-multinode.sh")
    with pytest.raises(InputError) as caught:
        parse_sbatch(text, source="bad-array-multinode.sh")
    assert str(caught.value) == (
        "bad-array-multinode.sh:4: -N 2: a multi-node array (--array on line 3) cannot run "
        "here: each index would need a JobSet or an MPIJob (MPI Operator); make each task one "
        "node"
    )
    # one node per task is fine
    assert parse("--array=0-3", "-N 1").array is not None


def test_array_variables_in_the_body_are_not_warned_about() -> None:
    body = 'echo "$SLURM_ARRAY_TASK_ID of ${SLURM_ARRAY_TASK_COUNT}"\necho "$SLURM_JOB_ID"\n'
    request = parse("--array=1-3", body=body)
    assert request.warnings == [
        'job.sh:4: uses a SLURM_* variable, which Kubernetes does not set: echo "$SLURM_JOB_ID"'
    ]
    without = parse(body=body)
    assert len(without.warnings) == 2


def test_array_overrides_the_spec_and_round_trips_through_sbatch() -> None:
    spec = load_spec(EXAMPLE / "env.toml")
    request = parse_sbatch(fixture_text("array-step.sh"), source="array-step.sh")
    merged = apply_overrides(spec, request)
    assert merged.job.array == request.array
    text = render_sbatch(merged, image=IMAGE)
    assert "#SBATCH --array=1-99:2%10\n" in text
    again = parse_sbatch(text)
    assert again.array is not None and request.array is not None
    assert list(again.array.indices()) == list(request.array.indices())
    assert again.array.limit == 10
    # a script without --array keeps the spec's array
    spec_array = dataclasses.replace(spec, job=dataclasses.replace(spec.job, array=request.array))
    assert apply_overrides(spec_array, parse("-c 2")).job.array == request.array
