"""Draw docs/img/performance.png from bench/results/*.json (run the benchmarks first).

python bench/plot.py   # needs matplotlib (pip install matplotlib)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = ROOT / "bench" / "results"
    overhead = json.loads((results / "celery_overhead.json").read_text())
    embedded = json.loads((results / "embedded.json").read_text())
    sides = ["plain celery", "fluxcelery"]
    colors = ["#9aa5b1", "#4c6ef5"]

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ax = axes[0]
    ax.bar(sides, [overhead[s]["runs_per_s"] for s in sides], color=colors)
    ax.set_title("Celery workers: 4-step runs per second")
    ax.set_ylim(0, max(overhead[s]["runs_per_s"] for s in sides) * 1.15)
    ax.set_ylabel("runs/s (prefork -c 2, RabbitMQ)")
    for i, s in enumerate(sides):
        ax.annotate(
            f"{overhead[s]['runs_per_s']:.0f}",
            (i, overhead[s]["runs_per_s"]),
            ha="center",
            va="bottom",
        )

    ax = axes[1]
    width = 0.35
    for i, s in enumerate(sides):
        vals = [overhead[s]["p50_ms"], overhead[s]["p95_ms"]]
        ax.bar([x + i * width for x in (0, 1)], vals, width, label=s, color=colors[i])
    ax.set_xticks([width / 2, 1 + width / 2], ["p50", "p95"])
    ax.set_title("Round trip of one 4-step run")
    ax.set_ylabel("ms")
    ax.legend(loc="upper left")
    ax.set_ylim(0, max(overhead[s]["p95_ms"] for s in sides) * 1.3)

    ax = axes[2]
    rows = embedded["rows"]
    ax.barh([r["backend"] for r in rows], [r["steps_per_s"] for r in rows], color="#4c6ef5")
    ax.set_title("Embedded engine: steps/s (median block)")
    ax.set_xlim(0, max(r["steps_per_s"] for r in rows) * 1.25)
    for i, r in enumerate(rows):
        ax.annotate(f" {r['steps_per_s']:,}", (r["steps_per_s"], i), va="center")
    ratio = overhead["ratios"]["throughput_flux_over_plain"]
    fig.suptitle(f"fluxcelery vs plain Celery, measured in one run (throughput ratio {ratio})")
    fig.tight_layout()
    out = ROOT / "docs" / "img" / "performance.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
