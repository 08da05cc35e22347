"""Where ledger records go, durably, and how they are read back.

- `FileSink` (no Redis): one JSON line per record, appended with O_APPEND in one write(2) before the request's
  settling ends. Once write(2) returns the record is the kernel's: a gateway killed at any point loses no record of
  a request that finished before it. With `ledger.fsync: always` (the default) a thread fsyncs whatever was
  written since its last pass (group commit: a machine crash loses at most the records of the last fsync's
  duration, a few ms; the event loop never waits on the disk). `fsync: never` leaves the flush to the OS (a machine
  crash can lose its last ~30 s). A torn last line (killed mid-write) is skipped when reading.
- `RedisSink` (Redis configured): records go to one Redis Stream (`XADD`), from a queue drained by a background
  task, so the request path never waits on Redis. A write that fails is retried with backoff; what is still
  queued at shutdown, or while Redis stays away, is appended to the fallback file when one is configured. Each
  write runs a script that first claims `<prefix>:ledger:seen:<uid>` with SET NX: a retried write whose first
  try did land (only its reply was lost) adds nothing.
- `MemorySink`: no Redis and no file. Exportable while the process lives, not durable (a warning says so).

Reading dedupes by `uid` whatever the sink, so a record written twice (e.g. both to Redis and to the fallback
file, then imported) is counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sparsegate.gateway.ledger.record import UsageRecord

log = logging.getLogger(__name__)

SEEN_TTL_S = 7 * 86400  # how long a written uid is remembered against duplicate writes
RETRY_S = (0.1, 0.25, 0.5, 1.0, 2.0)
CLOSE_FLUSH_S = 2.0

_APPEND = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  if ARGV[3] ~= '' then
    return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'r', ARGV[1])
  end
  return redis.call('XADD', KEYS[1], '*', 'r', ARGV[1])
end
return false
"""


class LedgerSink(Protocol):
    def write(self, record: UsageRecord) -> None:
        """Take one record; never raises into the request path (failures are logged and retried)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, since: float | None, until: float | None) -> list[UsageRecord]:
        """Records that ended in [since, until), each uid once, oldest first."""
        ...


def dedupe(records: Iterable[UsageRecord], since: float | None, until: float | None) -> list[UsageRecord]:
    seen: set[str] = set()
    out = []
    for record in records:
        if record.uid in seen:
            continue
        if (since is not None and record.ts < since) or (until is not None and record.ts >= until):
            continue
        seen.add(record.uid)
        out.append(record)
    out.sort(key=lambda r: r.ts)
    return out


def parse_lines(lines: Iterable[bytes]) -> Iterator[UsageRecord]:
    for line in lines:
        if not line.strip():
            continue
        try:
            yield UsageRecord.model_validate_json(line)
        except ValidationError:
            log.warning("ledger: skipped an unreadable line (%d bytes), e.g. one torn by a crash", len(line))


class MemorySink:
    def __init__(self) -> None:
        self._records: list[UsageRecord] = []

    def write(self, record: UsageRecord) -> None:
        self._records.append(record)

    async def start(self) -> None:
        log.warning("ledger: no Redis and no ledger.file configured; usage is kept in memory only (not durable)")

    async def close(self) -> None:
        return None

    async def read(self, since: float | None, until: float | None) -> list[UsageRecord]:
        return dedupe(self._records, since, until)


class FileSink:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._fd: int | None = None
        self._lock = threading.Lock()  # the fd, between the event loop and the fsync thread
        self._dirty = threading.Event()
        self._stopping = False
        self._syncer: threading.Thread | None = None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")  # a line torn by a crash: the next record starts on a line of its own
            self._fd = fd
        return self._fd

    def write(self, record: UsageRecord) -> None:
        self.write_many([record])

    def write_many(self, records: Iterable[UsageRecord]) -> None:
        """Append in one write(2): in the kernel when this returns, so a killed process loses nothing. The fsync
        (which a machine crash needs) runs in the sync thread, batching whatever was written meanwhile."""
        data = b"".join(r.model_dump_json().encode() + b"\n" for r in records)
        if not data:
            return
        try:
            with self._lock:
                fd = self._open()
                os.write(fd, data)
                if self._fsync and self._syncer is None:
                    os.fsync(fd)  # not started (a shutdown spill): sync here
            if self._syncer is not None:
                self._dirty.set()
        except OSError as exc:
            log.error("ledger: could not append to %s: %s; %d record(s) lost", self.path, exc, data.count(b"\n"))

    def _sync_loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            with self._lock:
                if self._fd is not None:
                    try:
                        os.fsync(self._fd)
                    except OSError as exc:
                        log.error("ledger: fsync of %s failed: %s", self.path, exc)
            if self._stopping:
                return

    async def start(self) -> None:
        with self._lock:
            self._open()
        if self._fsync and self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="ledger-fsync", daemon=True)
            self._syncer.start()

    async def close(self) -> None:
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            self._stopping = True
            self._dirty.set()
            await asyncio.to_thread(syncer.join)  # its last pass fsyncs everything written before
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    async def read(self, since: float | None, until: float | None) -> list[UsageRecord]:
        def load() -> list[UsageRecord]:
            try:
                with self.path.open("rb") as f:
                    return dedupe(parse_lines(f), since, until)
            except FileNotFoundError:
                return []

        return await asyncio.to_thread(load)


class RedisSink:
    def __init__(
        self, client: Redis, *, prefix: str, maxlen: int | None = None, fallback: FileSink | None = None
    ) -> None:
        self._client = client
        self._stream = f"{prefix}:ledger"
        self._seen_prefix = f"{prefix}:ledger:seen:"
        self._maxlen = "" if maxlen is None else str(maxlen)
        self._fallback = fallback
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._script = client.register_script(_APPEND)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def write(self, record: UsageRecord) -> None:
        self._queue.append(record)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="ledger-writer")

    async def append(self, record: UsageRecord) -> bool:
        """Write one record now; False if its uid was already written."""
        async with asyncio.timeout(2.0):
            added = await self._script(
                keys=[self._stream, self._seen_prefix + record.uid],
                args=[record.model_dump_json(), SEEN_TTL_S, self._maxlen],
            )
        return added is not None

    async def _drain(self) -> None:
        failures = 0
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self.append(self._queue[0])
            except (RedisError, OSError, TimeoutError) as exc:
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    log.warning("ledger: Redis write failed (%s: %s); %d queued", type(exc).__name__, exc, self.pending)
                if self._stopping:
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                continue
            failures = 0
            self._queue.popleft()

    async def close(self) -> None:
        self._stopping = True
        self._stop.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                async with asyncio.timeout(CLOSE_FLUSH_S):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                await asyncio.wait({task})
        if self._queue:
            if self._fallback is not None:
                log.warning("ledger: %d record(s) not in Redis at shutdown; appended to %s", self.pending,
                            self._fallback.path)  # fmt: skip
                self._fallback.write_many(self._queue)
                await self._fallback.close()
            else:
                log.error("ledger: %d record(s) could not reach Redis before shutdown and are lost", self.pending)
            self._queue.clear()
        await self._client.aclose()

    async def read(self, since: float | None, until: float | None) -> list[UsageRecord]:
        # Stream ids are Redis's clock in ms at XADD, a little after the record's own `ts`: widen by a minute, then
        # filter on `ts`.
        low = "-" if since is None else str(max(0, int((since - 60) * 1000)))
        high = "+" if until is None else str(int((until + 60) * 1000))
        records: list[UsageRecord] = []
        while True:
            async with asyncio.timeout(10.0):
                batch: list[tuple[bytes, dict[bytes, bytes]]] = await self._client.xrange(  # type: ignore[assignment]
                    self._stream, low, high, count=10_000
                )
            if not batch:
                break
            records.extend(parse_lines(fields[b"r"] for _, fields in batch))
            last = batch[-1][0].decode()
            low = "(" + last
            if len(batch) < 10_000:
                break
        return dedupe(records, since, until)
