"""Load parsing on SGLang's real output (tests/fixtures/sglang, built by SGLang's own code) and endpoint fallback."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from sparsegate.gateway.routing.load import LoadReader, LoadSource, parse_get_load, parse_metrics, parse_v1_loads

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "sglang"
EXPECTED: dict[str, int] = json.loads((FIXTURES / "expected.json").read_text())["loads"]


@pytest.mark.parametrize("name", ["metrics_priority_dp2.txt", "metrics_plain.txt"])
def test_metrics_fixture_counts_each_queue_once(name: str) -> None:
    text = (FIXTURES / name).read_text()
    assert parse_metrics(text) == EXPECTED[name]


def test_priority_fixture_really_has_totals_and_breakdowns() -> None:
    # The fixture must hold what the parser guards against, or the test above proves nothing.
    text = (FIXTURES / "metrics_priority_dp2.txt").read_text()
    assert 'priority=""' in text and 'priority="5"' in text and 'dp_rank="1"' in text


@pytest.mark.parametrize("name", ["v1_loads.json", "v1_loads_core.json"])
def test_v1_loads_fixture(name: str) -> None:
    assert parse_v1_loads(json.loads((FIXTURES / name).read_text())) == EXPECTED[name]


def test_v1_loads_rejects_other_shapes() -> None:
    assert parse_v1_loads([{"dp_rank": 0, "num_reqs": 3}]) is None
    assert parse_v1_loads({"loads": [{"dp_rank": 0}]}) is None
    assert parse_v1_loads({"loads": "x"}) is None


def test_get_load_of_older_workers() -> None:
    assert parse_get_load([{"dp_rank": 0, "num_reqs": 3}, {"dp_rank": 1, "num_reqs": 4}]) == 7
    assert parse_get_load({"num_reqs": 2}) == 2
    assert parse_get_load({"something": "else"}) is None
    assert parse_get_load([{"num_reqs": True}]) is None
    assert parse_get_load("nonsense") is None


def test_metrics_tp_copies_of_one_scheduler_count_once() -> None:
    # --enable-metrics-for-all-schedulers: every TP rank exports the same queue.
    text = "".join(
        f'sglang:num_running_reqs{{model_name="m",tp_rank="{tp}",dp_rank="0"}} 3.0\n'
        f'sglang:num_queue_reqs{{model_name="m",tp_rank="{tp}",dp_rank="0"}} 1.0\n'
        for tp in range(4)
    )
    assert parse_metrics("# TYPE sglang:num_running_reqs gauge\n" + text) == 4


def test_metrics_breakdown_alone_is_summed() -> None:
    text = (
        'sglang:num_running_reqs{model_name="m",priority="1"} 2.0\n'
        'sglang:num_running_reqs{model_name="m",priority="2"} 3.0\n'
    )
    assert parse_metrics(text) == 5
    assert parse_metrics("# nothing here\n") is None


class Worker:
    """One fake worker serving only the load endpoints listed."""

    def __init__(self, serves: set[LoadSource]) -> None:
        self.serves = serves
        self.calls: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode()
        self.calls.append(target)
        source = next((s for s in LoadSource if s.value == target), None)
        if source is None or source not in self.serves:
            return httpx.Response(404)
        if source is LoadSource.METRICS:
            return httpx.Response(200, text=(FIXTURES / "metrics_priority_dp2.txt").read_text())
        if source is LoadSource.V1_LOADS:
            return httpx.Response(200, json=json.loads((FIXTURES / "v1_loads_core.json").read_text()))
        return httpx.Response(200, json=[{"dp_rank": 0, "num_reqs": 4, "num_waiting_reqs": 1, "num_tokens": 9}])


@pytest.mark.parametrize(
    ("serves", "source", "load"),
    [
        ({LoadSource.V1_LOADS, LoadSource.GET_LOAD, LoadSource.METRICS}, LoadSource.V1_LOADS, 10),
        ({LoadSource.GET_LOAD, LoadSource.METRICS}, LoadSource.GET_LOAD, 4),
        ({LoadSource.METRICS}, LoadSource.METRICS, 10),
    ],
    ids=["0.5.23", "older", "metrics-only"],
)
async def test_reader_tries_v1_loads_then_get_load_then_metrics(
    serves: set[LoadSource], source: LoadSource, load: int
) -> None:
    worker = Worker(serves)
    async with httpx.AsyncClient(transport=httpx.MockTransport(worker.handler)) as http:
        reader = LoadReader(http, 1.0)
        assert await reader.read("http://w:1") == load
        tried = len(worker.calls)
        assert await reader.read("http://w:1") == load
        assert worker.calls[tried:] == [source.value]  # remembered: one request per poll from then on
        assert reader.source("http://w:1") is source


async def test_reader_starts_over_when_the_remembered_endpoint_goes() -> None:
    worker = Worker({LoadSource.METRICS})
    async with httpx.AsyncClient(transport=httpx.MockTransport(worker.handler)) as http:
        reader = LoadReader(http, 1.0)
        assert await reader.read("http://w:1") == 10
        worker.serves = {LoadSource.V1_LOADS}  # upgraded to 0.5.23 without --enable-metrics
        assert await reader.read("http://w:1") == 10
        assert reader.source("http://w:1") is LoadSource.V1_LOADS
        worker.serves = set()
        assert await reader.read("http://w:1") is None
        assert reader.source("http://w:1") is None


async def test_reader_gives_none_on_errors_and_keeps_the_endpoint() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/loads":
            return httpx.Response(503)
        raise AssertionError("a 503 must not move on to the next endpoint")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        reader = LoadReader(http, 1.0)
        assert await reader.read("http://w:1") is None
        assert reader.source("http://w:1") is LoadSource.V1_LOADS

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{not json")

    async with httpx.AsyncClient(transport=httpx.MockTransport(broken)) as http:
        assert await LoadReader(http, 1.0).read("http://w:1") is None
