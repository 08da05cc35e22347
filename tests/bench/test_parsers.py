"""The benchmark scripts' parsers and reporters, on captured or synthetic output (no timing is asserted)."""

from __future__ import annotations

import os

import clients
import overload
import peers_report
import pytest
import rig

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:18181/nothing
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.64ms    7.53ms  52.02ms   88.66%
    Req/Sec    13.91k     9.60k   29.15k    60.00%
  Latency Distribution
     50%   98.00us
     75%    3.32ms
     90%   12.44ms
     99%    1.20s
  13918 requests in 1.04s, 1.33MB read
  Socket errors: connect 0, read 2, write 1, timeout 3
  Non-2xx or 3xx responses: 13918
Requests/sec:  13400.72
Transfer/sec:      1.28MB
"""


def test_parse_wrk_converts_every_unit_and_counts_errors() -> None:
    parsed = clients.parse_wrk(WRK_OUTPUT)
    assert parsed["p50_ms"] == pytest.approx(0.098)
    assert parsed["p75_ms"] == pytest.approx(3.32)
    assert parsed["p99_ms"] == pytest.approx(1200.0)
    assert parsed["requests"] == 13918
    assert parsed["duration_s"] == pytest.approx(1.04)
    assert parsed["rps"] == pytest.approx(13400.72)
    assert parsed["non_2xx"] == 13918
    assert parsed["socket_errors"] == 6


def test_parse_wrk_refuses_output_without_latency_distribution() -> None:
    with pytest.raises(ValueError, match="latency"):
        clients.parse_wrk(WRK_OUTPUT.replace("Latency Distribution", "Latency"))


def test_parse_loadgen_requires_its_fields() -> None:
    with pytest.raises(ValueError, match="gap_ms"):
        clients.parse_loadgen(
            '{"ok": 1, "errors": 0, "incomplete": 0, "status": {}, "latency_ms": {}, "ttft_ms": {}, "rps": 1}'
        )


def test_pct_is_nearest_rank_and_nan_when_empty() -> None:
    values = [float(v) for v in range(1, 101)]
    assert clients.pct(values, 0.5) == 51.0
    assert clients.pct(values, 0.99) == 100.0
    assert clients.pct([], 0.5) != clients.pct([], 0.5)  # NaN


def test_tree_cpu_counts_this_process_and_nothing_for_a_missing_one() -> None:
    assert rig.tree_cpu_s(os.getpid()) > 0
    assert rig.tree_cpu_s(2**22 + 12345) == 0.0


def _series(p50: float, p99: float) -> dict[str, float]:
    return {"n": 100, "p50": p50, "p90": p99, "p99": p99, "max": p99, "mean": p50}


def _target(p50: float, p99: float, rps: float, cpu_ms: float | None, ttft: float, gap99: float) -> dict[str, object]:
    ns = {
        str(c): {
            "p50_ms": p50,
            "p99_ms": p99,
            "rps": rps,
            "cpu_ms_per_request": cpu_ms,
            "non_2xx": 0,
            "socket_errors": 0,
        }
        for c in (1, 16, 64)
    }
    stream = {"rps": rps / 2, "errors": 0, "incomplete": 0, "status": {"200": 10}, "cpu_ms_per_request": cpu_ms}
    return {
        "nonstream": ns,
        "stream64": stream,
        "ttft": {**stream, "ttft_ms": _series(ttft, ttft * 2)},
        "paced64": {**stream, "cpu_us_per_event": None if cpu_ms is None else cpu_ms * 100},
        "paced256": {**stream, "gap_ms": _series(20.0, gap99)},
    }


def _results() -> dict[str, object]:
    return {
        "date": "2026-12-01 17:00 UTC",
        "commit": "abc1234",
        "command": "python bench/peers.py",
        "machine": {"cores": 2, "cpu": "test", "mem_gib": 24, "python": "3.11"},
        "quiet": {"loadavg": [0.5, 0.5, 0.5]},
        "loadavg_end": [0.6, 0.5, 0.5],
        "plan": {"stream_chunks": 16},
        "targets": {
            "direct": _target(1.0, 2.0, 10000, None, 1.0, 21.0),
            "sglang-router": _target(1.4, 3.0, 4000, 0.25, 1.5, 30.0),
            "sparsegate": _target(5.0, 9.0, 1000, 0.3, 1.8, 40.0),
            "litellm": {"failed": "litellm does not serve completions after 180 s"},
        },
        "scale": {"skipped": "`sparsegate serve` on this checkout has no --workers option"},
    }


def test_peers_report_subtracts_the_direct_path_and_checks_the_targets() -> None:
    text = peers_report.render(_results())
    assert "| | direct | sglang-router | sparsegate | litellm |" in text
    assert "| added p50 / p99, non-stream c=1 (ms) | – | +0.40 / +1.00 | +4.00 / +7.00 | – |" in text
    assert "| added p99 inter-chunk gap, 256 paced streams (ms) | – | +9.00 | +19.00 | – |" in text
    assert "| answers not 200 or cut short (all runs) | 0 | 0 | 0 | failed to run |" in text
    assert "litellm failed: litellm does not serve completions" in text
    assert "| CPU per non-stream request ≤ 0.4 ms (worst of c=1/16/64) | 0.300 ms | **yes** |" in text
    assert "| added p50 at c=1 ≤ 0.5 ms | +4.00 ms | **no** |" in text
    assert "| non-stream req/s at c=64 ≥ 50 % of the Rust router's | 25% | **no** |" in text
    assert "| stream TTFT on kept-alive connections ≤ +1 ms over direct (p50) | +0.80 ms | **yes** |" in text
    assert "no --workers option" in text


def test_peers_report_scale_table() -> None:
    results = _results()
    results["scale"] = {"cpus": "0,1", "1": _target(5.0, 9.0, 1000, 0.3, 1.8, 40.0), "2": {"failed": "boom"}}
    text = peers_report.render(results)
    assert "| non-stream req/s at c=64 | 1,000 | failed |" in text


def test_metric_sum_matches_labels() -> None:
    text = (
        "# HELP sparsegate_requests_total Requests.\n"
        'sparsegate_requests_total{tenant="a",status="200"} 7.0\n'
        'sparsegate_requests_total{tenant="b",status="200"} 3.0\n'
        'sparsegate_requests_total{tenant="b",status="503"} 2.0\n'
        'sparsegate_requests_created{tenant="b",status="503"} 1.7e9\n'
        "sparsegate_worker_breaker_state 2.0\n"
    )
    assert overload.metric_sum(text, "sparsegate_requests_total", status="200") == 10.0
    assert overload.metric_sum(text, "sparsegate_requests_total") == 12.0
    assert overload.metric_sum(text, "sparsegate_worker_breaker_state") == 2.0


def test_analyse_disconnects_matches_aborts_closes_and_charges() -> None:
    raw = {
        "drops": [[0, "rid-0", 1_000_000_000, 10], [2, "rid-2", 2_000_000_000, 12]],
        "streams": [
            [0, "rid-0", 10, 0, 200],
            [1, "rid-1", 60, 1, 200],
            [2, "rid-2", 12, 0, 200],
            [3, "rid-3", 60, 1, 200],
        ],
        "status": {"200": 4},
    }
    stats = {
        "aborts": [["rid-0", 1_030_000_000, 0, -1], ["rid-0", 1_090_000_000, 0, -1]],  # the first one counts
        "closes": [["rid-0", 1_002_000_000, 10], ["rid-2", 2_004_000_000, 13]],
    }
    records = {
        "ovl-0": {"completion_tokens": 10},
        "ovl-1": {"completion_tokens": 60},
        "ovl-2": {"completion_tokens": 15},
    }
    out = overload.analyse_disconnects(raw, stats, records)
    assert out["dropped"] == 2 and out["completed"] == 2
    assert out["aborts_received"] == 1 and out["drops_without_abort"] == 1
    assert out["abort_latency_ms"]["p99"] == pytest.approx(30.0)
    assert out["upstream_close_latency_ms"]["n"] == 2
    assert out["upstream_close_latency_ms"]["p99"] == pytest.approx(4.0)
    assert out["charged_tokens"] == 85 and out["delivered_tokens"] == 82
    assert out["overcharged_streams"] == 1 and out["overcharge_max"] == 3
    assert out["streams_without_log_line"] == 1
    text = overload.render({"disconnect_phase": out})
    assert "| /abort_request received for dropped streams | 1 of 2 |" in text
    assert "| completion tokens charged / delivered | 85 / 82 |" in text


def test_runs_without_answers_give_no_figures() -> None:
    empty = WRK_OUTPUT.replace("13918 requests in", "0 requests in")
    assert clients.parse_wrk(empty)["p50_ms"] is None
    out = clients.parse_loadgen(
        '{"ok": 0, "errors": 0, "incomplete": 0, "status": {}, "rps": 0, "latency_ms": {"n": 0, "p50": 0, "p99": 0},'
        ' "ttft_ms": {"n": 0, "p50": 0, "p99": 0}, "gap_ms": {"n": 3, "p50": 20.0, "p99": 21.0}}'
    )
    assert out["ttft_ms"]["p99"] is None
    assert out["gap_ms"]["p99"] == 21.0


def test_overload_report_states_shedding_and_the_ttft_ratio() -> None:
    def run(status: dict[str, int], ttft99: float, **extra: object) -> dict[str, object]:
        return {"ok": status.get("200", 0), "errors": 0, "incomplete": 0, "unfinished": 0, "refused": 0,
                "started": sum(status.values()), "status": status, "rps": 100.0, "retry_after": status.get("503", 0),
                "marked": 0, "latency_ms": _series(5, 9), "ttft_ms": _series(2, ttft99),
                "non200_latency_ms": _series(0.8, 3.5), **extra}  # fmt: skip

    phase = {
        "unloaded": run({"200": 100}, 10.0),
        "saturation": run({"200": 500}, 50.0),
        "overload": run({"200": 1000, "503": 1000}, 18.0, offered_rps=200.0),
        "breaker_log_lines": [],
        "breaker_state_after": 0.0,
    }
    text = overload.render({"overload_phase": phase})
    assert "| answers by status | 200: 1,000, 503: 1,000 |" in text
    assert "| 503s with retry-after | 1,000 of 1,000 |" in text
    assert "| admitted p99 TTFT / unloaded p99 TTFT | 1.80x |" in text
    assert "| breaker openings logged during the run | 0 |" in text
