"""The ledger as a client downloads it: JSON lines, or CSV with a header row; spend added from the price table."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from sparsegate.gateway.ledger.prices import spend
from sparsegate.gateway.ledger.record import UsageRecord
from sparsegate.gateway.settings import Price

COLUMNS = (
    "uid", "request_id", "ts", "tenant", "key_id", "model", "pool", "endpoint", "status", "outcome",
    "prompt_tokens", "completion_tokens", "cached_tokens", "ttft_ms", "duration_ms", "gpu_seconds", "spend",
)  # fmt: skip


def rows(records: Iterable[UsageRecord], prices: Mapping[str, Price]) -> Iterable[dict[str, Any]]:
    for record in records:
        gpu_s, cost = spend(record, prices.get(record.model or ""))
        yield {**record.model_dump(), "gpu_seconds": gpu_s, "spend": cost}


def to_jsonl(records: Iterable[UsageRecord], prices: Mapping[str, Price]) -> str:
    return "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows(records, prices))


def to_csv(records: Iterable[UsageRecord], prices: Mapping[str, Price]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows(records, prices):
        writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})
    return out.getvalue()
