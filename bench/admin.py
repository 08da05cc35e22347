"""What issue 12 costs a request, and how fast an admin change reaches another replica.

Three tables:
- admission: one admit + settle round trip for a tenant with rpm/tpm/max_concurrent, without and with token
  budgets (a day and a month for the tenant and for its key: four more buckets in the same Lua call / memory step);
- ledger: what the request path pays to write one usage record: the file sink's write(2) (its fsync runs in a
  thread), and the Redis stream's SET NX + XADD script call, awaited (the gateway queues it to a writer task);
- propagation: a key revoked through one replica's admin store until another replica's store hands the new
  snapshot to its key store (both on one Redis, polling every `admin.sync_interval_s`).

Redis is a redis-server this script starts on a free port (no persistence), on the same machine.

    .venv/bin/python bench/admin.py [--samples 3000] [--trials 40]

Prints tables; the figures go into docs/benchmarks.md by hand, with the date and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from admission import redis_server
from redis.asyncio import Redis

from sparsegate.gateway.admin.model import AdminState, KeyRecord
from sparsegate.gateway.admin.store import RedisStore
from sparsegate.gateway.ledger.record import UsageRecord
from sparsegate.gateway.ledger.sinks import FileSink, RedisSink
from sparsegate.gateway.limits import AdmissionRequest, Limiter, MemoryLimiter, RedisLimiter
from sparsegate.gateway.settings import Budgets, LimiterSettings, Limits

HIGH = Limits(rpm=10**9, tpm=10**12, max_concurrent=10**6)
BIG = Budgets(tokens_per_day=10**15, tokens_per_month=10**15)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def _request(budgets: bool) -> AdmissionRequest:
    return AdmissionRequest(
        tenant="bench",
        model="m",
        limits=HIGH,
        model_limits=None,
        tokens=1000,
        request_id=uuid.uuid4().hex[:12],
        budgets=BIG if budgets else Budgets(),
        key_id="key-bench",
        key_budgets=BIG if budgets else Budgets(),
    )


async def _admission(limiter: Limiter, budgets: bool, samples: int) -> list[float]:
    out = []
    for i in range(samples + 300):
        start = time.perf_counter()
        reservation = await limiter.admit(_request(budgets))
        await limiter.settle(reservation, 400)
        if i >= 300:  # warm-up
            out.append(time.perf_counter() - start)
    return out


def _usage() -> UsageRecord:
    return UsageRecord(
        uid=uuid.uuid4().hex, request_id="req-bench", ts=time.time(), tenant="bench", key_id="key-bench",
        model="m", pool="p", endpoint="chat", status=200, outcome="ok", prompt_tokens=1000, completion_tokens=200,
        cached_tokens=0, ttft_ms=12.0, duration_ms=800.0,
    )  # fmt: skip


async def _ledger_file(path: Path, fsync: bool, samples: int) -> list[float]:
    sink = FileSink(path, fsync=fsync)
    await sink.start()
    out = []
    for _ in range(samples):
        record = _usage()
        start = time.perf_counter()
        sink.write(record)
        out.append(time.perf_counter() - start)
    await sink.close()
    return out


async def _ledger_redis(url: str, samples: int) -> list[float]:
    sink = RedisSink(Redis.from_url(url), prefix=f"b{uuid.uuid4().hex[:6]}")
    out = []
    for _ in range(samples):
        record = _usage()
        start = time.perf_counter()
        await sink.append(record)
        out.append(time.perf_counter() - start)
    await sink.close()
    return out


async def _propagation(url: str, trials: int, interval_s: float) -> list[float]:
    prefix = f"b{uuid.uuid4().hex[:6]}"
    seen: asyncio.Queue[AdminState] = asyncio.Queue()
    writer = RedisStore(Redis.from_url(url), prefix=prefix, interval_s=interval_s, owns_client=True)
    reader = RedisStore(Redis.from_url(url), prefix=prefix, interval_s=interval_s, owns_client=True)
    await writer.start(lambda state: None)
    await reader.start(seen.put_nowait)
    await seen.get()  # the initial snapshot
    out = []
    try:
        for i in range(trials):
            key = KeyRecord(id=f"key-{i}", tenant="bench", hash="sha256:" + "0" * 64, expires_at=time.time())
            await asyncio.sleep(interval_s * (i % 7) / 7)  # land at different points of the poll period
            start = time.perf_counter()
            written = await writer.put_key(key)
            while (await seen.get()).version < written.version:
                pass
            out.append(time.perf_counter() - start)
    finally:
        await writer.close()
        await reader.close()
    return out


async def run(samples: int, trials: int) -> None:
    with redis_server() as url:
        print(f"admit + settle round trip, one caller, {samples} samples per row")
        print("| backend | buckets | p50 µs | p99 µs |")
        print("|---|---|---:|---:|")
        limiters: list[tuple[str, Limiter]] = [
            ("memory", MemoryLimiter()),
            ("redis", RedisLimiter(LimiterSettings(key_prefix="bench"), url=url, replica_id="bench")),
        ]
        for name, limiter in limiters:
            await limiter.start()
            for budgets, label in ((False, "rpm, tpm, concurrency"), (True, "+ 4 budgets (day, month x tenant, key)")):
                lat = await _admission(limiter, budgets, samples)
                print(f"| {name} | {label} | {_pct(lat, 0.5) * 1e6:,.0f} | {_pct(lat, 0.99) * 1e6:,.0f} |")
            if isinstance(limiter, RedisLimiter):
                assert limiter.breaker.state == "closed", "Redis calls failed during the run; figures are not valid"
            await limiter.close()

        print(f"\nledger: one record written, {samples} samples per row")
        print("| sink | p50 µs | p99 µs |")
        print("|---|---:|---:|")
        with tempfile.TemporaryDirectory(dir=".") as tmp:
            for fsync in (True, False):
                lat = await _ledger_file(Path(tmp) / f"l{fsync}.jsonl", fsync, samples)
                label = (
                    "file, write(2) (fsync: always, in the sync thread)" if fsync else "file, write(2) (fsync: never)"
                )
                print(f"| {label} | {_pct(lat, 0.5) * 1e6:,.0f} | {_pct(lat, 0.99) * 1e6:,.0f} |")
        lat = await _ledger_redis(url, samples)
        print(f"| Redis stream (SET NX + XADD, awaited) | {_pct(lat, 0.5) * 1e6:,.0f} | {_pct(lat, 0.99) * 1e6:,.0f} |")

        print(f"\nadmin change on one replica -> the other's key store, {trials} trials, polling every 0.25 s")
        lat = await _propagation(url, trials, 0.25)
        print("| p50 ms | p99 ms | max ms |")
        print("|---:|---:|---:|")
        print(f"| {_pct(lat, 0.5) * 1e3:,.0f} | {_pct(lat, 0.99) * 1e3:,.0f} | {max(lat) * 1e3:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(run(args.samples, args.trials))


if __name__ == "__main__":
    main()
