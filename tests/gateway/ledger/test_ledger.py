"""The ledger's sinks (file, Redis Streams), their idempotency, the export formats and the price table."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from sparsegate.gateway.ledger.export import COLUMNS, to_csv, to_jsonl
from sparsegate.gateway.ledger.prices import gpu_seconds, spend
from sparsegate.gateway.ledger.record import UsageRecord
from sparsegate.gateway.ledger.service import Ledger
from sparsegate.gateway.ledger.sinks import FileSink, MemorySink, RedisSink
from sparsegate.gateway.record import RequestRecord
from sparsegate.gateway.settings import Price
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def usage(ts: float = 1000.0, tenant: str = "acme", **fields: Any) -> UsageRecord:
    base: dict[str, Any] = {
        "uid": uuid.uuid4().hex,
        "request_id": "req-1",
        "ts": ts,
        "tenant": tenant,
        "key_id": "key-1",
        "model": "glm-5.1",
        "pool": "p",
        "endpoint": "chat",
        "status": 200,
        "outcome": "ok",
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "cached_tokens": 0,
        "ttft_ms": 12.5,
        "duration_ms": 100.0,
    }
    return UsageRecord(**(base | fields))


async def test_file_sink_appends_reads_back_by_time_and_dedupes(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "ledger.jsonl")
    await sink.start()
    a, b, c = usage(ts=10), usage(ts=20), usage(ts=30)
    for record in (a, b, b, c):  # b written twice: counted once
        sink.write(record)
    await sink.close()
    assert [r.uid for r in await sink.read(None, None)] == [a.uid, b.uid, c.uid]
    assert [r.uid for r in await sink.read(20, 30)] == [b.uid]  # [since, until)


async def test_a_file_record_is_in_the_file_when_write_returns(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "ledger.jsonl")
    await sink.start()
    record = usage()
    sink.write(record)
    # no close, no wait for the fsync thread: a process killed now has already handed the record to the kernel
    assert (await FileSink(tmp_path / "ledger.jsonl").read(None, None)) == [record]
    await sink.close()


async def test_file_sink_survives_a_line_torn_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    first = usage(ts=1)
    path.write_bytes(first.model_dump_json().encode() + b"\n" + b'{"uid": "torn", "tena')
    sink = FileSink(path)
    await sink.start()  # a restart after the crash
    later = usage(ts=2)
    sink.write(later)
    await sink.close()
    assert [r.uid for r in await sink.read(None, None)] == [first.uid, later.uid]


async def test_ledger_writes_one_record_per_admitted_request_only() -> None:
    sink = MemorySink()
    ledger = Ledger(sink, {})
    refused = RequestRecord(request_id="r0", endpoint="chat", tenant="acme", status=429)
    served = RequestRecord(request_id="r1", endpoint="chat", tenant="acme", key_id="key-9", model="glm-5.1",
                           pool="p", status=200, prompt_tokens=7, completion_tokens=3, admitted_at=0.001)  # fmt: skip
    ledger.on_finish(refused)
    ledger.on_finish(served)
    ledger.on_finish(served)  # reported twice: still one request
    records = await ledger.records("acme", None, None)
    assert [(r.request_id, r.key_id, r.prompt_tokens, r.completion_tokens) for r in records] == [("r1", "key-9", 7, 3)]
    assert await ledger.records("other", None, None) == []


async def test_redis_sink_writes_each_uid_once_and_reads_a_range(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    sink = RedisSink(Redis.from_url(redis_server.url), prefix=prefix)
    await sink.start()
    a, b = usage(ts=1_000_000.0), usage(ts=1_000_100.0)
    assert await sink.append(a) is True
    assert await sink.append(a) is False  # a retried write whose first try landed adds nothing
    sink.write(b)
    sink.write(b)
    await sink.close()  # drains the queue

    reader = RedisSink(Redis.from_url(redis_server.url), prefix=prefix)
    try:
        assert [r.uid for r in await reader.read(None, None)] == [a.uid, b.uid]
        assert [r.uid for r in await reader.read(1_000_050.0, None)] == [b.uid]
        raw = Redis.from_url(redis_server.url)
        assert await raw.xlen(f"{prefix}:ledger") == 2
        await raw.aclose()
    finally:
        await reader.close()


async def test_redis_sink_spills_to_the_fallback_file_when_redis_is_gone(tmp_path: Path) -> None:
    with RedisServer() as own:
        sink = RedisSink(Redis.from_url(own.url), prefix="x", fallback=FileSink(tmp_path / "spill.jsonl"))
        await sink.start()
        own.stop()
        record = usage()
        sink.write(record)
        await sink.close()
    assert [r.uid for r in await FileSink(tmp_path / "spill.jsonl").read(None, None)] == [record.uid]


def test_price_per_1k_tokens_and_gpu_seconds() -> None:
    record = usage(prompt_tokens=2000, completion_tokens=1000)
    assert spend(record, None) == (None, None)
    per_token = Price(input_per_1k=0.5, output_per_1k=2.0)
    assert spend(record, per_token)[1] == pytest.approx(0.5 * 2 + 2.0 * 1)
    gpu = Price(per_gpu_second=3.0, prefill_tokens_per_gpu_s=1000, decode_tokens_per_gpu_s=100,
                context_scale_tokens=2500)  # fmt: skip
    # prefill 2000/1000 = 2 s; decode 1000/100 * (1 + (2000 + 500)/2500) = 20 s
    assert gpu_seconds(record, gpu) == pytest.approx(22.0)
    assert spend(record, gpu) == (pytest.approx(22.0), pytest.approx(66.0))
    longer = usage(prompt_tokens=20_000, completion_tokens=1000)
    assert gpu_seconds(longer, gpu) > gpu_seconds(record, gpu) * 2  # decode costs grow with the context


def test_export_jsonl_and_csv_carry_the_same_rows_with_spend() -> None:
    records = [usage(ts=1.0), usage(ts=2.0, model="other", ttft_ms=None)]
    prices = {"glm-5.1": Price(input_per_1k=1.0, output_per_1k=1.0)}
    lines = [json.loads(line) for line in to_jsonl(records, prices).splitlines()]
    assert [line["spend"] for line in lines] == [pytest.approx(1.5), None]
    table = list(csv.DictReader(io.StringIO(to_csv(records, prices))))
    assert list(table[0]) == list(COLUMNS)
    assert [row["uid"] for row in table] == [r.uid for r in records]
    assert table[0]["spend"] == "1.5" and table[1]["spend"] == "" and table[1]["ttft_ms"] == ""
    assert int(table[0]["prompt_tokens"]) + int(table[0]["completion_tokens"]) == records[0].total_tokens
