"""`--enable-priority-scheduling` in the sim: a freed slot goes to the waiting request with the largest priority, as
SGLang 0.5.23 orders its waiting queue by default (the baseline of bench/fairness.py)."""

from __future__ import annotations

import asyncio

import pytest

from .sim_support import CHAT, MakeSim, chat_body, wait_until


@pytest.mark.parametrize("priority_scheduling", [True, False], ids=["priority", "fifo"])
async def test_a_freed_slot_goes_to_the_highest_priority(make_sim: MakeSim, priority_scheduling: bool) -> None:
    sim = await make_sim(max_running=1, itl_ms=5.0, enable_priority_scheduling=priority_scheduling)
    finished: list[str] = []

    async def send(rid: str, priority: int, tokens: int) -> None:
        body = chat_body(rid=rid, max_tokens=tokens, ignore_eos=True, priority=priority)
        assert (await sim.client.post(CHAT, json=body)).status_code == 200
        finished.append(rid)

    async def waiting(n: int) -> bool:
        [load] = (await sim.client.get("/v1/loads")).json()["loads"]
        return bool(load["num_running_reqs"] == 1 and load["num_waiting_reqs"] == n)

    holder = asyncio.create_task(send("holder", 0, 200))
    await wait_until(lambda: waiting(0))
    low = asyncio.create_task(send("low", 0, 5))
    await wait_until(lambda: waiting(1))
    high = asyncio.create_task(send("high", 10, 5))
    await wait_until(lambda: waiting(2))
    await asyncio.gather(holder, low, high)
    assert finished == (["holder", "high", "low"] if priority_scheduling else ["holder", "low", "high"])
