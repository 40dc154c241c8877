"""`imagesmith verify`: rebuild from the lock with no cache and compare digests.

Identical digests prove that the lock alone determines the image. When they differ,
the two canonical layouts are compared file by file (diffoci-style) so the cause can
be found: which config field, which layer, which files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imagesmith.build import build_canonical
from imagesmith.canonical import diff_archives
from imagesmith.canonical_build import layout_dir
from imagesmith.engine.base import Engine
from imagesmith.errors import InputError
from imagesmith.lock import Lock
from imagesmith.records import read_build_record
from imagesmith.spec import Spec

LineCallback = Callable[[str], None]


@dataclass(frozen=True)
class Verdict:
    reference: str
    """The digest the earlier build recorded."""
    rebuilt: str
    differences: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return self.reference == self.rebuilt


def verify(
    spec: Spec, lock: Lock, engine: Engine, *, on_line: LineCallback = lambda _: None
) -> Verdict:
    """Rebuild `lock` from scratch and compare with the build recorded for it."""
    built = read_build_record(spec.path, lock.lock_hash)
    if built is None:
        raise InputError(
            f"nothing to compare with: run `imagesmith build {spec.path.name}` first "
            "(verify rebuilds and compares with that build)"
        )
    reference_layout = layout_dir(built.digest)
    on_line(f"verify: rebuilding {spec.name} from {spec.lock_path.name} with no cache")
    rebuilt = build_canonical(lock, engine, no_cache=True, on_line=on_line)
    differences: list[str] = []
    if rebuilt.digest != built.digest:
        if (reference_layout / "index.json").exists():
            differences = diff_archives(reference_layout, rebuilt.layout)
        else:
            differences = [f"the earlier build's layout {built.digest[:19]} is no longer cached"]
    if rebuilt.image_id != built.image_id:
        engine.remove_image(rebuilt.image_id, force=True)
    return Verdict(reference=built.digest, rebuilt=rebuilt.digest, differences=tuple(differences))
