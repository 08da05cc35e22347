"""Issue 9's "overload never becomes an outage", measured: sparsegate (pinned to CPU 1) in front of the C upstream,
driven by the C load generator (both on CPU 0).

1. Unloaded: streams at a low open-loop rate (a new connection each), for the reference TTFT.
2. Saturation: 64 kept-alive connections back to back; their throughput is the saturating load.
3. 2x overload: twice that rate, open loop, new connection per request, for --overload-s seconds. Counts answers by
   status, "no healthy worker" answers, 503s carrying retry-after and their latency, breaker openings (the gateway's
   log and its /metrics), and the admitted streams' TTFT p99 against the unloaded one.
4. Disconnects: 500 concurrent streams paced a chunk every 20 ms, every second one closed by the client after
   10-25 chunks. The upstream timestamps each /abort_request (same clock as the client), so disconnect -> abort
   latency is exact; the gateway's request log (per x-request-id) gives the tokens charged against those delivered.

    .venv/bin/python bench/overload.py [--quick] [--wait-quiet 1.0] [--json out.json]
    .venv/bin/python bench/overload.py --from-json out.json

About 1.5 minutes (--quick: under one).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import rig
import targets
from clients import chat_body, pct, run_loadgen
from rig import (
    REPO,
    Upstream,
    build_helpers,
    git_commit,
    loadavg,
    machine,
    upstream,
    wait_quiet,
)

NO_HEALTHY = "no healthy worker"
BREAKER_LINE = re.compile(r"breaker open|-> open")


def scrape(port: int) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {targets.ADMIN_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        text: str = resp.read().decode()
        return text


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus series over the label sets that match `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m is None or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def log_lines(target: targets.Target, start: int = 0) -> list[str]:
    assert target.proc is not None
    return target.proc.log.read_text(errors="replace").splitlines()[start:]


def summary(raw: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "ok",
        "errors",
        "incomplete",
        "unfinished",
        "refused",
        "started",
        "status",
        "rps",
        "retry_after",
        "marked",
        "latency_ms",
        "ttft_ms",
        "non200_latency_ms",
    )
    return {k: raw[k] for k in keep}


def overload_phase(up: Upstream, helpers: dict[str, Path], workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    body = chat_body(16, True)
    with targets.sparsegate(up, workdir, name="sparsegate-overload") as gw:
        up.pace(0)
        run_loadgen(helpers, gw.port, body, workdir, conns=16, duration_s=1, warmup_s=0)  # warm-up
        print("  unloaded", flush=True)
        # open loop: every arrival counts, so no warm-up window (the run above warmed the gateway up)
        out["unloaded"] = summary(
            run_loadgen(helpers, gw.port, body, workdir, rate=args.unloaded_rate, duration_s=args.phase_s, warmup_s=0)
        )
        print("  saturation (64 kept-alive connections)", flush=True)
        out["unloaded"]["offered_rps"] = args.unloaded_rate
        out["saturation"] = summary(
            run_loadgen(helpers, gw.port, body, workdir, conns=64, duration_s=args.phase_s, warmup_s=1)
        )
        rate = 2 * max(out["saturation"]["rps"], 1.0)
        time.sleep(2)  # let the saturation run's leftovers finish
        before_log = len(log_lines(gw))
        before = scrape(gw.port)
        print(f"  2x overload: {rate:.0f} requests/s, open loop, for {args.overload_s} s", flush=True)
        raw = run_loadgen(
            helpers,
            gw.port,
            body,
            workdir,
            rate=rate,
            duration_s=args.overload_s,
            warmup_s=0,
            marker=NO_HEALTHY,
            max_inflight=4000,
        )
        out["overload"] = summary(raw)
        out["overload"]["offered_rps"] = rate
        time.sleep(1)
        after = scrape(gw.port)
        lines = log_lines(gw, before_log)
        out["breaker_log_lines"] = [line[:300] for line in lines if BREAKER_LINE.search(line)]
        out["breaker_state_after"] = metric_sum(after, "sparsegate_worker_breaker_state")
        out["upstream_errors"] = metric_sum(after, "sparsegate_upstream_errors_total") - metric_sum(
            before, "sparsegate_upstream_errors_total"
        )
        out["requests_by_status"] = {
            s: metric_sum(after, "sparsegate_requests_total", status=s)
            - metric_sum(before, "sparsegate_requests_total", status=s)
            for s in ("200", "429", "499", "502", "503", "504")
        }
    return out


def disconnect_phase(up: Upstream, helpers: dict[str, Path], workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    body = chat_body(args.stream_chunks, True)
    # The rig's floor first: the same drops straight at the upstream, which logs each close it sees.
    up.pace(20)
    up.reset()
    print(f"  direct: {args.streams} streams, every second one dropped after 10-25 chunks", flush=True)
    direct = run_loadgen(helpers, up.port, body, workdir, conns=args.streams, once=True, drop_every=2, drop_after=10)
    time.sleep(1)  # the last closes still on their way
    floor = analyse_disconnects(direct, up.stats(), {})["upstream_close_latency_ms"]
    with targets.sparsegate(up, workdir, log_level="info", name="sparsegate-disconnect") as gw:
        up.pace(20)
        up.reset()
        print(f"  {args.streams} streams, every second one dropped after 10-25 chunks", flush=True)
        raw = run_loadgen(
            helpers,
            gw.port,
            body,
            workdir,
            conns=args.streams,
            once=True,
            drop_every=2,
            drop_after=10,
            request_ids="ovl-",
            timeout_s=120,
        )
        time.sleep(2)  # aborts still on their way
        stats = up.stats()
        up.pace(0)
        records = {}
        for line in log_lines(gw):
            if line.startswith("{") and '"event":"request"' in line:
                rec = json.loads(line)
                records[rec.get("request_id")] = rec
    out = analyse_disconnects(raw, stats, records)
    out["direct_close_latency_ms"] = floor
    return out


def analyse_disconnects(raw: dict[str, Any], stats: dict[str, Any], records: dict[str, Any]) -> dict[str, Any]:
    """Match the client's closes with the upstream's aborts (by rid = response id) and charges with deliveries."""
    aborts: dict[str, int] = {}
    for rid, t, _found, _sent in stats["aborts"]:  # found = 0: the abort came after the gateway closed the stream
        aborts.setdefault(rid, t)
    closes = {rid: t for rid, t, _sent in stats["closes"]}
    abort_ms, close_ms, missing = [], [], 0
    for _index, rid, t_close, _events in raw["drops"]:
        if rid in aborts:
            abort_ms.append((aborts[rid] - t_close) / 1e6)
        else:
            missing += 1
        if rid in closes:
            close_ms.append((closes[rid] - t_close) / 1e6)
    over, under, charged_total, delivered_total, unmatched = [], 0, 0, 0, 0
    for index, _rid, delivered, _complete, _status in raw["streams"]:
        rec = records.get(f"ovl-{index}")
        if rec is None:
            unmatched += 1
            continue
        charged = int(rec.get("completion_tokens") or 0)
        charged_total += charged
        delivered_total += delivered
        if charged > delivered:
            over.append(charged - delivered)
        elif charged < delivered:
            under += 1
    return {
        "streams": len(raw["streams"]),
        "dropped": len(raw["drops"]),
        "completed": sum(1 for s in raw["streams"] if s[3] and s[4] == 200),
        "status": raw["status"],
        "aborts_received": len(abort_ms),
        "drops_without_abort": missing,
        "abort_latency_ms": {"p50": pct(abort_ms, 0.5), "p99": pct(abort_ms, 0.99), "max": max(abort_ms, default=None)},
        "upstream_close_latency_ms": {"n": len(close_ms), "p50": pct(close_ms, 0.5), "p99": pct(close_ms, 0.99)},
        "charged_tokens": charged_total,
        "delivered_tokens": delivered_total,
        "overcharged_streams": len(over),
        "overcharge_max": max(over, default=0),
        "overcharge_total": sum(over),
        "undercharged_streams": under,
        "streams_without_log_line": unmatched,
    }


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def render(r: dict[str, Any]) -> str:
    m, q = r.get("machine") or {}, r.get("quiet") or {}
    lines = [
        f"Run {r.get('date')} at `{r.get('commit')}`, {m.get('cores')} cores ({m.get('cpu')}); load average at start "
        f"{q.get('loadavg')}, at end {r.get('loadavg_end')}.",
        f"Command: `{r.get('command')}`",
        "",
    ]
    o = r.get("overload_phase") or {}
    if "failed" in o:
        lines.append(f"Overload phase failed: {o['failed']}")
    elif o:
        un, sat, ov = o["unloaded"], o["saturation"], o["overload"]
        ratio = ov["ttft_ms"]["p99"] / un["ttft_ms"]["p99"] if un["ttft_ms"]["p99"] else None
        n503 = ov["status"].get("503", 0)
        lines += [
            "| | measured |",
            "|---|---:|",
            f"| saturating load (64 kept-alive connections, 16-chunk streams) | {sat['rps']:,.0f} req/s |",
            f"| offered at 2x (open loop, new connection each) | {ov['offered_rps']:,.0f} req/s for "
            f"{ov['started']:,} requests |",
            f"| answers by status | {', '.join(f'{k}: {v:,}' for k, v in sorted(ov['status'].items()))} |",
            f"| connect errors / cut short / unanswered 30 s after the run / not sent (client at its limit) | "
            f"{ov['errors']:,} / {ov['incomplete']:,} / {ov.get('unfinished', 0):,} / {ov['refused']:,} |",
            f'| "{NO_HEALTHY}" answers | {ov["marked"]:,} |',
            f"| breaker openings logged during the run | {len(o['breaker_log_lines'])} |",
            f"| breaker state after (sum of gauges; 0 = all closed) | {_f(o['breaker_state_after'], 0)} |",
            f"| 503s with retry-after | {ov['retry_after']:,} of {n503:,} |",
            f"| non-200 latency p50 / p99 | {_f(ov['non200_latency_ms']['p50'], 2)} / "
            f"{_f(ov['non200_latency_ms']['p99'], 2)} ms |",
            f"| admitted TTFT p50 / p99 at 2x | {_f(ov['ttft_ms']['p50'], 2)} / {_f(ov['ttft_ms']['p99'], 2)} ms |",
            f"| unloaded TTFT p50 / p99 ({un.get('offered_rps', un['rps']):.0f} req/s, open loop) | "
            f"{_f(un['ttft_ms']['p50'], 2)} / {_f(un['ttft_ms']['p99'], 2)} ms |",
            f"| admitted p99 TTFT / unloaded p99 TTFT | {_f(ratio, 2)}x |",
        ]
    d = r.get("disconnect_phase") or {}
    if "failed" in d:
        lines.append(f"\nDisconnect phase failed: {d['failed']}")
    elif d:
        a, c = d["abort_latency_ms"], d["upstream_close_latency_ms"]
        floor = d.get("direct_close_latency_ms") or {}
        lines += [
            "",
            "| disconnects | measured |",
            "|---|---:|",
            f"| streams / dropped by the client / completed | {d['streams']} / {d['dropped']} / {d['completed']} |",
            f"| status of the answers that ended (dropped streams not counted) | "
            f"{', '.join(f'{k}: {v:,}' for k, v in sorted(d['status'].items()))} |",
            f"| /abort_request received for dropped streams | {d['aborts_received']} of {d['dropped']} |",
            f"| close -> /abort_request p50 / p99 / max | {_f(a['p50'], 2)} / {_f(a['p99'], 2)} / "
            f"{_f(a['max'], 2)} ms |",
            f"| close -> upstream connection closed p50 / p99 (n) | {_f(c['p50'], 2)} / {_f(c['p99'], 2)} ({c['n']}) |",
            f"| the rig's floor: close -> upstream saw it, no gateway, p50 / p99 (n) | "
            f"{_f(floor.get('p50'), 2)} / {_f(floor.get('p99'), 2)} ({floor.get('n')}) |",
            f"| completion tokens charged / delivered | {d['charged_tokens']:,} / {d['delivered_tokens']:,} |",
            f"| streams charged more than delivered (max, total excess) | {d['overcharged_streams']} "
            f"({d['overcharge_max']}, {d['overcharge_total']}) |",
            f"| streams charged less than delivered / without a request-log line | {d['undercharged_streams']} / "
            f"{d['streams_without_log_line']} |",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter phases: a smoke test, not figures to quote")
    parser.add_argument("--wait-quiet", type=float, default=None, metavar="LOAD")
    parser.add_argument("--cache-dir", default=str(REPO / ".bench-cache"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="print the tables of an earlier --json run")
    parser.add_argument("--streams", type=int, default=500, help="concurrent streams in the disconnect phase")
    args = parser.parse_args()
    if args.from_json is not None:
        print(render(json.loads(args.from_json.read_text())))
        return 0
    args.phase_s = 2.0 if args.quick else 5.0
    args.overload_s = 4.0 if args.quick else 10.0
    args.unloaded_rate = 20.0
    args.stream_chunks = 60  # 1.2 s at 20 ms: every stream is open when the drops start

    helpers = build_helpers(Path(args.cache_dir).resolve())
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([rig.shown_python(), *sys.argv]),
        "commit": git_commit(),
        "machine": machine(),
        "quiet": wait_quiet(args.wait_quiet),
    }
    with tempfile.TemporaryDirectory(prefix="sparsegate-overload-") as tmp, upstream(helpers, Path(tmp)) as up:
        for key, phase in (("overload_phase", overload_phase), ("disconnect_phase", disconnect_phase)):
            print(f"{key.replace('_', ' ')} (load average {loadavg()})", flush=True)
            try:
                results[key] = phase(up, helpers, Path(tmp), args)
            except (RuntimeError, OSError) as exc:
                print(f"  failed: {exc}", file=sys.stderr)
                results[key] = {"failed": str(exc)[:2000]}
    results["loadavg_end"] = loadavg()
    print()
    print(render(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
