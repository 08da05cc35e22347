"""The usage ledger against what the worker served: disconnects, worker errors and a gateway SIGKILL mid-run.

Each gateway forwards its request id to the worker (`x-request-id`), and the sim's `/sim/stats` lists every request
it saw with that header, its status and its tokens. After the run, the ledger's successful records must be exactly
the requests the sim completed, with the same token sums; nothing recorded twice, nothing finished lost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from sparsegate.gateway.settings import hash_api_key
from tests.e2e.harness import ADMIN_KEY, KEY_ACME, MODEL, Gateway, Sim, stream_then_leave, tenant, wait_until
from tests.redis_server import RedisServer

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _chat(gw: Gateway, i: int, **extra: Any) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"question {i} " * (1 + i % 5)}]}
    body |= {"max_tokens": 3 + i % 7} | extra
    try:
        response = httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {KEY_ACME}"})  # fmt: skip
    except httpx.TransportError:
        return 0  # the gateway was killed under this request
    return response.status_code


def _burst(gw: Gateway, start: int, count: int, **extra: Any) -> list[int]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda i: _chat(gw, i, **extra), range(start, start + count)))


@contextmanager
def _ledger_backend(kind: str, workdir: Path) -> Iterator[dict[str, Any]]:
    if kind == "file":
        yield {"ledger": {"file": str(workdir / "ledger.jsonl")}}
        return
    with RedisServer() as redis:
        yield {"redis_url": redis.url, "limiter": {"socket_timeout_s": 2.0, "connect_timeout_s": 2.0}}


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_the_ledger_matches_what_the_worker_served(
    kind: str, tmp_path: Path, sims: Callable[..., Sim], gateways: Callable[..., Gateway]
) -> None:
    sim = sims(max_context=32_768, args=["--itl-ms", "5", "--disconnect-detect-ms", "200"])
    with _ledger_backend(kind, tmp_path) as backend:
        config = {
            "tenants": [tenant("acme", KEY_ACME)],
            "pools": [{"name": "main", "model": MODEL, "max_context": 32_768, "workers": [sim.url]}],
            "admin": {"api_keys": [hash_api_key(ADMIN_KEY)]},
            "retries": {"max_attempts": 1},
            "health": {"failure_threshold": 1000},
        } | backend
        first = gateways(config)
        assert set(_burst(first, 0, 24)) == {200}
        long_body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 2000,
                     "ignore_eos": True, "stream": True}  # fmt: skip
        for _ in range(2):
            stream_then_leave(first, long_body, events=3)  # clients that leave mid-stream
        sim.faults(error_rate=0.5, error_status=500)
        statuses = _burst(first, 24, 20)
        sim.faults(error_rate=0.0)
        assert 200 in statuses and 502 in statuses

        # Streams in flight when the gateway is killed: far from done (2000 tokens at 5 ms), so none can finish.
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(_chat, first, 100 + i, max_tokens=2000, ignore_eos=True) for i in range(4)]
            assert wait_until(lambda: sim.stats()["running"] >= 4, timeout=10)
            assert first.proc is not None
            first.kill()
            assert [f.result() for f in pending] == [0, 0, 0, 0]

        second = gateways(config)  # the same ledger (file or Redis) after the crash
        assert set(_burst(second, 200, 16)) == {200}
        stream_then_leave(second, long_body, events=3)
        assert wait_until(lambda: not any(r["status"] in ("queued", "running") for r in sim.stats()["recent"]), 15)

        export = httpx.get(second.url + "/admin/v1/usage", params={"tenant": "acme"}, headers=ADMIN, timeout=30)
        assert export.status_code == 200
        ledger = [httpx.Response(200, content=line).json() for line in export.text.splitlines()]

    served = [r for r in sim.stats()["recent"] if r["status"] == "completed"]
    ok = [r for r in ledger if r["outcome"] == "ok"]
    assert len(ledger) == len({r["uid"] for r in ledger})  # nothing counted twice
    assert sorted(r["request_id"] for r in ok) == sorted(r["headers_seen"]["x-request-id"] for r in served)
    assert len(ok) == 24 + statuses.count(200) + 16
    assert sum(r["prompt_tokens"] for r in ok) == sum(r["prompt_tokens"] for r in served)
    assert sum(r["completion_tokens"] for r in ok) == sum(r["completion_tokens"] for r in served)
    # The failed and abandoned requests are there too, as what they were: errors charged nothing, the streams
    # that clients left paid for what was streamed. The killed gateway's four have no record: it never settled them.
    assert sum(r["outcome"] == "error" for r in ledger) == statuses.count(502)
    assert all(r["prompt_tokens"] == r["completion_tokens"] == 0 for r in ledger if r["outcome"] == "error")
    assert sum(r["outcome"] == "cancelled" for r in ledger) == 3
