"""sparsegate beside the direct path, SGLang's Rust router and the LiteLLM proxy, on one core each, in one run.

An upstream written in C (bench/c/upstream.c) answers at once like an SGLang worker; it and the load generators
(wrk for non-stream, bench/c/loadgen.c for streams) are pinned to CPU 0, the target under test to CPU 1. Each peer
is installed by this script into its own venv under --cache-dir and reused afterwards. sparsegate is whatever
`sparsegate serve` is on this checkout.

Per target: added p50/p99 over direct at c=1/16/64 (non-stream), req/s at c=64 (non-stream, and streams of 16
chunks), stream TTFT on kept-alive connections, CPU per request and per relayed event (utime+stime of the target
and its children from /proc, before/after each run), and the added p99 inter-chunk gap at 256 streams paced a chunk
every 20 ms. Then sparsegate `--workers 2` against `--workers 1`, both with Redis.

    .venv/bin/python bench/peers.py [--quick] [--wait-quiet 1.0] [--json out.json] [--plot docs/img/peers.png]
    .venv/bin/python bench/peers.py --from-json out.json      # print the tables of an earlier run again

A full run takes about 5 minutes (plus one-time installs); --quick about 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import peers_report
import rig
import targets
from clients import chat_body, run_loadgen, run_wrk
from rig import (
    REPO,
    TARGET_CPUS,
    Upstream,
    build_helpers,
    git_commit,
    loadavg,
    machine,
    need_wrk,
    upstream,
    wait_quiet,
)

CONCURRENCIES = (1, 16, 64)
STREAM_CHUNKS = 16  # chunks per stream in the throughput and TTFT runs (no pacing)
PACED_CHUNKS = 50  # chunks per paced stream: one second at 20 ms
PACE_MS = 20.0


class Plan:
    def __init__(self, quick: bool) -> None:
        self.duration_s = 1.0 if quick else 4.0
        self.warmup_s = 0.5 if quick else 1.0


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _per(cpu_s: float | None, count: int, scale: float) -> float | None:
    return None if cpu_s is None or count <= 0 else cpu_s * scale / count


def measure(
    target: targets.Target,
    up: Upstream,
    helpers: dict[str, Path],
    workdir: Path,
    plan: Plan,
    only: tuple[str, ...] = ("nonstream", "stream", "ttft", "paced64", "paced256"),
) -> dict[str, Any]:
    """Every measurement of one target; CPU is read around each run and divided by what the upstream served."""
    result: dict[str, Any] = {"loadavg_start": loadavg()}
    up.reset()
    up.pace(0)
    run_wrk(target.port, chat_body(STREAM_CHUNKS, False), 64, plan.warmup_s, workdir)  # warm-up, not reported

    def counted(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        settled = settle(target, up)
        s0, c0 = up.stats(), target.cpu_s()
        out = run()
        s1, c1 = up.stats(), target.cpu_s()
        out["upstream_requests"] = s1["requests"] - s0["requests"]
        out["upstream_events"] = s1["events"] - s0["events"]
        out["cpu_s"] = _delta(c0, c1)
        out["cpu_ms_per_request"] = _per(out["cpu_s"], out["upstream_requests"], 1e3)
        out["cpu_us_per_event"] = _per(out["cpu_s"], out["upstream_events"], 1e6)
        out["settled_before"] = settled
        return out

    if "nonstream" in only:
        result["nonstream"] = {}
        for conns in CONCURRENCIES:
            body = chat_body(STREAM_CHUNKS, False)
            result["nonstream"][str(conns)] = counted(
                lambda c=conns, b=body: run_wrk(target.port, b, c, plan.duration_s, workdir)
            )
    stream_body = chat_body(STREAM_CHUNKS, True)
    if "stream" in only:
        result["stream64"] = counted(
            lambda: _loadgen_summary(
                run_loadgen(
                    helpers,
                    target.port,
                    stream_body,
                    workdir,
                    conns=64,
                    duration_s=plan.duration_s,
                    warmup_s=plan.warmup_s,
                )
            )
        )
    if "ttft" in only:
        result["ttft"] = counted(
            lambda: _loadgen_summary(
                run_loadgen(
                    helpers,
                    target.port,
                    stream_body,
                    workdir,
                    conns=1,
                    duration_s=plan.duration_s,
                    warmup_s=plan.warmup_s,
                )
            )
        )
    paced_body = chat_body(PACED_CHUNKS, True)
    for key, conns in (("paced64", 64), ("paced256", 256)):
        if key not in only:
            continue
        up.pace(PACE_MS)
        result[key] = counted(
            lambda c=conns: _loadgen_summary(
                run_loadgen(
                    helpers,
                    target.port,
                    paced_body,
                    workdir,
                    conns=c,
                    duration_s=plan.duration_s,
                    warmup_s=plan.warmup_s,
                )
            )
        )
        up.pace(0)
    result["loadavg_end"] = loadavg()
    return result


def settle(target: targets.Target, up: Upstream, max_wait_s: float = 10.0) -> bool:
    """Wait until the last run's leftovers are done: no stream open at the upstream and the target idle (under 5 %
    of a core over 0.3 s). A saturated target still works off the requests its last client abandoned; measuring
    during that would book them to the next run. False when it did not settle in time (the run goes ahead)."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        before = target.cpu_s()
        time.sleep(0.3)
        after = target.cpu_s()
        idle = before is None or after is None or after - before < 0.015
        if idle and up.stats()["active"] == 0:
            return True
    return False


def _loadgen_summary(raw: dict[str, Any]) -> dict[str, Any]:
    """What the report keeps of a loadgen run (not the per-stream lists)."""
    keep = (
        "ok",
        "errors",
        "incomplete",
        "status",
        "rps",
        "window_s",
        "content_events",
        "tokens",
        "latency_ms",
        "ttft_ms",
        "gap_ms",
    )
    return {k: raw[k] for k in keep}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    cache_dir = Path(args.cache_dir).resolve()
    need_wrk()
    helpers = build_helpers(cache_dir)
    for peer in ("sglang-router", "litellm"):
        if peer in args.targets:
            targets.ensure_venv(cache_dir, peer)
    plan = Plan(args.quick)
    quiet = wait_quiet(args.wait_quiet)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([rig.shown_python(), *sys.argv]),
        "commit": git_commit(),
        "machine": machine(),
        "quiet": quiet,
        "plan": {
            "duration_s": plan.duration_s,
            "warmup_s": plan.warmup_s,
            "pace_ms": PACE_MS,
            "stream_chunks": STREAM_CHUNKS,
            "paced_chunks": PACED_CHUNKS,
            "target_cpus": TARGET_CPUS,
        },
        "targets": {},
    }
    with tempfile.TemporaryDirectory(prefix="sparsegate-peers-") as tmp:
        workdir = Path(tmp)
        with upstream(helpers, workdir) as up:
            launchers: dict[str, Callable[[], AbstractContextManager[targets.Target]]] = {
                "direct": lambda: targets.direct(up),
                "sglang-router": lambda: targets.sglang_router(cache_dir, up, workdir),
                "sparsegate": lambda: targets.sparsegate(up, workdir),
                "litellm": lambda: targets.litellm(cache_dir, up, workdir),
            }
            for name in args.targets:
                print(f"measuring {name} (load average {loadavg()})", flush=True)
                try:
                    with launchers[name]() as target:
                        results["targets"][name] = measure(target, up, helpers, workdir, plan)
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    print(f"  {name} failed: {exc}", file=sys.stderr, flush=True)
                    results["targets"][name] = {"failed": str(exc)[:2000]}
            if args.scale:
                results["scale"] = run_scale(up, helpers, workdir, plan, args.scale_cpus)
    results["loadavg_end"] = loadavg()
    return results


def run_scale(up: Upstream, helpers: dict[str, Path], workdir: Path, plan: Plan, cpus: str) -> dict[str, Any]:
    """sparsegate --workers 2 against --workers 1, both with Redis and the same CPUs."""
    out: dict[str, Any] = {"cpus": cpus}
    if not targets.serve_supports_workers():
        out["skipped"] = "`sparsegate serve` on this checkout has no --workers option"
        return out
    with targets.redis(workdir) as redis_url:
        for workers in (1, 2):
            name = f"sparsegate-w{workers}"
            print(f"measuring {name} on CPUs {cpus} with Redis (load average {loadavg()})", flush=True)
            try:
                with targets.sparsegate(
                    up, workdir, workers=workers, redis_url=redis_url, cpus=cpus, name=name
                ) as target:
                    out[str(workers)] = measure(
                        target, up, helpers, workdir, plan, only=("nonstream", "stream", "paced256")
                    )
            except (RuntimeError, subprocess.SubprocessError) as exc:
                print(f"  {name} failed: {exc}", file=sys.stderr, flush=True)
                out[str(workers)] = {"failed": str(exc)[:2000]}
    return out


def plot(results_path: Path, image: Path, cache_dir: Path) -> None:
    bin_dir = targets.ensure_venv(cache_dir, "plot")
    image.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(bin_dir / "python"), str(Path(__file__).with_name("peers_plot.py")), str(results_path), str(image)],
        check=True,
    )
    print(f"plot: {image}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test, not figures to quote")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="LOAD",
        help="wait (up to 15 min) until the 1-min load average is below LOAD before measuring",
    )
    parser.add_argument("--cache-dir", default=str(REPO / ".bench-cache"), help="venvs and compiled helpers")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--plot",
        type=Path,
        default=REPO / "docs" / "img" / "peers.png",
        help="bar charts of the results (matplotlib, in its own venv under --cache-dir)",
    )
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["direct", "sglang-router", "sparsegate", "litellm"],
        choices=["direct", "sglang-router", "sparsegate", "litellm"],
    )
    parser.add_argument("--no-scale", dest="scale", action="store_false", help="skip --workers 2 vs 1")
    parser.add_argument(
        "--scale-cpus", default="0,1", help="CPUs for the --workers comparison (both runs get the same)"
    )
    parser.add_argument("--from-json", type=Path, default=None, help="print the tables of an earlier --json run")
    args = parser.parse_args()

    if args.from_json is not None:
        print(peers_report.render(json.loads(args.from_json.read_text())))
        return 0
    if "direct" not in args.targets:
        args.targets.insert(0, "direct")  # every "added" figure is relative to it
    results = run_all(args)
    print()
    print(peers_report.render(results))
    json_path = args.json
    if json_path is None and not args.no_plot:
        json_path = Path(tempfile.mkstemp(prefix="peers-", suffix=".json")[1])
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=1))
        print(f"json: {json_path}")
    if not args.no_plot and json_path is not None:
        plot(json_path, args.plot, Path(args.cache_dir).resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
