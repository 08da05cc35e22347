"""A reload swaps the whole snapshot (keys, timeouts, retries, bounds) or, for restart-only fields, nothing."""

from __future__ import annotations

import pytest

from sparsegate.gateway.settings import ConfigError
from tests.gateway.support import chat, running, settings


async def test_reload_swaps_the_snapshot_whole() -> None:
    async with running() as gw:
        state = gw.state
        before = state.snapshot
        new = settings(
            ["http://sim-0"], timeouts={"read_s": 7}, retries={"max_attempts": 1}, overload={"max_in_flight": 9}
        )
        state.reload(new)
        after = state.snapshot
        assert after is not before and after.settings is new
        assert after.timeouts.read_s == 7 and after.retries.max_attempts == 1
        assert state.shedder.max_in_flight == 9
        assert (await gw.chat(chat())).status_code == 200


async def test_restart_only_fields_are_refused_by_name() -> None:
    async with running() as gw:
        state = gw.state
        before = state.snapshot
        with pytest.raises(ConfigError, match="redis_url"):
            state.reload(settings(["http://sim-0"], redis_url="redis://127.0.0.1:1/0", timeouts={"read_s": 7}))
        assert state.snapshot is before, "nothing applied"


async def test_new_keys_take_effect_and_old_ones_stop() -> None:
    async with running() as gw:
        gw.state.reload(settings(["http://sim-0"], tenant={"api_keys": ["sha256:" + "0" * 64]}))
        resp = await gw.chat(chat())
        assert resp.status_code == 401
