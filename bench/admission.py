"""Admission cost: what one request pays the limiter, in-memory and in Redis.

Each sample is one admit + settle round trip (what every request pays: one Lua call to admit, one to settle for
Redis), for a tenant with all three limits set (rpm, tpm, max_concurrent) and, in the second tenant row, per-model
limits too (six buckets). Limits are high enough that every request is admitted. Redis is a redis-server this
script starts on a free port (no persistence), on the same machine.

Two runs per backend:
- sequential: one caller, so the figure is the bare cost of a round trip;
- concurrent: `--concurrency` callers at once on one event loop (a gateway replica under load), so p99 includes
  queueing behind the other callers, and throughput is admissions per second through one replica.

    .venv/bin/python bench/admission.py [--samples 5000] [--concurrency 200]

Prints a table; the figures go into docs/benchmarks.md by hand, with the date and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sparsegate.gateway.limits import AdmissionRequest, Limiter, MemoryLimiter, RedisLimiter
from sparsegate.gateway.settings import LimiterSettings, Limits

HIGH = Limits(rpm=10**9, tpm=10**12, max_concurrent=10**6)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH; install it (apt-get install redis-server)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as workdir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen([*args, "--dir", workdir], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not _pong(port):
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _request(with_model_limits: bool) -> AdmissionRequest:
    return AdmissionRequest(
        tenant="bench",
        model="bench-model",
        limits=HIGH,
        model_limits=HIGH if with_model_limits else None,
        tokens=1000,
        request_id=uuid.uuid4().hex[:12],
    )


async def _round_trip(limiter: Limiter, request: AdmissionRequest) -> float:
    start = time.perf_counter()
    reservation = await limiter.admit(request)
    await limiter.settle(reservation, used_tokens=400)
    return time.perf_counter() - start


async def sequential(limiter: Limiter, request: AdmissionRequest, samples: int) -> list[float]:
    for _ in range(min(500, samples)):
        await _round_trip(limiter, request)
    return [await _round_trip(limiter, request) for _ in range(samples)]


async def concurrent(
    limiter: Limiter, request: AdmissionRequest, samples: int, callers: int
) -> tuple[list[float], float]:
    per_caller = max(1, samples // callers)
    out: list[float] = []

    async def caller() -> None:
        for _ in range(per_caller):
            out.append(await _round_trip(limiter, request))

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return out, len(out) / (time.perf_counter() - start)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] * 1e6


async def run(samples: int, callers: int) -> None:
    rows: list[tuple[str, str, float, float, float]] = []
    with redis_server() as url:
        backends: list[tuple[str, Limiter]] = [
            ("memory", MemoryLimiter()),
            ("redis", RedisLimiter(LimiterSettings(key_prefix="bench"), url=url, replica_id="bench")),
        ]
        for name, limiter in backends:
            await limiter.start()
            for buckets, with_model in (("3", False), ("6", True)):
                request = _request(with_model)
                lat = await sequential(limiter, request, samples)
                rows.append(
                    (name, f"{buckets} buckets, 1 caller", _pct(lat, 0.5), _pct(lat, 0.99), 1 / statistics.mean(lat))
                )
            lat, rate = await concurrent(limiter, _request(False), samples, callers)
            rows.append((name, f"3 buckets, {callers} callers", _pct(lat, 0.5), _pct(lat, 0.99), rate))
            if isinstance(limiter, RedisLimiter):
                assert limiter.breaker.state == "closed", "Redis calls failed during the run; figures are not valid"
            await limiter.close()

    print(f"admit + settle round trip, {samples} samples per row")
    print("| backend | load | p50 µs | p99 µs | round trips/s |")
    print("|---|---|---:|---:|---:|")
    for name, load, p50, p99, rate in rows:
        print(f"| {name} | {load} | {p50:,.0f} | {p99:,.0f} | {rate:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args.samples, args.concurrency))


if __name__ == "__main__":
    main()
