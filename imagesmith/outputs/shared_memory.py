"""/dev/shm for a job: whether it gets a memory-backed one, and how big.

PyTorch data loaders and NCCL need more than a container runtime's 64 MiB, so a job with a
GPU (or an explicit [resources] shm) gets one of `[resources] shm` or DEFAULT_SHM: a
memory-backed emptyDir in a pod (it counts against the memory limit), `--shm-size` under
podman in a Slurm batch script.
"""

from __future__ import annotations

import math

from imagesmith.model.quantity import quantity_value
from imagesmith.model.spec import Spec

DEFAULT_SHM = "1Gi"


def needs_shm(spec: Spec) -> bool:
    return spec.resources.gpu > 0 or spec.resources.shm is not None


def shm_size(spec: Spec) -> str:
    """The size as a Kubernetes quantity (the pod's emptyDir sizeLimit)."""
    return spec.resources.shm or DEFAULT_SHM


def shm_bytes(spec: Spec) -> int:
    """The size in whole bytes, rounded up (podman's --shm-size)."""
    return math.ceil(quantity_value(shm_size(spec)))
