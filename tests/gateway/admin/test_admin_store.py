"""The admin stores: the file store's atomic write-through, and two Redis stores acting as two replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from sparsegate.gateway.admin.model import AdminState, KeyRecord, TenantSpec
from sparsegate.gateway.admin.store import FileStore, RedisStore, write_atomically
from sparsegate.gateway.errors import AdminStoreUnavailable
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def _key(tenant: str = "acme") -> KeyRecord:
    return KeyRecord(id=f"key-{uuid.uuid4().hex[:8]}", tenant=tenant, hash="sha256:" + "a" * 64, prefix="sk-sg-abc")


async def test_file_store_writes_through_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    seen: list[AdminState] = []
    store = FileStore(path)
    await store.start(seen.append)
    await store.put_tenant(TenantSpec(name="beta", models=["m"]))
    key = _key("beta")
    await store.put_key(key)
    assert [s.version for s in seen] == [0, 1, 2]

    again = FileStore(path)
    await again.start(seen.append)
    assert again.state == store.state and again.state.keys[key.id] == key


async def test_file_store_that_cannot_write_changes_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = FileStore(blocker / "state.json")
    await store.start(lambda state: None)
    with pytest.raises(AdminStoreUnavailable):
        await store.put_tenant(TenantSpec(name="beta", models=["m"]))
    assert store.state.version == 0


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    write_atomically(path, b"old")
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


async def test_a_change_on_one_redis_replica_reaches_the_other(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    one = RedisStore(Redis.from_url(redis_server.url), prefix=prefix, interval_s=0.05, owns_client=True)
    two = RedisStore(Redis.from_url(redis_server.url), prefix=prefix, interval_s=0.05, owns_client=True)
    changed = {1: asyncio.Event(), 2: asyncio.Event()}
    await one.start(lambda state: changed[1].set())
    await two.start(lambda state: changed[2].set())
    try:
        key = _key()
        changed[2].clear()
        written = await one.put_key(key)
        assert written.keys[key.id] == key  # the writer sees its own change at once
        async with asyncio.timeout(5.0):  # the 1 s bound is measured by bench/admin.py and the e2e test
            await changed[2].wait()
        assert two.state == written
        revoked = key.model_copy(update={"expires_at": 1.0})
        changed[1].clear()
        await two.put_key(revoked)
        async with asyncio.timeout(5.0):
            await changed[1].wait()
        assert one.state.keys[key.id].expires_at == 1.0
    finally:
        await one.close()
        await two.close()


async def test_redis_store_down_refuses_changes(redis_server: RedisServer) -> None:
    with RedisServer() as own:
        store = RedisStore(Redis.from_url(own.url), prefix="x", interval_s=0.05, owns_client=True)
        await store.start(lambda state: None)
        own.stop()
        try:
            with pytest.raises(AdminStoreUnavailable):
                await store.put_tenant(TenantSpec(name="beta", models=["m"]))
        finally:
            await store.close()
