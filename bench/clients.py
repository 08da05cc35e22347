"""The two load generators of bench/peers.py and bench/overload.py, run on the rig's CPU: wrk for non-stream requests
and bench/c/loadgen.c for streams, with the parsers of what they print.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rig import KEY, MODEL, RIG_CPUS, need_wrk, pinned


def chat_body(max_tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "bench"}],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests, req/s, latency percentiles (ms) and error counts from `wrk --latency` output."""
    result: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    m = re.search(r"Latency Distribution\s+50%\s+(\S+)\s+75%\s+(\S+)\s+90%\s+(\S+)\s+99%\s+(\S+)", output)
    if m is None:
        raise ValueError("wrk printed no latency distribution (was --latency given?)")
    result.update(p50_ms=_ms(m.group(1)), p75_ms=_ms(m.group(2)), p90_ms=_ms(m.group(3)), p99_ms=_ms(m.group(4)))
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if m is None:
        raise ValueError("wrk printed no request count")
    result["requests"] = int(m.group(1))
    result["duration_s"] = _ms(m.group(2) + m.group(3)) / 1000
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    result["rps"] = float(m.group(1)) if m else result["requests"] / result["duration_s"]
    if result["requests"] == 0:  # wrk prints zeros then; they are no latency
        for key in ("p50_ms", "p75_ms", "p90_ms", "p99_ms"):
            result[key] = None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if m:
        result["non_2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        result["socket_errors"] = sum(int(g) for g in m.groups())
    return result


def run_wrk(port: int, body: dict[str, Any], conns: int, duration_s: float, workdir: Path) -> dict[str, Any]:
    script = workdir / "wrk-post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
    )
    seconds = max(1, round(duration_s))  # wrk takes whole seconds
    argv = [
        need_wrk(),
        "-t1",
        f"-c{conns}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/v1/chat/completions",
    ]
    done = subprocess.run(pinned(RIG_CPUS, argv), capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def run_loadgen(
    binaries: dict[str, Path],
    port: int,
    body: dict[str, Any],
    workdir: Path,
    *,
    conns: int = 1,
    rate: float = 0.0,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    once: bool = False,
    drop_every: int = 0,
    drop_after: int = 0,
    request_ids: str | None = None,
    marker: str | None = None,
    max_inflight: int | None = None,
    path: str = "/v1/chat/completions",
    timeout_s: float = 300,
) -> dict[str, Any]:
    """Run bench/c/loadgen.c on the rig's CPU; returns its JSON (see parse in the C source)."""
    body_file = Path(tempfile.mkstemp(dir=workdir, suffix=".json")[1])
    body_file.write_text(json.dumps(body))
    argv = [
        str(binaries["loadgen"]),
        "--port",
        str(port),
        "--body-file",
        str(body_file),
        "--header",
        f"Authorization: Bearer {KEY}",
        "--duration",
        str(duration_s),
        "--warmup",
        str(warmup_s),
    ]
    argv += ["--rate", str(rate)] if rate > 0 else ["--conns", str(conns)]
    if once:
        argv.append("--once")
    if drop_every:
        argv += ["--drop-every", str(drop_every), "--drop-after", str(drop_after)]
    if request_ids:
        argv += ["--request-ids", request_ids]
    if marker:
        argv += ["--marker", marker]
    argv += ["--path", path]
    if max_inflight:
        argv += ["--max-inflight", str(max_inflight)]
    done = subprocess.run(pinned(RIG_CPUS, argv), capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr}")
    return parse_loadgen(done.stdout)


def parse_loadgen(output: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(output)
    for key in ("ok", "errors", "incomplete", "status", "latency_ms", "ttft_ms", "gap_ms", "rps"):
        if key not in data:
            raise ValueError(f"loadgen output lacks {key!r}")
    for series in data.values():
        if isinstance(series, dict) and series.get("n") == 0:  # no samples: zeros are no figure
            series.update(dict.fromkeys(("p50", "p90", "p99", "max", "mean")))
    return data


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile by the nearest-rank rule loadgen.c uses; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
