"""The C upstream and load generator together, on loopback: they must count what they serve exactly, since every
benchmark figure is divided by those counts. Skipped where gcc or taskset is missing."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import clients
import pytest
import rig

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("taskset") is None, reason="needs gcc and taskset"
)


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return rig.build_helpers(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def up(helpers: dict[str, Path], tmp_path: Path) -> Iterator[rig.Upstream]:
    with rig.upstream(helpers, tmp_path) as upstream:
        yield upstream


def test_streams_are_counted_event_by_event(helpers: dict[str, Path], up: rig.Upstream, tmp_path: Path) -> None:
    out = clients.run_loadgen(helpers, up.port, clients.chat_body(5, True), tmp_path, conns=4, once=True)
    assert out["ok"] == 4
    assert out["status"] == {"200": 4}
    assert out["content_events"] == 20
    assert out["tokens"] == 20
    assert out["ttft_ms"]["n"] == 4
    assert out["gap_ms"]["n"] == 16  # four gaps per five-chunk stream
    stats = up.stats()
    assert (stats["streams"], stats["events"], stats["completed"]) == (4, 20, 4)


def test_non_stream_answers_and_request_ids(helpers: dict[str, Path], up: rig.Upstream, tmp_path: Path) -> None:
    out = clients.run_loadgen(
        helpers, up.port, clients.chat_body(3, False), tmp_path, conns=3, once=True, request_ids="t-"
    )
    assert out["ok"] == 3
    assert out["latency_ms"]["n"] == 3
    assert out["content_events"] == 0
    assert sorted(s[0] for s in out["streams"]) == [0, 1, 2]
    assert up.stats()["nonstream"] == 3


def test_dropped_streams_are_logged_on_both_sides(helpers: dict[str, Path], up: rig.Upstream, tmp_path: Path) -> None:
    up.pace(5)
    out = clients.run_loadgen(
        helpers, up.port, clients.chat_body(200, True), tmp_path, conns=4, once=True, drop_every=2, drop_after=2
    )
    dropped = {d[1]: d for d in out["drops"]}
    assert len(dropped) == 2
    assert all(d[3] >= 2 for d in dropped.values())  # closed after 2 + (index % 16) content events
    assert out["ok"] == 2  # the other two ran to the end
    deadline = time.monotonic() + 10  # the upstream sees the close a moment after the client made it
    while time.monotonic() < deadline and len(up.stats()["closes"]) < 2:
        time.sleep(0.05)
    closes = {c[0]: c for c in up.stats()["closes"]}
    assert set(closes) == set(dropped)
    for rid, (_index, _rid, t_close, _events) in dropped.items():
        assert closes[rid][1] >= t_close  # one clock on both sides


def test_abort_request_ends_the_stream_and_is_timestamped(
    helpers: dict[str, Path], up: rig.Upstream, tmp_path: Path
) -> None:
    import json
    import socket

    up.pace(50)
    body = json.dumps({**clients.chat_body(100, True), "rid": "rid-abort-me"}).encode()
    with socket.create_connection(("127.0.0.1", up.port)) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert b"rid-abort-me" in conn.recv(65536)
        abort = b'{"rid": "rid-abort-me"}'
        with socket.create_connection(("127.0.0.1", up.port)) as ctl:
            ctl.sendall(
                b"POST /abort_request HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(abort), abort)
            )
            assert ctl.recv(4096).startswith(b"HTTP/1.1 200")
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = conn.recv(65536)
            assert chunk, "the stream ended without its terminator"
            rest += chunk
    assert b'"finish_reason":"abort"' in rest and b"data: [DONE]" in rest
    stats = up.stats()
    assert [a[0] for a in stats["aborts"]] == ["rid-abort-me"]
    assert stats["aborts"][0][2] == 1  # found while still streaming
    assert stats["aborts_found"] == 1


def test_wrk_output_is_parsed_from_a_real_run(up: rig.Upstream, tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    out = clients.run_wrk(up.port, clients.chat_body(2, False), 2, 1, tmp_path)
    assert out["requests"] > 0
    assert out["non_2xx"] == 0
    assert (
        out["requests"] <= up.stats()["nonstream"]
    )  # wrk counts answers; requests cut at its end reached the upstream too


def test_error_answers_are_counted_with_their_marker(
    helpers: dict[str, Path], up: rig.Upstream, tmp_path: Path
) -> None:
    out = clients.run_loadgen(
        helpers, up.port, clients.chat_body(1, False), tmp_path, conns=2, once=True, path="/nothing", marker="NOT FOUND"
    )
    assert out["status"] == {"404": 2}
    assert out["ok"] == 0
    assert out["marked"] == 2  # the marker matches in any case
    assert out["non200_latency_ms"]["n"] == 2
    assert out["retry_after"] == 0
