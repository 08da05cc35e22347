"""The ledger as an observer: one record per finished request, to the sink the settings pick."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from sparsegate.gateway.ledger.record import UsageRecord
from sparsegate.gateway.ledger.sinks import FileSink, LedgerSink, MemorySink, RedisSink
from sparsegate.gateway.record import Observer, RequestRecord
from sparsegate.gateway.settings import LedgerSettings, Price


class Ledger(Observer):
    """Writes a record for every request that was admitted (a refusal before admission used nothing)."""

    def __init__(self, sink: LedgerSink, prices: dict[str, Price]) -> None:
        self.sink = sink
        self.prices = prices

    def on_finish(self, record: RequestRecord) -> None:
        if record.admitted_at is None or record.tenant is None:
            return
        self.sink.write(UsageRecord.of(record))

    async def start(self) -> None:
        await self.sink.start()

    async def close(self) -> None:
        await self.sink.close()

    async def records(self, tenant: str | None, since: float | None, until: float | None) -> list[UsageRecord]:
        found = await self.sink.read(since, until)
        return [r for r in found if tenant is None or r.tenant == tenant]


def build_sink(settings: LedgerSettings, redis_url: str | None, prefix: str) -> LedgerSink:
    fsync = settings.fsync == "always"
    if redis_url:
        client = Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=1.0)
        fallback = FileSink(settings.file, fsync=fsync) if settings.file is not None else None
        return RedisSink(client, prefix=prefix, maxlen=settings.stream_maxlen, fallback=fallback)
    if settings.file is not None:
        return FileSink(Path(settings.file), fsync=fsync)
    return MemorySink()
