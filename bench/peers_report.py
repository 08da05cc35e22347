"""Markdown tables from bench/peers.py results (a run's dict, or its --json file), and issue 9's targets."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

ORDER = ("direct", "sglang-router", "sparsegate", "litellm")


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
        return f"+{text}" if signed and value >= 0 else text
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _pair(a: str, b: str) -> str:
    return a if a == b == "–" else f"{a} / {b}"


def added(results: dict[str, Any], name: str, *path: str) -> float | None:
    """A target's figure minus the direct path's, at the same place in the results."""
    mine, base = _get(results, "targets", name, *path), _get(results, "targets", "direct", *path)
    if mine is None or base is None or name == "direct":
        return None
    return float(mine) - float(base)


def rows(results: dict[str, Any]) -> list[tuple[str, Callable[[str], str]]]:
    r = results

    def nonstream(conns: int, field: str) -> Callable[[str], str]:
        return lambda n: _num(_get(r, "targets", n, "nonstream", str(conns), field), 0 if field == "rps" else 2)

    def added_lat(conns: int) -> Callable[[str], str]:
        def cell(n: str) -> str:
            p50 = added(r, n, "nonstream", str(conns), "p50_ms")
            p99 = added(r, n, "nonstream", str(conns), "p99_ms")
            return _pair(_num(p50, signed=True), _num(p99, signed=True))

        return cell

    def cpu_req(n: str) -> str:
        values = [_get(r, "targets", n, "nonstream", str(c), "cpu_ms_per_request") for c in (1, 16, 64)]
        return " / ".join(_num(v, 3) for v in values) if any(v is not None for v in values) else "–"

    def gaps(n: str) -> str:
        if _get(r, "targets", n, "paced256", "gap_ms", "n") == 0:
            return "no two chunks of a stream relayed in the window"
        return _pair(
            _num(_get(r, "targets", n, "paced256", "gap_ms", "p50")),
            _num(_get(r, "targets", n, "paced256", "gap_ms", "p99")),
        )

    def load(n: str) -> str:
        start, end = _get(r, "targets", n, "loadavg_start"), _get(r, "targets", n, "loadavg_end")
        return _pair(_num(start[0] if start else None), _num(end[0] if end else None))

    def errors(n: str) -> str:
        t = _get(r, "targets", n)
        if not isinstance(t, dict):
            return "–"
        if "failed" in t:
            return "failed to run"
        counts: dict[str, int] = {}

        def add(kind: str, value: object) -> None:
            if value:
                counts[kind] = counts.get(kind, 0) + int(str(value))

        for c in (1, 16, 64):
            add("non-2xx (wrk)", _get(t, "nonstream", str(c), "non_2xx"))
            add("socket errors (wrk)", _get(t, "nonstream", str(c), "socket_errors"))
        for key in ("stream64", "ttft", "paced64", "paced256"):
            part = _get(t, key) or {}
            add("connect errors", part.get("errors"))
            add("cut short", part.get("incomplete"))
            for status, count in (part.get("status") or {}).items():
                if status != "200":
                    add(status, count)
        return ", ".join(f"{kind}: {count:,}" for kind, count in counts.items()) or "0"

    return [
        ("CPU per non-stream request, c=1 / 16 / 64 (ms)", cpu_req),
        ("added p50 / p99, non-stream c=1 (ms)", added_lat(1)),
        ("added p50 / p99, non-stream c=16 (ms)", added_lat(16)),
        ("added p50 / p99, non-stream c=64 (ms)", added_lat(64)),
        ("p50 / p99, non-stream c=1 (ms)", lambda n: _pair(nonstream(1, "p50_ms")(n), nonstream(1, "p99_ms")(n))),
        ("non-stream req/s at c=64", nonstream(64, "rps")),
        (
            f"stream req/s at c=64 ({_get(r, 'plan', 'stream_chunks')} chunks)",
            lambda n: _num(_get(r, "targets", n, "stream64", "rps"), 0),
        ),
        (
            "CPU per stream request at c=64 (ms)",
            lambda n: _num(_get(r, "targets", n, "stream64", "cpu_ms_per_request"), 3),
        ),
        (
            "stream TTFT p50 / p99, kept-alive, c=1 (ms)",
            lambda n: _pair(
                _num(_get(r, "targets", n, "ttft", "ttft_ms", "p50")),
                _num(_get(r, "targets", n, "ttft", "ttft_ms", "p99")),
            ),
        ),
        (
            "CPU per relayed event, 64 paced streams (µs)",
            lambda n: _num(_get(r, "targets", n, "paced64", "cpu_us_per_event"), 1),
        ),
        (
            "256 paced streams: streams completed per s (each lasts 1 s; 256/s if the target keeps up)",
            lambda n: _num(_get(r, "targets", n, "paced256", "rps"), 0),
        ),
        ("inter-chunk gap p50 / p99, 256 paced streams (ms)", gaps),
        (
            "added p99 inter-chunk gap, 256 paced streams (ms)",
            lambda n: _num(added(r, n, "paced256", "gap_ms", "p99"), signed=True),
        ),
        ("answers not 200 or cut short (all runs)", errors),
        ("1-min load average before / after this target's runs", load),
    ]


def targets_table(results: dict[str, Any]) -> list[str]:
    """Issue 9's speed targets for sparsegate, checked against this run."""
    r = results
    if not isinstance(_get(r, "targets", "sparsegate", "nonstream"), dict):
        return []
    cpu = [_get(r, "targets", "sparsegate", "nonstream", str(c), "cpu_ms_per_request") for c in (1, 16, 64)]
    worst_cpu = max((c for c in cpu if c is not None), default=None)
    p50 = added(r, "sparsegate", "nonstream", "1", "p50_ms")
    event = _get(r, "targets", "sparsegate", "paced64", "cpu_us_per_event")
    rps, router_rps = (
        _get(r, "targets", "sparsegate", "nonstream", "64", "rps"),
        _get(r, "targets", "sglang-router", "nonstream", "64", "rps"),
    )
    share = None if rps is None or not router_rps else rps / router_rps
    ttft = added(r, "sparsegate", "ttft", "ttft_ms", "p50")
    gap = added(r, "sparsegate", "paced256", "gap_ms", "p99")

    def met(value: float | None, ok: bool) -> str:
        return "–" if value is None else ("**yes**" if ok else "**no**")

    lines = ["| target | measured | met |", "|---|---:|---|"]
    checks = [
        (
            "CPU per non-stream request ≤ 0.4 ms (worst of c=1/16/64)",
            _num(worst_cpu, 3) + " ms",
            worst_cpu,
            worst_cpu is not None and worst_cpu <= 0.4,
        ),
        ("added p50 at c=1 ≤ 0.5 ms", _num(p50, signed=True) + " ms", p50, p50 is not None and p50 <= 0.5),
        (
            "CPU per relayed event ≤ 40 µs (64 paced streams)",
            _num(event, 1) + " µs",
            event,
            event is not None and event <= 40,
        ),
        (
            "non-stream req/s at c=64 ≥ 50 % of the Rust router's",
            "–" if share is None else f"{share:.0%}",
            share,
            share is not None and share >= 0.5,
        ),
        (
            "stream TTFT on kept-alive connections ≤ +1 ms over direct (p50)",
            _num(ttft, signed=True) + " ms",
            ttft,
            ttft is not None and ttft <= 1.0,
        ),
        (
            "added p99 inter-chunk gap at 256 paced streams ≤ 15 ms",
            _num(gap, signed=True) + " ms",
            gap,
            gap is not None and gap <= 15,
        ),
    ]
    for label, shown, value, ok in checks:
        lines.append(f"| {label} | {shown} | {met(value, ok)} |")
    return lines


def scale_table(results: dict[str, Any]) -> list[str]:
    scale = _get(results, "scale")
    if not isinstance(scale, dict):
        return []
    if "skipped" in scale:
        return [f"`--workers` comparison skipped: {scale['skipped']}."]
    lines = [
        f"sparsegate with Redis, both runs on CPUs {scale.get('cpus')}:",
        "",
        "| | --workers 1 | --workers 2 |",
        "|---|---:|---:|",
    ]
    fields: list[tuple[str, tuple[str, ...], int]] = [
        ("non-stream req/s at c=64", ("nonstream", "64", "rps"), 0),
        ("non-stream p50 / p99 at c=1 (ms)", ("nonstream", "1", "p50_ms"), 2),
        ("CPU per non-stream request at c=64 (ms, all processes)", ("nonstream", "64", "cpu_ms_per_request"), 3),
        ("stream req/s at c=64", ("stream64", "rps"), 0),
        ("inter-chunk gap p99, 256 paced streams (ms)", ("paced256", "gap_ms", "p99"), 2),
    ]
    for label, path, digits in fields:
        cells = []
        for workers in ("1", "2"):
            part = scale.get(workers)
            if isinstance(part, dict) and "failed" in part:
                cells.append("failed")
            elif path[-1] == "p50_ms":
                cells.append(_pair(_num(_get(part, *path), digits), _num(_get(part, *path[:-1], "p99_ms"), digits)))
            else:
                cells.append(_num(_get(part, *path), digits))
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return lines


def render(results: dict[str, Any]) -> str:
    names = [n for n in ORDER if n in (results.get("targets") or {})]
    m = results.get("machine") or {}
    quiet = results.get("quiet") or {}
    out = [
        f"Run {results.get('date')} at `{results.get('commit')}`, {m.get('cores')} cores ({m.get('cpu')}), "
        f"{m.get('mem_gib')} GiB, Python {m.get('python')}; load average at start {quiet.get('loadavg')}, "
        f"at end {results.get('loadavg_end')}.",
        f"Command: `{results.get('command')}`",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for label, cell in rows(results):
        out.append(f"| {label} | " + " | ".join(cell(n) for n in names) + " |")
    failed = [(n, t["failed"]) for n, t in (results.get("targets") or {}).items() if "failed" in t]
    for name, why in failed:
        out.append(f"\n{name} failed: {why.splitlines()[0] if why else ''}")
    table = targets_table(results)
    if table:
        out += ["", "Issue 9's targets (sparsegate, this run):", "", *table]
    scale = scale_table(results)
    if scale:
        out += ["", *scale]
    return "\n".join(out)
