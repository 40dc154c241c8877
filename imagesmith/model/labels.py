"""The names imagesmith puts on what it makes, all on one domain (imagesmith.dev).

Each format gets that domain in its own convention: reverse DNS for OCI image labels
(`dev.imagesmith.lock`), a DNS prefix for Kubernetes labels and annotations
(`imagesmith.dev/lock-hash`).
"""

from __future__ import annotations

from collections.abc import Mapping

IMAGE_PREFIX = "dev.imagesmith"
LOCK = f"{IMAGE_PREFIX}.lock"
"""The whole lock, compressed (`render.embedded_lock`)."""
LOCK_HASH = f"{IMAGE_PREFIX}.lock-hash"
SPEC_HASH = f"{IMAGE_PREFIX}.spec-hash"

BASE_PREFIX = f"{IMAGE_PREFIX}.base"
"""Labels of a Debian base made by `imagesmith base`."""
BASE_SUITE = f"{BASE_PREFIX}.suite"
BASE_EPOCH = f"{BASE_PREFIX}.source-date-epoch"
BASE_ROOTFS = f"{BASE_PREFIX}.rootfs-sha256"

KUBERNETES_PREFIX = "imagesmith.dev"
"""Kubernetes labels and annotations: `imagesmith.dev/NAME`."""

# Images built before 0.6.0 carry their lock under this name; they stay readable.
LEGACY_LOCKS = ("io.imagesmith.lock",)


def embedded_lock_label(labels: Mapping[str, str]) -> tuple[str, str] | None:
    """(label name, value) of the lock an image carries, under today's name or an older one."""
    for name in (LOCK, *LEGACY_LOCKS):
        value = labels.get(name)
        if value:
            return name, value
    return None
