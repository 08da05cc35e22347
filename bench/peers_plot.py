"""Bar charts of a bench/peers.py --json run. Runs in the plotting venv peers.py creates (matplotlib is not a
project dependency):  python bench/peers_plot.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ORDER = ("direct", "sglang-router", "sparsegate", "litellm")
COLORS = {"direct": "#999999", "sglang-router": "#4c72b0", "sparsegate": "#dd8452", "litellm": "#55a868"}


def get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def main() -> int:
    with open(sys.argv[1]) as f:
        results = json.load(f)
    names = [n for n in ORDER if isinstance(get(results, "targets", n), dict) and "failed" not in results["targets"][n]]

    def direct_minus(n: str, *path: str) -> float | None:
        mine, base = get(results, "targets", n, *path), get(results, "targets", "direct", *path)
        return None if mine is None or base is None else mine - base

    panels = [
        (
            "CPU per non-stream request, c=64 (ms)",
            lambda n: get(results, "targets", n, "nonstream", "64", "cpu_ms_per_request"),
            True,
        ),
        ("added p50 latency, non-stream c=1 (ms)", lambda n: direct_minus(n, "nonstream", "1", "p50_ms"), True),
        ("non-stream req/s at c=64", lambda n: get(results, "targets", n, "nonstream", "64", "rps"), False),
        ("stream TTFT p50, kept-alive (ms)", lambda n: get(results, "targets", n, "ttft", "ttft_ms", "p50"), True),
        (
            "CPU per relayed event, 64 paced streams (µs)",
            lambda n: get(results, "targets", n, "paced64", "cpu_us_per_event"),
            True,
        ),
        (
            "added p99 inter-chunk gap, 256 paced streams (ms)",
            lambda n: direct_minus(n, "paced256", "gap_ms", "p99"),
            True,
        ),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (title, value, log) in zip(axes.flat, panels, strict=True):
        shown = [(n, value(n)) for n in names if not (title.startswith("added") and n == "direct")]
        shown = [(n, v) for n, v in shown if v is not None]
        values = [v for _, v in shown]
        # a log axis only for positive values far apart (an "added" figure can be negative on a noisy machine)
        log = log and bool(values) and min(values) > 0 and max(values) > 20 * min(values)
        bars = ax.bar([n for n, _ in shown], values, color=[COLORS[n] for n, _ in shown])
        for bar, (_, v) in zip(bars, shown, strict=True):
            ax.annotate(
                f"{v:,.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8
            )
        if log:
            ax.set_yscale("log")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    quiet = results.get("quiet") or {}
    fig.suptitle(
        f"Gateway vs peers, one core each — {results.get('date')}, `{results.get('commit')}`, "
        f"load average {quiet.get('loadavg')}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
