"""Every log line is one JSON object through one formatter, with the request id of the request it belongs to."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from sparsegate.gateway.observability.logs import JsonFormatter, configure_logging, request_id_var
from tests.gateway.admin.support import ACME_KEY, MODEL, bearer, running, settings


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The process's logging as `sparsegate serve` sets it up, written to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    # Another test's uvicorn (log_level="warning") may have left its loggers' levels set; `serve` sets them from
    # --log-level, as uvicorn.run does.
    uvicorn_levels = {name: logging.getLogger(name).level for name in ("uvicorn", "uvicorn.error")}
    for name in uvicorn_levels:
        logging.getLogger(name).setLevel(logging.NOTSET)
    configure_logging("info")
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in uvicorn_levels.items():
        logging.getLogger(name).setLevel(level)


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_every_logger_goes_through_the_json_formatter(captured: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("sparsegate.anything").warning("plain %s", "text")
    logging.getLogger("httpx").info("HTTP Request: GET http://worker/health")  # quiet below WARNING
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("sparsegate.x").exception("failed")
    out = lines(captured)
    assert [(line["logger"], line["level"]) for line in out] == [
        ("uvicorn.error", "info"),
        ("sparsegate.anything", "warning"),
        ("sparsegate.x", "error"),
    ]
    assert out[0]["message"] == "Started server process [42]" and isinstance(out[0]["ts"], float)
    assert "ValueError: boom" in str(out[2]["exception"])


def test_the_request_id_comes_from_the_context() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("sparsegate.t", logging.INFO, __file__, 1, "hello", None, None)
    assert "request_id" not in json.loads(formatter.format(record))
    token = request_id_var.set("req-abc")
    try:
        assert json.loads(formatter.format(record))["request_id"] == "req-abc"
    finally:
        request_id_var.reset(token)


async def test_lines_logged_while_serving_a_request_carry_its_id(captured: io.StringIO) -> None:
    async with running(settings(telemetry={"log_requests": True})) as (_, client):
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        headers = bearer(ACME_KEY) | {"x-request-id": "req-logged-1"}
        assert (await client.post("/v1/chat/completions", json=body, headers=headers)).status_code == 200
    request_lines = [line for line in lines(captured) if line.get("event") == "request"]
    assert len(request_lines) == 1
    line = request_lines[0]
    assert line["request_id"] == "req-logged-1" and line["tenant"] == "acme" and line["logger"] == "sparsegate.requests"
    assert ACME_KEY not in captured.getvalue()
