"""`imagesmith verify`: rebuild from the lock with no cache and compare digests.

Identical digests prove that the lock alone determines the image. When they differ,
the two canonical layouts are compared file by file (diffoci-style) so the cause can
be found: which config field, which layer, which files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError, InputError, LockFormatError
from imagesmith.image.diff import diff_archives
from imagesmith.model.lock import Lock, format_problem
from imagesmith.model.records import read_build_record
from imagesmith.model.spec import Spec
from imagesmith.pipeline.build import build_canonical
from imagesmith.pipeline.canonical_build import Canonical, layout_dir
from imagesmith.progress import LineCallback
from imagesmith.userpath import as_typed


@dataclass(frozen=True)
class Verdict:
    reference: str
    """The digest the earlier build recorded."""
    rebuilt: str
    differences: tuple[str, ...]

    @property
    def identical(self) -> bool:
        return self.reference == self.rebuilt


def _forget_rebuild(engine: Engine, rebuilt: Canonical, *, keep: str) -> None:
    """Remove what the --no-cache rebuild left: its image and, with it, its chain of
    intermediate images. A second chain for the same steps splits Docker's classic cache:
    later builds may follow the wrong one and miss (seen: a no-op rebuild rerunning pip)."""
    try:
        if rebuilt.built_id and rebuilt.built_id != keep:
            # Docker drops the rebuild's chain; podman keeps it (its cache still points at
            # those layers: removing them there broke later builds, "layer not known").
            engine.forget_build(rebuilt.built_id)
        if rebuilt.image_id != keep:
            engine.remove_image(rebuilt.image_id, force=True)
    except EngineError:
        pass  # tidying only: the verdict stands either way


def verify(
    spec: Spec, lock: Lock, engine: Engine, *, on_line: LineCallback = lambda _: None
) -> Verdict:
    """Rebuild `lock` from scratch and compare with the build recorded for it."""
    built = read_build_record(spec.path, lock.lock_hash)
    if built is None:
        raise InputError(
            f"nothing to compare with: run `imagesmith build {as_typed(spec.path)}` first "
            "(verify rebuilds and compares with that build)"
        )
    reference_layout = layout_dir(built.digest)
    on_line(f"verify: rebuilding {spec.name} from {spec.lock_path.name} with no cache")
    from imagesmith.inputs.archive import Archive

    archive = Archive.for_lock(spec.registry_repository, lock)
    rebuilt = build_canonical(lock, engine, no_cache=True, on_line=on_line, archive=archive)
    differences: list[str] = []
    if rebuilt.digest != built.digest:
        if (reference_layout / "index.json").exists():
            differences = diff_archives(reference_layout, rebuilt.layout)
        else:
            differences = [f"the earlier build's layout {built.digest[:19]} is no longer cached"]
    _forget_rebuild(engine, rebuilt, keep=built.image_id)
    return Verdict(reference=built.digest, rebuilt=rebuilt.digest, differences=tuple(differences))


def verify_image(image: str, engine: Engine, *, on_line: LineCallback = lambda _: None) -> Verdict:
    """Rebuild from the lock `image` carries and compare with `image` itself (by image ID)."""
    import tempfile
    from pathlib import Path

    from imagesmith.render.containerfile import lock_in_image

    info = engine.inspect_image(image)
    _, lock = lock_in_image(image, info.labels, path=Path.cwd() / "env.lock")
    problem = format_problem(lock, subject=f"the lock {image} carries")
    if problem:
        raise LockFormatError(problem)
    on_line(f"verify: rebuilding {image} from the lock it carries, with no cache")
    with tempfile.TemporaryDirectory(prefix="imagesmith-verify-spec-") as folder:
        if lock.copy:
            # The files [image] copy took from beside the spec: out of the image's own
            # COPY layers, each checked against the tree hash the lock pins.
            from imagesmith.pipeline.unpack import copied_tree

            lock = replace(lock, spec_path=Path(folder) / "env.toml")
            copied_tree(engine, image, lock, Path(folder))
        rebuilt = build_canonical(lock, engine, no_cache=True, on_line=on_line)
    differences: list[str] = []
    if rebuilt.image_id != info.id:
        with tempfile.TemporaryDirectory(prefix="imagesmith-verify-") as tmp:
            archive = Path(tmp) / "image.tar"
            engine.save(image, archive)
            differences = diff_archives(archive, rebuilt.layout)
    _forget_rebuild(engine, rebuilt, keep=info.id)
    return Verdict(reference=info.id, rebuilt=rebuilt.image_id, differences=tuple(differences))
