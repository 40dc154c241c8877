"""results.json -> build-times.png (run with bench/.venv-plot's Python, which has matplotlib).

bench/.venv-plot/bin/python bench/plot.py bench/results.json bench/build-times.png
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

KINDS = (("cold", "cold"), ("noop", "no-op"), ("pin", "pin change"))
COLORS = {
    "imagesmith": "#1f77b4",
    "hand-written": "#ff7f0e",
    "single-stage hand-written": "#2ca02c",
}


def _median(values: list[Any], key: str = "seconds") -> float:
    numbers = [float(v[key]) if isinstance(v, dict) else float(v) for v in values]
    return statistics.median(numbers) if numbers else float("nan")


def _builds(ax: Any, results: dict[str, Any]) -> None:
    builds = {
        engine: fig
        for engine, fig in results.get("build", {}).items()
        if fig["imagesmith"]["pin"] and fig["handwritten"]["pin"]
    }
    if not builds:
        ax.text(0.5, 0.5, "no build figures yet", ha="center", va="center")
        ax.set_axis_off()
        return
    labels = []
    for group, (engine, fig) in enumerate(builds.items()):
        for offset, (key, name) in enumerate(KINDS):
            x = group * (len(KINDS) + 1) + offset
            labels.append((x, f"{engine}\n{name}"))
            bars = [
                ("imagesmith", fig["imagesmith"][key]),
                ("hand-written", fig["handwritten"][key]),
            ]
            single = fig.get("handwritten_single", {}).get(key, [])
            if single:
                bars.append(("single-stage hand-written", single))
            width = 0.8 / len(bars)
            for side, (who, values) in enumerate(bars):
                value = _median(values)
                text = f"{value:.2f}" if value < 10 else f"{value:.1f}"
                pos = x + (side - (len(bars) - 1) / 2) * width
                ax.bar(pos, value, width, color=COLORS[who], label=who if x == 0 else None)
                ax.annotate(
                    text, (pos, value), ha="center", va="bottom", fontsize=7,
                    xytext=(0, 2), textcoords="offset points",
                )  # fmt: skip
    ax.set_xticks([x for x, _ in labels], [text for _, text in labels], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median, whole process; log scale)")
    ax.set_title("Build: imagesmith vs hand-written Containerfiles")
    ax.legend(fontsize=8)


def _lock(ax: Any, results: dict[str, Any]) -> None:
    lock = results.get("lock", {})
    bars = [
        ("warm re-lock", lock.get("warm", []), "imagesmith"),
        ("--version", lock.get("startup", []), "hand-written"),
        ("uv cold", lock.get("uv_cold", []), "imagesmith"),
        ("pip-compile\ncold", lock.get("pip_compile_cold", []), "hand-written"),
        ("cold lock\n(whole)", lock.get("cold", []), "imagesmith"),
    ]
    bars = [bar for bar in bars if bar[1]]
    if not bars:
        ax.set_axis_off()
        return
    for x, (_name, values, who) in enumerate(bars):
        value = _median(values)
        ax.bar(x, value, 0.6, color=COLORS[who])
        ax.annotate(f"{value:.2f}", (x, value), ha="center", va="bottom", fontsize=7,
                    xytext=(0, 2), textcoords="offset points")  # fmt: skip
    ax.set_xticks(range(len(bars)), [bar[0] for bar in bars], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median)")
    ax.set_title("Lock (blue: imagesmith, orange: reference)")


def _scaling(ax: Any, results: dict[str, Any]) -> None:
    scaling = results.get("scaling", {})
    points = scaling.get("points", {})
    sizes = [size for size in scaling.get("sizes", []) if str(size) in points]
    if not sizes:
        ax.text(0.5, 0.5, "scaling skipped (--quick)", ha="center", va="center")
        ax.set_axis_off()
        return
    lock = [_median(points[str(s)]["lock"]) for s in sizes]
    build = [_median(points[str(s)]["build"]) for s in sizes]
    canonical = [_median(points[str(s)]["build"], "canonical") for s in sizes]
    ax.plot(sizes, build, "o-", label="cold build")
    ax.plot(sizes, canonical, "s--", label="of which canonical")
    ax.plot(sizes, lock, "^-", label="cold lock")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("apt packages and Python packages (each)")
    ax.set_ylabel("seconds (median)")
    source = f"\nfrom the {scaling['from']}" if scaling.get("from") else ""
    ax.set_title(f"Scaling ({scaling.get('engine', 'docker')}){source}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def main(argv: list[str]) -> int:
    source, target = Path(argv[0]), Path(argv[1])
    results = json.loads(source.read_text())
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [2.2, 1.2, 1.2]})
    _builds(axes[0], results)
    _lock(axes[1], results)
    _scaling(axes[2], results)
    machine = results.get("machine", {})
    fig.suptitle(
        f"imagesmith bench, {results.get('date', '?')}: {machine.get('nproc', '?')} cores, "
        f"{machine.get('ram', '?')}, kernel {machine.get('kernel', '?')}, "
        f"{machine.get('docker', '?')}, {machine.get('podman', '?')}; "
        "medians (runs per figure: bench/README.md)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
