"""Requests through the gateway in process, then the ledger export and the budget's 429, over HTTP."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx

from sparsegate.gateway.settings import hash_api_key
from tests.gateway.admin.support import ACME_KEY, ADMIN_KEY, MODEL, bearer, running, settings

ADMIN = bearer(ADMIN_KEY)
ASK: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def _chat(client: httpx.AsyncClient, key: str, **extra: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=ASK | extra, headers=bearer(key))


async def test_the_ledger_exports_what_the_requests_used(tmp_path: Path) -> None:
    config = settings(
        ledger={"file": str(tmp_path / "ledger.jsonl"), "prices": {MODEL: {"input_per_1k": 1.0, "output_per_1k": 2.0}}}
    )
    async with running(config) as (_, client):
        answers = [(await _chat(client, ACME_KEY)).json() for _ in range(3)]
        refused = await client.post("/v1/chat/completions", json=ASK | {"model": "nope"}, headers=bearer(ACME_KEY))
        assert refused.status_code == 404

        export = await client.get("/admin/v1/usage", params={"tenant": "acme"}, headers=ADMIN)
        assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in export.text.splitlines()]
        assert len(lines) == 3  # the 404 was never admitted: nothing used, nothing recorded
        assert sum(line["prompt_tokens"] for line in lines) == sum(a["usage"]["prompt_tokens"] for a in answers)
        assert sum(line["completion_tokens"] for line in lines) == sum(a["usage"]["completion_tokens"] for a in answers)
        first = lines[0]
        assert first["key_id"].startswith("cfg-") and first["status"] == 200 and first["pool"] == "p"
        assert first["spend"] == (first["prompt_tokens"] * 1.0 + first["completion_tokens"] * 2.0) / 1000

        as_csv = await client.get("/admin/v1/usage", headers=ADMIN | {"accept": "text/csv"})
        assert as_csv.headers["content-type"].startswith("text/csv")
        assert len(list(csv.DictReader(io.StringIO(as_csv.text)))) == 3
        by_param = await client.get("/admin/v1/usage", params={"format": "csv", "tenant": "beta"}, headers=ADMIN)
        assert by_param.text.splitlines()[1:] == []

        later = await client.get("/admin/v1/usage", params={"since": "2999-01-01"}, headers=ADMIN)
        assert later.text == ""
        bad = await client.get("/admin/v1/usage", params={"since": "yesterday"}, headers=ADMIN)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
        assert (await client.get("/admin/v1/usage")).status_code == 401


async def test_a_spent_budget_answers_insufficient_quota_that_must_not_be_retried() -> None:
    async with running(settings()) as (_, client):
        await client.post("/admin/v1/tenants", json={"name": "beta", "models": [MODEL]}, headers=ADMIN)
        key = (await client.post("/admin/v1/tenants/beta/keys", json={"budgets": {"tokens_per_day": 30}},
                                 headers=ADMIN)).json()["key"]  # fmt: skip
        assert (await _chat(client, key)).status_code == 200
        spent = None
        for _ in range(30):
            response = await _chat(client, key)
            if response.status_code != 200:
                spent = response
                break
        assert spent is not None and spent.status_code == 429
        error = spent.json()["error"]
        assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
        assert "tokens per day" in error["message"] and "resets at" in error["message"]
        assert spent.headers["x-should-retry"] == "false" and "retry-after" not in spent.headers
        assert (await _chat(client, ACME_KEY)).status_code == 200  # another tenant is untouched


async def test_a_budget_set_through_the_api_takes_effect_at_once() -> None:
    async with running(settings()) as (_, client):
        assert (await _chat(client, ACME_KEY)).status_code == 200
        tight = {"name": "acme", "models": [MODEL], "budgets": {"tokens_per_month": 1}}
        assert (await client.post("/admin/v1/tenants", json=tight, headers=ADMIN)).status_code == 200
        response = await _chat(client, ACME_KEY)
        assert response.status_code == 429 and "tokens per month" in response.json()["error"]["message"]
        assert hash_api_key(ACME_KEY) not in response.text


async def test_the_ledger_records_the_workers_cached_tokens_streamed_or_not() -> None:
    async with running(settings(), enable_cache_report=True) as (_, client):
        long_prompt = {"messages": [{"role": "user", "content": "the same long question " * 40}]}
        worker_cached = []
        for stream in (False, True, False):
            extra: dict[str, Any] = {"stream": stream} | long_prompt
            if stream:
                extra["stream_options"] = {"include_usage": True}
            response = await _chat(client, ACME_KEY, **extra)
            usage = json.loads(response.text.split("data: ")[-2])["usage"] if stream else response.json()["usage"]
            worker_cached.append(usage["prompt_tokens_details"]["cached_tokens"])
        assert worker_cached[0] == 0 and worker_cached[1] > 0  # the prefix is cached after the first request
        export = await client.get("/admin/v1/usage", headers=ADMIN)
        assert [json.loads(line)["cached_tokens"] for line in export.text.splitlines()] == worker_cached
