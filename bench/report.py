"""results.json -> bench/README.md: the figures, the targets, and how they were measured."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

HOW_TO_RUN = """\
## How to run

```sh
.venv/bin/python bench/run.py --quick --engines docker  # 1 run each, no scaling (~12 min)
.venv/bin/python bench/run.py --quick                   # the same on docker and podman (~25 min)
.venv/bin/python bench/run.py                           # 3 runs, docker+podman, scaling (~1.5 h)
.venv/bin/python bench/run.py --figures push --merge    # lock,build,push,scaling: any subset
.venv/bin/python bench/run.py --scaling-runs 3          # medians for the scaling points too
.venv/bin/python bench/run.py --figures build --merge   # redo some figures, keep the rest
.venv/bin/python bench/run.py --render-only             # README + PNG again from results.json
.venv/bin/python bench/run.py --runs 5 --engines podman # any subset
.venv/bin/python bench/recipe_build.py pytorch-gpu      # one recipe, built once (section 5)
.venv/bin/python bench/stage_share.py                   # substitution, stage sharing (section 6)
.venv/bin/python bench/catalogue.py                     # 8 specs: --jobs 2, in a row, Slurm (7)
.venv/bin/python bench/integrity_cost.py                # cache integrity's share: integrity.md
```

Needs the Docker daemon (`bash scripts/start-dockerd.sh`; the benchmark starts it when it
does not answer) and/or podman, and the base image `imagesmith/debian:bookworm` in each
engine (made with `imagesmith base --engine E` when missing; it is shared and kept), and
`docker-registry` (Debian's package) for the push figures. The first run creates two
bench-only virtual environments: `bench/.venv-plot` (matplotlib) and
`bench/.venv-piptools` (pip-tools, the reference for Python resolution); imagesmith's
`.venv` is not touched. Everything else happens in a temporary folder; every image is
named `imagesmith-bench…` (spec names cannot contain `/`, so imagesmith's images are
`imagesmith-bench-<run id>-…`, the hand-written ones `imagesmith-bench/hand-<run id>`) and
removed at the end, by tag and by the IDs the build logs show being created (never a
prune, never `--force`; the list is kept in `bench/.work/` as it grows, so the next run
removes what a killed run left). The push figures start their own `docker-registry`
processes on free ports of 127.0.0.1 (no authentication, storage in the temporary folder)
and stop them after each run (noted in `bench/.work/` too while they run). The run writes
`bench/results.json` (raw numbers),
this README and `bench/build-times.png`, after each figure, so an interrupted run leaves
what it had measured.
"""

METHOD = """\
## What each figure means

Every number is the wall-clock time of a whole process (a subprocess, from spawn to exit,
interpreter start-up included), the median of the runs (range in brackets when there are
several), next to a reference measured in the same run on the same machine. All pip
processes run with the machine's pip configuration switched off (`PIP_CONFIG_FILE=/dev/null`,
no local find-links), so they all use PyPI alone; docker builds use the classic builder
(`DOCKER_BUILDKIT=0`), the one imagesmith drives through the Docker API.

**Lock** (`imagesmith lock` of `recipes/lab-analysis/env.toml` with the base replaced by
`imagesmith/debian:bookworm`):
- *cold*: no `env.lock`, empty imagesmith/uv caches: base lookup, two probe containers in
  the base (apt-get update + simulated install), uv resolution. Reference: pip-compile's
  cold time for the Python part alone.
- *warm*: the lock exists and the spec is unchanged (no network, nothing resolved).
  Target < 0.3 s. Reference: `imagesmith --version`, the floor any command pays.
- *Python resolution*: imagesmith's exact uv call (`uv pip compile --python-version 3.11
  --python-platform x86_64-manylinux_2_36 --generate-hashes …`) against `pip-compile
  --generate-hashes` (pip-tools, in its own venv, for the host's CPython 3.11) on
  `numpy>=2, requests, pyyaml`. Cold: empty caches (fresh `UV_CACHE_DIR`; fresh
  `--cache-dir` and `PIP_CACHE_DIR`), warm: the same call again with those caches. Target:
  uv at least 5x faster (cold).

**Build**, per engine, against `bench/handwritten/Containerfile`: what a senior engineer
writes by hand for the same environment (one apt-get layer with `--no-install-recommends`
and cleanup, a venv stage, non-root user, same ENV/WORKDIR/CMD). pip cannot reach PyPI from
inside a build here (TLS-intercepting proxy), so the hand-written recipe downloads the
wheels on the host (`pip download --only-binary=:all: -r requirements.txt -d wheels`) and
installs them in the build with `--no-index --find-links` (imagesmith also downloads them on
the host, and installs them there too, into the tree it copies to /opt/venv).
- *cold*: `imagesmith build --no-cache` with an empty imagesmith cache (wheels are fetched
  again, every layer is rewritten, the base's included) against the hand-written
  `pip download` with an empty pip cache + `docker build --no-cache` /
  `podman build --no-cache`. The lock exists (made before,
  untimed). Target: imagesmith <= 0.9x.
- *no-op*: the same build again, nothing changed: the whole `imagesmith build` process
  against `docker build` / `podman build` again (all steps cached). Target on Docker:
  <= 1.5 s. imagesmith runs with its bytecode cached, as a pip-installed one does (before
  2026-12-02 the bench inherited PYTHONDONTWRITEBYTECODE from these machines, and every
  imagesmith run compiled its modules: about 0.2 s more on each figure).
- *no-op again*: the same once more. The first no-op comes right after `--no-cache`
  builds, which leave look-alike cache entries (see the steps that ran); the second shows
  the rebuild once the cache has settled. On podman the first no-op may rerun steps:
  podman takes the oldest look-alike cache entry (the same step, left by an earlier
  build) and then redoes what follows it if that entry's chain lacks it (0.4.0: the
  system stage opened with an `ARG` every spec on the same base shares, so everything
  could rerun; since 0.5.0 the first step holds the spec's own apt and user commands).
  The engine image is then new, and each run's fresh imagesmith cache has not seen it,
  so the canonical rewrite runs again (a few seconds; the same digest).
- *pin change*: `pyyaml` -> `pyyaml==6.0.1` in env.toml, then `imagesmith build --relock`
  (the layer cache from the cold build holds the base and apt layers);
  hand-written: the same edit in requirements.txt, `pip download` again (warm pip cache)
  and the engine build (apt layer cached).
- *single-stage* (`bench/handwritten-single/Containerfile`): the fastest layout an expert
  writes, the second reference for the cold build: python3 from Debian installed once,
  the wheels downloaded on the host the same way and installed from the context, all in
  one `COPY` and one `RUN`, no second stage (so the wheel files stay in the `COPY` layer:
  speed over size). Same apt packages (plus `python3 python3-venv`) and Python
  requirements as the example. Cold: `pip download` with an empty pip cache + engine
  build `--no-cache`, right after the two-stage one in each run. Target: imagesmith's cold
  build <= 0.7x it; and against the two-stage reference no slower than on the last
  measured version (0.5.0, 2026-11-29: 0.78x on Docker, 0.85x on podman).
- *cold, .debs cached*: at the end of each run, `imagesmith build --no-cache` again with an
  imagesmith cache that holds only the `.deb`s (`$XDG_CACHE_HOME/imagesmith/debs`, copied
  from the cold build's): the engine's cache unused, the wheels fetched again, the layers
  rewritten. Against the cold build of the same run (reported, no target).
- *size*: `docker image inspect -f {{.Size}}` / `podman image inspect` of the final images.
  Target: imagesmith <= hand-written.
- *canonical share*: the part of imagesmith's cold build after its `canonical:` progress
  line (rewrite of the layers not yet done, load, tag), as a share of the whole cold
  build. Target <= 10%. Layers are read in place from the engine's store (no save), and
  the base's and the apt stage's layers are rewritten in the background while the engine
  builds the later stages: that work is not in this share but in the *engine build* phase,
  which the table sets against the hand-written engine build. The first run also times
  the parts one by one, nothing in the background, on the image that build made
  (`bench/canon_time.py`).
- imagesmith's phases come from its progress lines: *prepare* (start-up, lock check or
  re-lock, context) until the engine's first `Step` (the wheel download and install
  overlap the system stage's build when they are not cached), *engine build* until
  `canonical:`, *canonical* to the end. *Of which the system stage*: the part of the
  engine build spent on the system stage (`COPY` of the .debs, apt-get install, the
  engine's commit), when it is built apart (its own engine build, until the next one's
  first step).

**Push and the input archive**, per engine (`imagesmith push` reads the canonical image
from imagesmith's cache and talks to the registry itself, so the engine matters only for
the builds). Two images of the example with `[registry] repository` on the run's own
`docker-registry`: the *first*, and a *second* that is the same spec with
`pyyaml==6.0.1` (the same apt closure and base, other wheels), both built first (untimed).
Each run starts two empty registries on 127.0.0.1: one gets `push --no-inputs` of the
first then the second image (`--to`), the other `push` with inputs (the input archive:
every `.deb` and wheel the lock pins, and the local-only base, as blobs under one OCI
artifact `lock-<hash>.inputs`) of the same two. Both pushes also attach the SBOMs and
provenance (the default). *Bytes added*: `du -sb` of the registry's storage after the push
minus before.
- *rebuild on an empty machine*: then the first image is removed from the engine, and
  `imagesmith build --no-cache` runs in a folder holding only `env.toml` and `env.lock`,
  with an empty `XDG_CACHE_HOME` and `UV_CACHE_DIR`, and Debian's archive and PyPI
  unreachable (`http_proxy`/`https_proxy`/`HTTP_PROXY`/`HTTPS_PROXY` =
  `http://127.0.0.1:9`, a port that answers nothing, `no_proxy=127.0.0.1,localhost`), so
  every `.deb` and wheel comes from the registry. The base `imagesmith/debian:bookworm`
  stays in the engine (other people's builds use it; an engine without it pulls it from
  the archive's `base-<image ID>` tag). The digest must equal the first build's: a
  different one fails the figure. Reference: the cold build of the build figure.

**Scaling** (Docker only; skipped with `--quick`): specs with the first 5, 20 and 80 entries
of `bench/scaling-apt.txt` (Debian bookworm packages) and `bench/scaling-python.txt` (PyPI
packages with cp311 manylinux or pure-Python wheels) each: cold `imagesmith lock` (no lock,
empty caches) and cold `imagesmith build --no-cache` (empty imagesmith cache). Reference:
the 5-package point. One run per point unless `--scaling-runs N` (at 80 packages one cold
build takes minutes on 2 cores; the figure is about the curve's shape). *of which canonical*
is the part after the engine build; the more apt packages, the longer the background rewrite
of the apt layer outlasts the Python stage, and the more of it shows there.
"""

ATTEST = """\
## SBOM and provenance (`bench/attest_time.py`)

`.venv/bin/python bench/attest_time.py LOCK [RUNS]` times both SBOMs and the provenance
made from a lock, and attaching them to a pushed image as OCI referrers (its own
`docker-registry` on 127.0.0.1). For the lab-analysis example (71 apt packages, 7 Python
distributions), three runs on 2 cores shared with other work, imagesmith 0.6.0:
generation 0.010-0.035 s, first attach 0.14-0.32 s, re-push 0.06-0.07 s; together under
1.1% of the example's cold build (33.2 s on Docker, measured on 0.5.0 on 2026-11-29; target
<= 3%). Details in [docs/sbom.md](../docs/sbom.md#measured).
"""

# imagesmith's cold build / the two-stage reference on the last version measured before
# the single-stage reference came (0.5.0, bench run of 2026-11-29): "no slower than today".
TWO_STAGE_BEFORE = {"docker": 0.78, "podman": 0.85}
SINGLE_STAGE_TARGET = 0.7


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _seconds(values: Sequence[Any], key: str = "seconds") -> list[float]:
    return [float(v[key]) if isinstance(v, dict) else float(v) for v in values]


def _fmt(values: Sequence[float], unit: str = "s", digits: int = 2) -> str:
    if not values:
        return "—"
    if unit == "MB":
        scaled = [v / 1e6 for v in values]
        text = f"{_median(scaled):.1f} MB"
        if len(scaled) > 1 and max(scaled) - min(scaled) > 0.05:
            text += f" ({min(scaled):.1f}–{max(scaled):.1f})"
        return text
    text = f"{_median(values):.{digits}f} s"
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}–{max(values):.{digits}f})"
    return text


def _ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float | None:
    if not numerator or not denominator or _median(denominator) == 0:
        return None
    return _median(numerator) / _median(denominator)


def _fmt_ratio(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}x"


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("**yes**" if ok else "**no**")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _lock_section(lock: dict[str, Any], targets: list[list[str]]) -> list[str]:
    cold, warm, startup = lock.get("cold", []), lock.get("warm", []), lock.get("startup", [])
    uv_cold, pc_cold = lock.get("uv_cold", []), lock.get("pip_compile_cold", [])
    uv_warm, pc_warm = lock.get("uv_warm", []), lock.get("pip_compile_warm", [])
    closure = lock.get("closure", {})
    rows = [
        [
            "cold lock (no env.lock, empty caches)",
            _fmt(cold),
            f"pip-compile cold, Python only: {_fmt(pc_cold)}",
            _fmt_ratio(_ratio(cold, pc_cold)),
            "(reported)",
            "—",
        ],
        [
            "warm re-lock (unchanged spec)",
            _fmt(warm, digits=3),
            f"`imagesmith --version`: {_fmt(startup, digits=3)}",
            _fmt_ratio(_ratio(warm, startup)),
            "< 0.3 s",
            _met(_median(warm) < 0.3) if warm else "—",
        ],
        [
            "Python resolution, cold caches",
            f"uv: {_fmt(uv_cold)}",
            f"pip-compile: {_fmt(pc_cold)}",
            f"pip-compile / uv = {_fmt_ratio(_ratio(pc_cold, uv_cold))}",
            ">= 5x",
            _met((_ratio(pc_cold, uv_cold) or 0) >= 5) if uv_cold else "—",
        ],
        [
            "Python resolution, warm caches",
            f"uv: {_fmt(uv_warm)}",
            f"pip-compile: {_fmt(pc_warm)}",
            f"pip-compile / uv = {_fmt_ratio(_ratio(pc_warm, uv_warm))}",
            "—",
            "—",
        ],
    ]
    if warm:
        targets.append(["warm re-lock < 0.3 s", _fmt(warm, digits=3), _met(_median(warm) < 0.3)])
    if uv_cold and pc_cold:
        ratio = _ratio(pc_cold, uv_cold) or 0
        targets.append(["Python resolution >= 5x faster than pip-compile", f"{ratio:.1f}x",
                        _met(ratio >= 5)])  # fmt: skip
    out = [f"## 1. Lock (engine: {lock.get('engine', '?')})", ""]
    out += _table(["figure", "imagesmith", "reference", "ratio", "target", "met"], rows)
    if closure:
        out += ["", f"The lock pins {closure.get('apt')} apt packages and "
                f"{closure.get('python')} Python distributions."]  # fmt: skip
    pins = lock.get("pins", {})
    if pins:
        same = pins.get("uv") == pins.get("pip-compile")
        out += [
            "",
            "uv and pip-compile pinned "
            + ("the same versions" if same else "different versions")
            + f": uv {', '.join(pins.get('uv', []))}"
            + ("" if same else f"; pip-compile {', '.join(pins.get('pip-compile', []))}")
            + ".",
        ]
    imports = lock.get("import_times", [])
    if imports:
        listed = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in imports[:6])
        out += ["", f"Slowest top-level imports of a warm `imagesmith lock` "
                f"(`python -X importtime`, cumulative): {listed}."]  # fmt: skip
    return out


def _build_section(
    engine: str,
    fig: dict[str, Any],
    targets: list[list[str]],
    handwritten_steps: dict[str, list[list[str]]],
) -> list[str]:
    ism, hand = fig["imagesmith"], fig["handwritten"]
    cold, noop, pin = (_seconds(ism[k]) for k in ("cold", "noop", "pin"))
    h_cold, h_noop, h_pin = (_seconds(hand[k]) for k in ("cold", "noop", "pin"))
    size_i, size_h = fig["size"]["imagesmith"], fig["size"]["handwritten"]
    share = [c["canonical"] / c["seconds"] for c in ism["cold"] if c["seconds"]]
    canonical = _seconds(ism["cold"], "canonical")
    fetch, engine_build = fig["handwritten_fetch"], fig["handwritten_engine"]
    cold_ratio, size_ratio = _ratio(cold, h_cold), _ratio(size_i, size_h)
    noop_ok = (_median(noop) <= 1.5) if noop and engine == "docker" else None
    again, h_again = _seconds(ism.get("noop_again", [])), _seconds(hand.get("noop_again", []))
    again_ok = (_median(again) <= 1.5) if again and engine == "docker" else None
    rows = [
        [
            "cold build",
            _fmt(cold, digits=1),
            f"{_fmt(h_cold, digits=1)} = pip download {_fmt(fetch['cold'], digits=1)} "
            f"+ {engine} build {_fmt(engine_build['cold'], digits=1)}",
            _fmt_ratio(cold_ratio),
            "<= 0.9x",
            _met(cold_ratio <= 0.9) if cold_ratio is not None else "—",
        ],
        *_single_stage_rows(engine, fig, cold, cold_ratio, targets),
        [
            "no-op rebuild (first after the cold build)",
            _fmt(noop),
            f"{engine} build: {_fmt(h_noop)}",
            _fmt_ratio(_ratio(noop, h_noop)),
            "<= 1.5 s" if engine == "docker" else "—",
            _met(noop_ok),
        ],
    ]
    if again:
        rows.append(
            [
                "no-op rebuild again (second in a row)",
                _fmt(again),
                f"{engine} build: {_fmt(h_again)}",
                _fmt_ratio(_ratio(again, h_again)),
                "<= 1.5 s" if engine == "docker" else "—",
                _met(again_ok),
            ]
        )
    rows += [
        [
            "pin change (pyyaml==6.0.1)",
            _fmt(pin, digits=1),
            f"{_fmt(h_pin, digits=1)} = pip download {_fmt(fetch['pin'], digits=1)} "
            f"+ {engine} build {_fmt(engine_build['pin'], digits=1)}",
            _fmt_ratio(_ratio(pin, h_pin)),
            "—",
            "—",
        ],
        [
            "image size",
            _fmt(size_i, unit="MB"),
            _fmt(size_h, unit="MB"),
            _fmt_ratio(size_ratio, 3),
            "<= 1.0x",
            _met(size_ratio <= 1.0) if size_ratio is not None else "—",
        ],
        *(
            [
                [
                    "image size vs single-stage",
                    _fmt(size_i, unit="MB"),
                    _fmt(fig["size"]["handwritten_single"], unit="MB"),
                    _fmt_ratio(_ratio(size_i, fig["size"]["handwritten_single"]), 3),
                    "—",
                    "—",
                ]
            ]
            if fig["size"].get("handwritten_single")
            else []
        ),
        [
            "canonical step in the cold build",
            f"{_fmt(canonical, digits=1)} = {_median(share) * 100:.0f}% of the cold build"
            if share
            else "—",
            "the cold build",
            f"{_median(share):.2f}" if share else "—",
            "<= 10%",
            _met(_median(share) <= 0.10) if share else "—",
        ],
    ]
    if cold_ratio is not None:
        targets.append([f"{engine}: cold build <= 0.9x hand-written", _fmt_ratio(cold_ratio),
                        _met(cold_ratio <= 0.9)])  # fmt: skip
    if noop_ok is not None:
        targets.append(
            [f"{engine}: no-op rebuild <= 1.5 s (first after cold)", _fmt(noop), _met(noop_ok)]
        )
    if again_ok is not None:
        targets.append(
            [f"{engine}: no-op rebuild <= 1.5 s (second in a row)", _fmt(again), _met(again_ok)]
        )
    if size_ratio is not None:
        targets.append([f"{engine}: image size <= hand-written", _fmt_ratio(size_ratio, 3),
                        _met(size_ratio <= 1.0)])  # fmt: skip
    if share:
        targets.append([f"{engine}: canonical step <= 10% of cold build",
                        f"{_median(share) * 100:.0f}%", _met(_median(share) <= 0.10)])  # fmt: skip
    out = [f"## 2. Build: {engine}", ""]
    out += _table(["figure", "imagesmith", "hand-written", "ratio", "target", "met"], rows)
    phase_rows = []
    kinds = (
        ("cold", "cold"),
        ("cold, .debs cached", "cold_debs_cached"),
        ("no-op", "noop"),
        ("no-op again", "noop_again"),
        ("pin change", "pin"),
    )
    for name, key in kinds:
        runs = ism.get(key, [])
        if not runs:
            continue
        # No step line found in the log (podman's "[i/n] STEP" before the parser knew it).
        split_known = [r for r in runs if r["engine_build"] > 0]
        apart = [r for r in split_known if r.get("system_stage") is not None]
        phase_rows.append(
            [
                name,
                _fmt(_seconds(split_known, "prepare"), digits=1),
                _fmt(_seconds(split_known, "engine_build"), digits=1),
                _fmt(_seconds(apart, "system_stage"), digits=1),
                _fmt(_seconds(runs, "canonical"), digits=1),
                _fmt(_seconds(runs), digits=1),
            ]
        )
    out += ["", f"imagesmith's phases on {engine} (from its progress lines):", ""]
    out += _table(
        ["build", "prepare", "engine build", "of which the system stage", "canonical", "whole"],
        phase_rows,
    )
    ran = [run.get("steps_run") for run in ism["noop"] if run["engine_build"] > 0]
    if ran:
        listed = "; ".join(
            f"run {i + 1}: {', '.join(steps) if steps else 'none'}" for i, steps in enumerate(ran)
        )
        out += ["", f"Build steps that ran (not served from the cache) in imagesmith's no-op "
                f"rebuilds: {listed}."]  # fmt: skip
    hand_ran = handwritten_steps.get(engine, [])[1::3]
    if ran and hand_ran:
        listed = "; ".join(
            f"run {i + 1}: {', '.join(steps) if steps else 'none'}"
            for i, steps in enumerate(hand_ran)
        )
        out += ["", f"... and in the hand-written no-op rebuilds: {listed}."]
    split = fig.get("canonical_split")
    if split:
        in_place = (
            f"read in place from {engine}'s store and rewritten (what builds do) "
            f"{split['in_place']:.1f} s; "
            if "in_place" in split
            else ""
        )
        out += [
            "",
            f"The canonical step taken apart (first run, each part timed alone, every layer "
            f"rewritten as with an empty layer cache, nothing in the background): {in_place}"
            f"the other way, `{engine} save` {split['save']:.1f} s + `canonicalize` "
            f"{split['canonicalize']:.1f} s; load back {split['load']:.1f} s "
            f"(archive {split['archive_bytes'] / 1e6:.0f} MB).",
        ]
    return out


def _single_stage_rows(
    engine: str,
    fig: dict[str, Any],
    cold: list[float],
    cold_ratio: float | None,
    targets: list[list[str]],
) -> list[list[str]]:
    """The cold build against the single-stage reference, and with the .debs cached."""
    rows: list[list[str]] = []
    single = fig.get("handwritten_single", {})
    if single.get("cold"):
        ratio = _ratio(cold, single["cold"])
        rows.append(
            [
                "cold build vs single-stage hand-written",
                _fmt(cold, digits=1),
                f"{_fmt(single['cold'], digits=1)} = pip download "
                f"{_fmt(single['fetch'], digits=1)} + {engine} build "
                f"{_fmt(single['engine'], digits=1)}",
                _fmt_ratio(ratio),
                f"<= {SINGLE_STAGE_TARGET}x",
                _met(ratio <= SINGLE_STAGE_TARGET) if ratio is not None else "—",
            ]
        )
        if ratio is not None:
            targets.append(
                [
                    f"{engine}: cold build <= {SINGLE_STAGE_TARGET}x single-stage hand-written",
                    _fmt_ratio(ratio),
                    _met(ratio <= SINGLE_STAGE_TARGET),
                ]
            )
        before = TWO_STAGE_BEFORE.get(engine)
        if before is not None and cold_ratio is not None:
            targets.append(
                [
                    f"{engine}: cold build vs two-stage hand-written no slower than on 0.5.0 "
                    f"(<= {before:.2f}x)",
                    _fmt_ratio(cold_ratio),
                    _met(round(cold_ratio, 2) <= before),
                ]
            )
    system = _seconds([r for r in fig["imagesmith"]["cold"] if r.get("system_stage") is not None],
                      "system_stage")  # fmt: skip
    if system and single.get("cold"):
        rows.append(
            [
                "the cold build's system stage alone (apt in the engine: COPY, dpkg, commit)",
                _fmt(system, digits=1),
                f"single-stage hand-written: {_fmt(single['cold'], digits=1)}",
                _fmt_ratio(_ratio(system, single["cold"])),
                "(reported)",
                "—",
            ]
        )
    cached = _seconds(fig["imagesmith"].get("cold_debs_cached", []))
    if cached:
        rows.append(
            [
                "cold build, .debs already in the host cache (engine cache unused)",
                _fmt(cached, digits=1),
                f"the cold build: {_fmt(cold, digits=1)}",
                _fmt_ratio(_ratio(cached, cold)),
                "(reported)",
                "—",
            ]
        )
    return rows


def _mb(values: Sequence[Any], key: str) -> str:
    numbers = [float(v[key]) / 1e6 for v in values]
    if not numbers:
        return "—"
    text = f"{_median(numbers):.1f} MB"
    if len(numbers) > 1 and max(numbers) - min(numbers) > 0.05:
        text += f" ({min(numbers):.1f}–{max(numbers):.1f})"
    return text


def _push_section(
    engine: str, fig: dict[str, Any], cold: list[float], targets: list[list[str]]
) -> list[str]:
    push = fig["push"]
    rows = []
    for key, what in (("first", "first image"), ("second", "second image (pyyaml==6.0.1)")):
        with_inputs, bare = push.get(f"{key}_inputs", []), push.get(f"{key}_no_inputs", [])
        if not with_inputs or not bare:
            continue
        rows.append(
            [
                f"push, {what}",
                _fmt(_seconds(with_inputs)),
                _mb(with_inputs, "bytes_added"),
                _fmt(_seconds(bare)),
                _mb(bare, "bytes_added"),
                _fmt_ratio(_ratio(_seconds(with_inputs), _seconds(bare))),
            ]
        )
    closure = fig.get("closure", {})
    out = [f"## 3. Push and the input archive: {engine}", ""]
    out += _table(
        [
            "push",
            "with inputs",
            "registry bytes added",
            "`--no-inputs`",
            "registry bytes added",
            "time ratio",
        ],
        rows,
    )
    first, second = closure.get("first", {}), closure.get("second", {})
    if first and second:
        out += [
            "",
            f"The first lock pins {first.get('apt')} apt packages and {first.get('python')} "
            f"Python distributions, the second {second.get('apt')} and {second.get('python')}.",
        ]
    rebuilds = fig.get("rebuild", [])
    if rebuilds:
        seconds = _seconds(rebuilds)
        same = all(r.get("same_digest") for r in rebuilds)
        verdict = (
            "**yes**"
            if same
            else "**NO: " + ", ".join(r["digest"] for r in rebuilds if not r["same_digest"]) + "**"
        )
        out += [
            "",
            *_table(
                ["figure", "imagesmith", "reference", "ratio", "same digest as the first build"],
                [
                    [
                        "rebuild from the registry's archive on an empty machine "
                        "(`build --no-cache`, public sources unreachable)",
                        _fmt(seconds, digits=1),
                        f"the cold build: {_fmt(cold, digits=1)}" if cold else "—",
                        _fmt_ratio(_ratio(seconds, cold)),
                        verdict,
                    ]
                ],
            ),
            "",
            f"Fetched from the registry into the empty cache: {rebuilds[0].get('debs_fetched')} "
            f".debs, {rebuilds[0].get('wheels_fetched')} wheels (first run). First build's "
            f"digest: `{fig.get('first_digest')}`.",
        ]
        targets.append(
            [
                f"{engine}: rebuild from the input archive gives the same digest",
                _fmt(seconds, digits=1),
                "**yes**" if same else "**no**",
            ]
        )
    return out


def _load_lines(results: dict[str, Any]) -> list[str]:
    loads = results.get("load", {})
    if not loads:
        return []
    parts = []
    for name, load in loads.items():
        start = "/".join(f"{v:.1f}" for v in load.get("start", []))
        end = "/".join(f"{v:.1f}" for v in load.get("end", [])) or "?"
        parts.append(f"{name} {start} → {end}")
    return [
        "- the machine was shared: other engineers ran their tests on it (same Docker daemon "
        "and podman store, 2 cores) during this run, so the figures carry their load. Load "
        "average (1/5/15 min) at the start → end of each figure: " + "; ".join(parts)
    ]


def _scaling_section(fig: dict[str, Any]) -> list[str]:
    rows = []
    points = fig.get("points", {})
    base_lock = _seconds(points.get("5", {}).get("lock", []))
    base_build = _seconds(points.get("5", {}).get("build", []))
    for size in fig.get("sizes", []):
        point = points.get(str(size))
        if not point or not point.get("build"):
            continue
        lock, build = _seconds(point["lock"]), _seconds(point["build"])
        closure = point.get("closure", {})
        rows.append(
            [
                str(size),
                f"{closure.get('apt', '?')} / {closure.get('python', '?')}",
                _fmt(lock, digits=1),
                _fmt_ratio(_ratio(lock, base_lock)),
                _fmt(build, digits=1),
                _fmt_ratio(_ratio(build, base_build)),
                _fmt(_seconds(point["build"], "canonical"), digits=1),
                _fmt([float(b["size"]) for b in point["build"]], unit="MB"),
            ]
        )
    out = [f"## 4. Scaling ({fig.get('engine', 'docker')}, cold lock and cold build)", ""]
    out += _table(
        [
            "apt + Python packages (each)",
            "locked: apt / Python",
            "lock",
            "vs 5",
            "build",
            "vs 5",
            "of which canonical",
            "image size",
        ],
        rows,
    )
    return out


PUSH_HELD_TARGET = 0.05
SUBSTITUTE_TARGET = 0.5


def _held_rows(runs: list[dict[str, Any]], targets: list[list[str]]) -> list[list[str]]:
    """The lock the registry holds: pushed again, taken by fresh builders, against a fresh
    builder's cold build of it (issue 15's two substitution targets)."""
    held = [r["held"] for r in runs if r.get("held")]
    if not held:
        return []
    cold = [h["cold"]["seconds"] for h in held]
    reference = f"the same lock built cold by a fresh builder: {_fmt(cold)}"

    def row(kind: str, label: str, target: float | None) -> list[str]:
        seconds = [h[kind]["seconds"] for h in held]
        ratio = _ratio(seconds, cold)
        same = all(h[kind]["same_digest"] for h in held)
        built = any(h[kind]["built"] for h in held)
        met = None if target is None or ratio is None else ratio <= target and same
        if target is not None:
            targets.append(
                [
                    f"podman: {label}: <= {target}x a fresh cold build",
                    f"{_fmt(seconds)}, {_fmt_ratio(ratio, 3)}",
                    _met(met),
                ]
            )
        return [
            label + (" (**an engine build ran**)" if built else ""),
            _fmt(seconds),
            reference,
            _fmt_ratio(ratio, 3),
            "—" if target is None else f"<= {target}x",
            _met(met),
            "**yes**" if same else "**no**",
        ]

    return [
        row("push", "fresh builder: `build --push`, the registry holds the lock", PUSH_HELD_TARGET),
        row("push_again", "the machine that pushed it: `build --push` again", None),
        row("substitute", "fresh builder: `build --substitute`", SUBSTITUTE_TARGET),
    ]


def _stage_share_section(fig: dict[str, Any], targets: list[list[str]]) -> list[str]:
    """Substitution and the system stage from the registry (bench/stage_share.py)."""
    runs = fig["runs"]
    shared = [r["shared"]["seconds"] for r in runs]
    cold = [r["cold"]["seconds"] for r in runs]
    same = all(r["shared"]["digest"] == r["cold"]["digest"] for r in runs)
    no_apt = all(r["shared"]["stage_taken"] and not r["shared"]["apt_step"] for r in runs)
    held = _held_rows(runs, targets)
    load = fig.get("load", {})
    loads = (
        " Load average (1/5/15 min) at the start → end: "
        + " → ".join("/".join(f"{v:.1f}" for v in load[k]) for k in ("start", "end") if k in load)
        + "."
        if load
        else ""
    )
    out = [
        "## 6. Substitution and the system stage through the registry (podman)",
        "",
        "`bench/stage_share.py`: `recipes/lab-analysis` (base replaced) built with `build "
        "--push --no-cache` into a local registry (the first machine). "
        f"{fig['engine']}, {fig['imagesmith']}, {fig['date']}, {len(runs)} run(s).{loads}",
        "",
    ]
    if held:
        out += [
            "The lock the registry holds (image, input archive, attestations): the first "
            "machine runs `build --push` again, and three fresh builders (each a podman "
            "storage and an imagesmith cache of its own) run `build --push`, `build "
            "--substitute` and `build --no-cache` (the reference; issue 15: <= 0.05x and "
            "<= 0.5x of it). `build --push` of a lock the registry holds builds, loads and "
            "sends nothing (the image is checked there and its version tag moved); "
            "`--substitute` pulls the image into the builder's own store by digest.",
            "",
            *_table(
                [
                    "the lock the registry holds",
                    "imagesmith",
                    "reference",
                    "ratio",
                    "target",
                    "met",
                    "same digest as the push",
                ],
                held,
            ),
            "",
        ]
    out += [
        "Then a Python pin changes (pyyaml==6.0.1) and the new lock is built by two fresh "
        "builders: one with `--substitute` (the registry lacks this lock's image but holds "
        "its system stage, which it takes), one with `--no-cache` and no substitution.",
        "",
        *_table(
            ["build of the changed lock", "imagesmith", "reference", "ratio", "same digest"],
            [
                [
                    "fresh builder, system stage taken from the registry"
                    + ("" if no_apt else " (**an apt step ran**)"),
                    _fmt(shared),
                    f"the same lock built cold by a fresh builder: {_fmt(cold)}",
                    _fmt_ratio(_ratio(shared, cold)),
                    "**yes**" if same else "**no**",
                ]
            ],
        ),
    ]
    return out


def _catalogue_section(fig: dict[str, Any]) -> list[str]:
    """8 small specs: one command, 8 commands, a Slurm array (bench/catalogue.py)."""
    names = list(fig["specs"])
    rows = []
    for engine, runs in fig.get("local", {}).items():
        if not runs:
            continue
        together = [r["together"]["seconds"] for r in runs]
        one_by_one = [r["one_by_one"]["seconds"] for r in runs]
        version = fig["engines"].get(engine, engine)
        rows.append(
            [
                f"`build CATALOGUE --jobs {fig['jobs']}` ({version})",
                _fmt(together, digits=1),
                f"8 `build SPEC` in a row: {_fmt(one_by_one, digits=1)}",
                _fmt_ratio(_ratio(together, one_by_one)),
            ]
        )
    slurm = fig.get("slurm", [])
    podman = fig.get("local", {}).get("podman", [])
    if slurm:
        seconds = [r["seconds"] for r in slurm]
        reference = [r["one_by_one"]["seconds"] for r in podman]
        rows.append(
            [
                "`build CATALOGUE --on slurm --wait` (8 array tasks, 1 CPU each, "
                "each builds with podman and pushes)",
                _fmt(seconds, digits=1),
                f"8 `build SPEC` in a row (podman): {_fmt(reference, digits=1)}",
                _fmt_ratio(_ratio(seconds, reference)),
            ]
        )
    header = ["spec (apt; Python)"]
    columns: list[list[dict[str, float]]] = []
    for engine, runs in fig.get("local", {}).items():
        if runs:
            header += [f"{engine}: together", f"{engine}: in a row"]
            columns += [
                [r["together"]["specs"] for r in runs],
                [r["one_by_one"]["specs"] for r in runs],
            ]
    if slurm:
        header.append("Slurm task")
        columns.append([r["specs"] for r in slurm])
    per_spec = []
    for name in names:
        spec = fig["specs"][name]
        label = f"{name} ({', '.join(spec['apt'])}; {', '.join(spec['python']) or '—'})"
        per_spec.append([label, *(_fmt([c[name] for c in col], digits=1) for col in columns)])
    loads = []
    for engine, runs in fig.get("local", {}).items():
        for index, run in enumerate(runs):
            for way in ("together", "one_by_one"):
                load = run[way]["load"]
                loads.append(
                    f"{engine} run {index + 1} {way.replace('_', ' ')} "
                    + " → ".join("/".join(f"{v:.1f}" for v in load[k]) for k in ("start", "end"))
                )
    for index, run in enumerate(slurm):
        load = run["load"]
        loads.append(
            f"Slurm run {index + 1} "
            + " → ".join("/".join(f"{v:.1f}" for v in load[k]) for k in ("start", "end"))
        )
    runs_count = max([len(r) for r in fig.get("local", {}).values()] + [len(slurm)])
    return [
        "## 7. A catalogue of 8 specs: one command, 8 commands, a Slurm array",
        "",
        "`bench/catalogue.py`: 8 small specs on `imagesmith/debian:bookworm` (a few apt "
        "packages and 0-2 wheels each, so 8 different images), locked first (untimed), then "
        "built cold (`--no-cache`, an empty imagesmith cache, the images of the previous way "
        f"removed) as one `imagesmith build CATALOGUE --jobs {fig['jobs']}` and as 8 "
        "`imagesmith build SPEC` in a row (whole processes, summed; which way goes first "
        "alternates between runs). The Slurm row is one job array on the one-node cluster "
        "(2 cores): its tasks build with podman and push by digest (with the input archive) "
        "to an empty registry on 127.0.0.1, so they also push what the local builds do not. "
        f"{fig['imagesmith']}, {fig['date']}, {runs_count} run(s); digests the same in "
        f"every way: {'**yes**' if fig.get('same_digests') else '**no**'}.",
        "",
        *_table(["catalogue of 8", "total", "reference", "ratio"], rows),
        "",
        "Seconds per spec: *together* and *Slurm task* are the seconds each spec's build "
        "report gives (the build alone, in a process that does others at the same time); "
        "*in a row* is each whole `imagesmith build` process.",
        "",
        *_table(header, per_spec),
        "",
        "Load average (1/5/15 min) at the start → end of each: " + "; ".join(loads) + ".",
        *(["", *(f"- note: {note}" for note in fig["notes"])] if fig.get("notes") else []),
    ]


def _recipes_section(recipes: list[dict[str, Any]]) -> list[str]:
    """Ready recipes locked and built once each (bench/recipe_build.py)."""
    rows = [
        [
            f"`{r['recipe']}`",
            r["engine"],
            f"{r['lock_seconds']:.1f} s",
            f"{r['build_seconds']:.1f} s",
            f"{r['image_bytes'] / 1e6:,.0f} MB",
            f"{r['apt_packages']} / {r['python_distributions']}",
            f"{r['wheel_bytes'] / 1e6:,.0f} MB",
            f"{r['imagesmith']}, {r['date']}",
        ]
        for r in recipes
    ]
    ran = [
        f"- `{r['recipe']}` on {r['engine'].split()[0]}: `{r['ran']['command']}` in the image "
        f"exited {r['ran']['exit']}: `{r['ran']['output'][-200:]}`"
        for r in recipes
        if r.get("ran")
    ]
    return [
        "## 5. Recipes built once",
        "",
        "`bench/recipe_build.py RECIPE [--engine E]`: the recipe with its base replaced by "
        "`imagesmith/debian:bookworm`, locked, then built with `--no-cache` and empty "
        "imagesmith and uv caches (one run; no reference: these figures say what a user "
        "of the recipe waits for and stores).",
        "",
        *_table(
            [
                "recipe",
                "engine",
                "lock",
                "cold build",
                "image size",
                "apt / Python pinned",
                "wheels fetched",
                "measured with",
            ],
            rows,
        ),
        *(["", *ran] if ran else []),
    ]


def render_readme(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    minutes = results.get("elapsed_seconds", 0) / 60
    state = "complete" if results.get("complete") else "**partial (still running or stopped)**"
    out = [
        "# imagesmith benchmark",
        "",
        "`bench/run.py` measures imagesmith's lock, build and push against references taken "
        "in the same run: pip-compile for Python resolution, two hand-written best-practice "
        "Containerfiles (two-stage and single-stage) for builds, `push --no-inputs` for the "
        "input archive. This file is generated by it.",
        "",
        "The start-up time of the quick commands (`--version`, `validate`, `render`, "
        "`lock --check`, the no-op `build`) has its own script and page: "
        "[startup.md](startup.md), made by `bench/startup_time.py`. What cache integrity "
        "(fsync before each rename, hashing what is read back) costs a cold build: "
        "[integrity.md](integrity.md), made by `bench/integrity_cost.py`.",
        "",
        HOW_TO_RUN,
        "## Latest run",
        "",
        f"- date: {results.get('date', '?')}; command: `{results.get('command', '?')}`; "
        f"runs per figure: {results.get('runs', '?')}; {state}; took {minutes:.0f} min",
        f"- machine: {machine.get('nproc', '?')} cores ({machine.get('cpu', '?')}), "
        f"{machine.get('ram', '?')} RAM, kernel {machine.get('kernel', '?')}, "
        f"{machine.get('os', '?')}",
        f"- engines: {machine.get('docker', '?')}; {machine.get('podman', '?')}",
        f"- tools: {machine.get('imagesmith', '?')}, {machine.get('uv', '?')}, "
        f"pip-compile {machine.get('pip-compile', '?')}, Python {machine.get('python', '?')}",
        *_load_lines(results),
        "",
    ]
    for merged in results.get("merged", []):
        took = merged.get("elapsed_seconds", 0) / 60
        out += [
            f"- re-measured on {merged['date']}: {', '.join(merged['figures'])} "
            f"(`{merged['command']}`, took {took:.0f} min; the other figures are from the "
            "first run)",
        ]
    out += [
        f"- measured again once after a failure (the failed attempt is not counted): "
        f"{r if len(r) <= 400 else r[:400] + ' …'}"
        for r in results.get("retries", [])
    ]
    out += [f"- note: {note}" for note in results.get("notes", [])]
    if results.get("merged") or results.get("notes") or results.get("retries"):
        out.append("")
    targets: list[list[str]] = []
    sections: list[str] = []
    if "lock" in results:
        sections += [*_lock_section(results["lock"], targets), ""]
    for engine, fig in results.get("build", {}).items():
        if fig["imagesmith"]["cold"] and fig["handwritten"]["cold"] and fig["imagesmith"]["pin"]:
            steps = results.get("handwritten_steps_run", {})
            sections += [*_build_section(engine, fig, targets, steps), ""]
    for engine, fig in results.get("push", {}).items():
        if any(fig["push"].values()) or fig.get("rebuild"):
            cold = _seconds(
                results.get("build", {}).get(engine, {}).get("imagesmith", {}).get("cold", [])
            )
            sections += [*_push_section(engine, fig, cold, targets), ""]
    if results.get("scaling", {}).get("points"):
        sections += [*_scaling_section(results["scaling"]), ""]
    if results.get("recipes"):
        sections += [*_recipes_section(results["recipes"]), ""]
    if results.get("stage_share", {}).get("runs"):
        sections += [*_stage_share_section(results["stage_share"], targets), ""]
    if results.get("catalogue", {}).get("local") or results.get("catalogue", {}).get("slurm"):
        sections += [*_catalogue_section(results["catalogue"]), ""]
    if targets:
        out += ["### Targets", "", *_table(["target", "measured", "met"], targets), ""]
    out += sections
    out += ["![build times](build-times.png)", ""]
    errors = results.get("errors", [])
    left = results.get("left_behind", [])
    if errors or left:
        out += ["## Problems in this run", ""]
        out += [f"- {line.splitlines()[0]}" for line in errors]
        out += [
            f"- not removed: {item} (other builds' images were made on top of it from the "
            "cache; the engine removes it with them)"
            for item in left
        ]
        out += [""]
    out += [METHOD, ATTEST]
    return "\n".join(out).rstrip() + "\n"
