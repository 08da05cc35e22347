"""Where the admin API's snapshot lives, and how every replica learns of a change.

- `FileStore` (no Redis, one replica): the snapshot is kept in memory and written to a file after every change,
  atomically (a temporary file in the same folder, fsynced, then renamed over the old one, then the folder
  fsynced), so a restart finds either the old state or the new, never half of one.
- `RedisStore` (replicas): tenants and keys are two Redis hashes and a version counter, changed together in one
  MULTI. Each replica polls the counter every `sync_interval_s` (at most 1 s) and reloads both hashes when it
  moved; polling a key needs no connection held open, and picks changes up after Redis restarts or a missed
  message, which pub/sub alone does not.

A change made on a replica is applied there at once (the API's answer is never ahead of its own gateway).
A store that cannot be written raises `AdminStoreUnavailable` (503): the admin retries; nothing half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sparsegate.gateway.admin.model import AdminState, KeyRecord, TenantSpec
from sparsegate.gateway.errors import AdminStoreUnavailable

log = logging.getLogger(__name__)

Listener = Callable[[AdminState], None]


class AdminStore(Protocol):
    @property
    def state(self) -> AdminState: ...

    async def start(self, listener: Listener) -> None:
        """Load the stored snapshot, hand it to `listener`, and keep calling it with every later one."""
        ...

    async def close(self) -> None: ...

    async def put_tenant(self, spec: TenantSpec) -> AdminState: ...

    async def put_key(self, key: KeyRecord) -> AdminState: ...


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash at any point leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FileStore:
    """The embedded default: this process's memory, written through to `path` (none: memory only)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._state = AdminState()
        self._listener: Listener = lambda state: None
        self._lock = asyncio.Lock()

    @property
    def state(self) -> AdminState:
        return self._state

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        if self._path is not None and self._path.exists():
            self._state = AdminState.model_validate_json(self._path.read_bytes())
            log.info("admin state loaded from %s (version %d)", self._path, self._state.version)
        listener(self._state)

    async def close(self) -> None:
        return None

    async def _commit(self, change: Callable[[AdminState], AdminState]) -> AdminState:
        async with self._lock:
            new = change(self._state)
            if self._path is not None:
                try:
                    await asyncio.to_thread(write_atomically, self._path, new.model_dump_json(indent=1).encode())
                except OSError as exc:
                    log.error("admin state could not be written to %s: %s", self._path, exc)
                    raise AdminStoreUnavailable("The admin state could not be saved; nothing was changed.") from None
            self._state = new
        self._listener(new)
        return new

    async def put_tenant(self, spec: TenantSpec) -> AdminState:
        return await self._commit(lambda state: state.with_tenant(spec))

    async def put_key(self, key: KeyRecord) -> AdminState:
        return await self._commit(lambda state: state.with_key(key))


class RedisStore:
    """Tenants and keys in Redis, shared by every replica; each polls the version to pick up changes."""

    def __init__(self, client: Redis, *, prefix: str, interval_s: float, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client
        self._tenants_key = f"{prefix}:admin:tenants"
        self._keys_key = f"{prefix}:admin:keys"
        self._version_key = f"{prefix}:admin:version"
        self._interval_s = interval_s
        self._state = AdminState()
        self._listener: Listener = lambda state: None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._sync_lock = asyncio.Lock()

    @property
    def state(self) -> AdminState:
        return self._state

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        try:
            await self.sync()
        except AdminStoreUnavailable:
            log.warning("admin state: Redis unreachable at start; serving the YAML seed until it answers")
        listener(self._state)
        self._task = asyncio.create_task(self._poll(), name="admin-sync")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping.set()
            task.cancel()
            await asyncio.wait({task})
        if self._owns_client:
            await self._client.aclose()

    async def _poll(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(AdminStoreUnavailable):
                await self.sync()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._stopping.wait()

    async def _redis(self, call: Callable[[], Awaitable[Any]]) -> Any:
        try:
            async with asyncio.timeout(2.0):
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("admin state: Redis call failed: %s: %s", type(exc).__name__, exc)
            raise AdminStoreUnavailable("The admin state store (Redis) is unavailable; nothing was changed.") from None

    async def sync(self) -> None:
        """Reload the snapshot if its version moved. One at a time (the poller and a write's own sync), so an
        older read never lands after a newer one; Redis is the truth, even when it lost its data."""
        async with self._sync_lock:
            await self._sync()

    async def _sync(self) -> None:
        version = int(await self._redis(lambda: self._client.get(self._version_key)) or 0)
        if version == self._state.version:
            return

        async def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.get(self._version_key)
            pipe.hgetall(self._tenants_key)
            pipe.hgetall(self._keys_key)
            return list(await pipe.execute())

        raw_version, tenants, keys = await self._redis(read)
        fresh = AdminState(
            version=int(raw_version or 0),
            tenants={k.decode(): TenantSpec.model_validate_json(v) for k, v in tenants.items()},
            keys={k.decode(): KeyRecord.model_validate_json(v) for k, v in keys.items()},
        )
        self._state = fresh
        self._listener(fresh)

    async def _write(self, hash_key: str, field: str, value: str) -> AdminState:
        async def write() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(hash_key, field, value)
            pipe.incr(self._version_key)
            return list(await pipe.execute())

        await self._redis(write)
        await self.sync()
        return self._state

    async def put_tenant(self, spec: TenantSpec) -> AdminState:
        return await self._write(self._tenants_key, spec.name, spec.model_dump_json())

    async def put_key(self, key: KeyRecord) -> AdminState:
        return await self._write(self._keys_key, key.id, key.model_dump_json())


def build_store(redis_url: str | None, *, prefix: str, state_file: Path | None, interval_s: float) -> AdminStore:
    """Redis when the gateway has one (replicas share it), else this process's memory and `state_file`."""
    if redis_url:
        client = Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        return RedisStore(client, prefix=prefix, interval_s=interval_s, owns_client=True)
    return FileStore(state_file)
