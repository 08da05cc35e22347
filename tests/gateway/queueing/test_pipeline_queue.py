"""The fair queue inside the request path, in process: shedding before any charge, Server-Timing, readiness, and a
client that leaves while it waits."""

from __future__ import annotations

import asyncio
from typing import Any

from sparsegate.gateway.queueing import Ticket
from sparsegate.gateway.wire import Message
from tests.gateway.support import KEY, Running, chat, running

ONE_SLOT: dict[str, Any] = {"max_running": 1}


async def hold_the_only_slot(gw: Running) -> Ticket:
    """Read the worker's capacity (one slot) and take that slot, as a running request would."""
    gate = gw.state.gate
    for _ in range(100):  # a health probe may hold the worker's slot for a moment (SGLang counts it as running)
        await gate.poll()
        if gate.saturation()["short"]["in_use"] == 0:
            break
    assert gate.saturation()["short"]["limit"] == 1
    ticket = gate.try_take("short", "acme")
    assert ticket is not None and gate.try_take("short", "acme") is None
    return ticket


async def queued(gw: Running, n: int) -> None:
    for _ in range(1000):
        if gw.state.gate.saturation()["short"]["queued"] == n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never {n} queued: {gw.state.gate.saturation()}")


async def test_a_passed_queue_deadline_sheds_503_and_charges_nothing() -> None:
    async with running() as gw:  # what one request reserves: its prompt and max_tokens (8)
        cost = gw.state.router.count_prompt_tokens("glm-5.1", messages=chat()["messages"]) + 8
    tenant = {"budgets": {"tokens_per_day": cost}}  # a day's budget that holds exactly one such request
    async with running(sim_overrides=ONE_SLOT, tenant=tenant, fair_share={"max_wait_s": 0.001, "poll_s": 3600}) as gw:
        ticket = await hold_the_only_slot(gw)
        resp = await gw.chat(chat())
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["type"] == "server_error"
        assert resp.headers["retry-after"] == "1" and resp.headers["retry-after-ms"] == "1000"
        record = gw.records[-1]
        assert record.worker is None and record.error_type == "QueueTimeout", "shed in the queue, before any worker"
        assert (await gw.sim_stats("sim-0"))["received"] == 0
        gw.state.gate.release(ticket)
        # the whole reservation came back: the day's budget still holds one request
        assert (await gw.chat(chat())).status_code == 200
        assert (await gw.chat(chat())).status_code == 429


async def test_the_queue_time_shows_in_server_timing_and_readiness() -> None:
    async with running(sim_overrides=ONE_SLOT, fair_share={"poll_s": 3600}) as gw:
        ticket = await hold_the_only_slot(gw)
        waiting = asyncio.create_task(gw.chat(chat()))
        await queued(gw, 1)
        ready = (await gw.client.get("/health/ready")).json()
        assert ready["saturation"]["short"] == {"limit": 1, "in_use": 1, "queued": 1, "saturated": True}
        assert ready["saturated_pools"] == ["short"] and ready["status"] == "ok"
        gw.state.gate.release(ticket)
        resp = await waiting
        assert resp.status_code == 200, resp.text
        timing = resp.headers["server-timing"]
        assert "queue;dur=" in timing and 'desc="fair queue"' in timing
        record = gw.records[-1]
        assert record.queue_s > 0 and record.gateway_overhead_s() <= record.elapsed() - record.queue_s
        assert gw.state.gate.saturation()["short"]["in_use"] == 0, "the slot came back when the answer ended"
        metrics = gw.state.metrics.render().decode()
        assert 'sparsegate_queue_wait_seconds_count{outcome="granted",pool="short",tenant="acme"} 1.0' in metrics
        assert 'sparsegate_queue_depth{pool="short",tenant="acme"} 0.0' in metrics


async def test_a_client_that_leaves_while_queued_leaves_the_queue_and_pays_nothing() -> None:
    async with running(sim_overrides=ONE_SLOT, fair_share={"poll_s": 3600}) as gw:
        ticket = await hold_the_only_slot(gw)
        gone = asyncio.Event()
        body_sent = False
        sent: list[Message] = []

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {
                    "type": "http.request",
                    "body": b'{"model":"glm-5.1","messages":[{"role":"user","content":"hi"}]}',
                }
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
            "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json")],
        }  # fmt: skip
        serving = asyncio.create_task(gw.app(scope, receive, send))
        await queued(gw, 1)
        gone.set()
        await serving
        assert sent == [], "nothing is written to a client that left"
        assert gw.state.gate.saturation()["short"] == {"limit": 1, "in_use": 1, "queued": 0, "saturated": True}
        record = gw.records[-1]
        assert record.outcome == "cancelled" and record.status == 499 and record.worker is None
        assert (await gw.sim_stats("sim-0"))["received"] == 0
        gw.state.gate.release(ticket)
        assert gw.state.gate.saturation()["short"]["in_use"] == 0
