"""What the gateway adds to a request, and how it holds up under many concurrent streams.

Starts a simulated worker with zero think time, then measures the same requests sent directly to the worker and
through a gateway process, in three limiter setups: no limits, the in-memory limiter, and Redis (a redis-server
this script starts on a free port). Then a concurrency run: N streaming clients at once through the gateway.

    .venv/bin/python bench/gateway.py [--requests 400] [--concurrency 1000]

Prints a table; numbers go into docs/benchmarks.md by hand, with the date and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from admission import redis_server  # bench/ is the script's directory, so its sibling imports directly

from sparsegate.backends.sim.process import pick_free_port, spawn_sim, stop_sim, wait_ready
from sparsegate.gateway.settings import hash_api_key

KEY = "sk-bench-0123456789abcdef"
MODEL = "bench-model"


@contextmanager
def gateway(workdir: Path, worker: str, limits: dict[str, int] | None, redis_url: str | None) -> Iterator[str]:
    port = pick_free_port()
    config: dict[str, Any] = {
        "tenants": [{"name": "bench", "api_keys": [hash_api_key(KEY)], "models": ["*"], "limits": limits or {}}],
        "pools": [{"name": "p", "model": MODEL, "max_context": 32768, "workers": [worker], "policy": "power_of_two"}],
    }
    if redis_url:
        config["redis_url"] = redis_url
    path = workdir / f"gw-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (workdir / f"gw-{port}.log").open("wb")
    cmd = [sys.executable, "-m", "sparsegate.gateway.cli", "serve", "--config", str(path), "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"gateway did not start; see {log.name}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latencies(base: str, n: int, stream: bool) -> tuple[list[float], list[float]]:
    """Sequential requests (one at a time, so the numbers are latency, not queueing); returns wall and
    Server-Timing gateway times in ms."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "bench"}], "max_tokens": 1, "stream": stream}
    headers = {"Authorization": f"Bearer {KEY}"}
    wall: list[float] = []
    own: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for i in range(n + 20):
            t0 = time.perf_counter()
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
                async for _ in resp.aiter_raw():
                    pass
            elapsed = (time.perf_counter() - t0) * 1000
            if resp.status_code != 200:
                raise SystemExit(f"bench request failed: {resp.status_code}")
            if i >= 20:  # warm-up
                wall.append(elapsed)
                timing = resp.headers.get("server-timing", "")
                if timing.startswith("gateway;dur="):
                    own.append(float(timing.split(";")[1].split("=")[1]))
    return wall, own


async def concurrent_streams(base: str, clients: int, tokens: int) -> dict[str, float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "load"}], "max_tokens": tokens,
            "ignore_eos": True, "stream": True}  # fmt: skip
    headers = {"Authorization": f"Bearer {KEY}"}
    ttfts: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def one() -> None:
            nonlocal failures
            t0 = time.perf_counter()
            first = None
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
                    async for chunk in resp.aiter_raw():
                        if first is None and chunk:
                            first = time.perf_counter() - t0
                    if resp.status_code != 200:
                        failures += 1
                        return
            except httpx.HTTPError:
                failures += 1
                return
            ttfts.append((first or 0.0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "failures": failures,
        "wall_s": wall,
        "tokens_per_s": (clients - failures) * tokens / wall,
        "ttft_p50_ms": pct(ttfts, 0.5) if ttfts else float("nan"),
        "ttft_p99_ms": pct(ttfts, 0.99) if ttfts else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--stream-tokens", type=int, default=50)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sparsegate-bench-"))
    sim_port = pick_free_port()
    sim = spawn_sim(sim_port, MODEL, 32768, ["--ttft-base-ms", "0", "--ttft-per-1k-prompt-tokens-ms", "0",
                                             "--itl-ms", "0", "--itl-per-running-ms", "0", "--max-running", "4096",
                                             "--log-level", "error"])  # fmt: skip
    sim_url = f"http://127.0.0.1:{sim_port}"
    rows: list[tuple[str, str, float, float, float]] = []
    try:
        wait_ready(sim_url, 30, proc=sim)
        for stream in (False, True):
            kind = "stream" if stream else "non-stream"
            direct, _ = asyncio.run(latencies(sim_url, args.requests, stream))
            rows.append((f"direct to worker ({kind})", "-", pct(direct, 0.5), pct(direct, 0.99), float("nan")))
            base_p50 = pct(direct, 0.5)
            setups: list[tuple[str, dict[str, int] | None, bool]] = [
                ("gateway, no limits", None, False),
                ("gateway, in-memory limiter", {"rpm": 10**9, "tpm": 10**12, "max_concurrent": 10**6}, False),
                ("gateway, Redis limiter", {"rpm": 10**9, "tpm": 10**12, "max_concurrent": 10**6}, True),
            ]
            for name, limits, use_redis in setups:
                if use_redis:
                    with redis_server() as redis_url, gateway(workdir, sim_url, limits, redis_url) as gw:
                        wall, own = asyncio.run(latencies(gw, args.requests, stream))
                else:
                    with gateway(workdir, sim_url, limits, None) as gw:
                        wall, own = asyncio.run(latencies(gw, args.requests, stream))
                rows.append((f"{name} ({kind})", f"+{pct(wall, 0.5) - base_p50:.2f}", pct(wall, 0.5), pct(wall, 0.99),
                             statistics.median(own) if own else float("nan")))  # fmt: skip
        print(f"\nLatency, {args.requests} sequential requests each, max_tokens=1, worker with zero think time")
        print(f"{'path':48} {'added p50 ms':>13} {'p50 ms':>8} {'p99 ms':>8} {'Server-Timing gw ms':>20}")
        for name, added, p50, p99, own_ms in rows:
            print(f"{name:48} {added:>13} {p50:8.2f} {p99:8.2f} {own_ms:20.2f}")
        sim2_port = pick_free_port()
        stop_sim(sim)
        sim = spawn_sim(sim2_port, MODEL, 32768, ["--ttft-base-ms", "5", "--itl-ms", "20", "--itl-per-running-ms", "0",
                                                  "--max-running", "100000", "--log-level", "error"])  # fmt: skip
        sim_url = f"http://127.0.0.1:{sim2_port}"
        wait_ready(sim_url, 30, proc=sim)
        with gateway(workdir, sim_url, {"rpm": 10**9, "tpm": 10**12}, None) as gw:
            result = asyncio.run(concurrent_streams(gw, args.concurrency, args.stream_tokens))
        print(f"\nConcurrency: {args.concurrency} streaming clients at once, {args.stream_tokens} tokens each, "
              "20 ms inter-token latency at the worker")  # fmt: skip
        print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    finally:
        stop_sim(sim)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
