"""Fair share of a saturated pool (issue 14): does a flooding tenant still leave the others a fast first token?

Setup, as the issue measured it: one `sparsegate sim` worker with `--max-running 8 --itl-ms 20`, a gateway with two
tenants and no limits, every request streams 50 tokens. Tenant A keeps 64 streams open (closed loop: each finished
stream is replaced at once); tenant B sends 2 requests a second (open loop, evenly spaced). Scenarios:

- `b-alone`      B only: its TTFT on an idle pool;
- `a-alone`      A only: what the pool delivers when one tenant fills it (the measured capacity);
- `fifo`         A's flood and B, fair queuing off: everything queues on the worker, first come first served;
- `priority`     as `fifo`, with SGLang-style priority: the worker runs `--enable-priority-scheduling`, B has
                 priority 10 (A none), the gateway passes it on;
- `fair`         A's flood and B, fair queuing on (the default, headroom 0);
- `fair-h1`      as `fair`, each worker may queue one request beyond max_running (`fair_share.headroom: 1`);
- `fair-2rep`    as `fair`, with two gateway replicas on the one worker, A's streams and B's requests split
                 evenly between them.

B's requests are evenly spaced by default; `--poisson` sends them as a Poisson process of the same rate (even
spacing can line a request up with the end of B's own request before last).

Printed per scenario: B's TTFT (time to its first generated token) p50 / p99 / max, B's and A's tokens/s, and A's
tokens/s as a share of the pool's capacity (the theoretical `max_running x 1000 / itl` and the measured `a-alone`
figure) and of what B leaves (capacity minus B's own tokens/s).

    .venv/bin/python bench/fairness.py                      # every scenario, 20 s measured each
    .venv/bin/python bench/fairness.py --scenarios fair,fifo --duration 30 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.rig import free_port, git_commit, loadavg, machine, process, wait_http
from sparsegate.gateway.settings import hash_api_key

MODEL = "glm-5.1"
KEY_A = "sk-bench-tenant-a-0123456789"
KEY_B = "sk-bench-tenant-b-0123456789"
SCENARIOS = ("b-alone", "a-alone", "fifo", "priority", "fair", "fair-h1", "fair-2rep")


@dataclass
class Scenario:
    name: str
    flood: bool = True  # A's 64 streams
    light: bool = True  # B's 2 req/s
    fair: bool = True
    headroom: int = 0
    priority: bool = False
    replicas: int = 1


def scenario(name: str) -> Scenario:
    return {
        "b-alone": Scenario(name, flood=False),
        "a-alone": Scenario(name, light=False),
        "fifo": Scenario(name, fair=False),
        "priority": Scenario(name, fair=False, priority=True),
        "fair": Scenario(name),
        "fair-h1": Scenario(name, headroom=1),
        "fair-2rep": Scenario(name, replicas=2),
    }[name]


@dataclass
class Tally:
    """What one client process saw inside the measured window (times are `time.monotonic()`, system-wide)."""

    window: tuple[float, float] = (0.0, 0.0)
    tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def inside(self, t: float) -> bool:
        return self.window[0] <= t < self.window[1]


def gateway_config(sc: Scenario, sim_url: str) -> dict[str, Any]:
    tenant_b: dict[str, Any] = {"name": "B", "api_keys": [hash_api_key(KEY_B)], "models": ["*"]}
    if sc.priority:
        tenant_b["priority"] = 10
    return {
        "tenants": [{"name": "A", "api_keys": [hash_api_key(KEY_A)], "models": ["*"]}, tenant_b],
        "pools": [{"name": "pool", "model": MODEL, "max_context": 32_768, "workers": [sim_url]}],
        "fair_share": {"enabled": sc.fair, "headroom": sc.headroom},
        "telemetry": {"log_requests": False},
    }


def request_body(tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
        }
    )


def pct(values: list[float], q: float) -> float:
    """The q-quantile by the nearest-rank rule."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


CONTENT, EMPTY_CONTENT = b'"content":"', b'"content":""'


async def one_stream(http: aiohttp.ClientSession, url: str, key: str, body: bytes, tally: Tally) -> None:
    """One streamed request; a generated token is an event whose delta has non-empty content (a byte search: the
    flood's client must stay cheap, it shares the machine with what it measures)."""
    sent = time.monotonic()
    first = True
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        async with http.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
            if resp.status != 200:
                tally.errors[str(resp.status)] = tally.errors.get(str(resp.status), 0) + 1
                await resp.read()
                return
            async for line in resp.content:
                if CONTENT not in line or EMPTY_CONTENT in line:
                    continue
                now = time.monotonic()
                if first:
                    first = False
                    if tally.inside(sent):
                        tally.ttft_s.append(now - sent)
                if tally.inside(now):
                    tally.tokens += 1
    except aiohttp.ClientError as exc:
        name = type(exc).__name__
        tally.errors[name] = tally.errors.get(name, 0) + 1


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None, sock_read=120)
    )


async def flood(urls: list[str], streams: int, tokens: int, window: tuple[float, float]) -> Tally:
    """Tenant A: `streams` closed loops, each starting a new stream as soon as its last one ends."""
    tally = Tally(window)
    body = request_body(tokens)
    async with session() as http:

        async def loop(i: int) -> None:
            while time.monotonic() < window[1]:
                await one_stream(http, urls[i % len(urls)], KEY_A, body, tally)

        loops = [asyncio.create_task(loop(i)) for i in range(streams)]
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        for task in loops:  # streams still open at the end are cut
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    return tally


async def light(urls: list[str], rps: float, tokens: int, window: tuple[float, float], poisson: bool) -> Tally:
    """Tenant B: `rps` requests a second, evenly spaced or as a Poisson process (open loop); those sent in the
    window are awaited."""
    tally = Tally(window)
    body = request_body(tokens)
    rng = random.Random(14)
    async with session() as http:
        sent: list[asyncio.Task[None]] = []
        due = time.monotonic()
        i = 0
        while time.monotonic() < window[1]:
            sent.append(asyncio.create_task(one_stream(http, urls[i % len(urls)], KEY_B, body, tally)))
            i += 1
            due += rng.expovariate(rps) if poisson else 1.0 / rps
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        await asyncio.gather(*sent, return_exceptions=True)
    return tally


def run_light(urls: list[str], rps: float, tokens: int, window: tuple[float, float], poisson: bool) -> Tally:
    return asyncio.run(light(urls, rps, tokens, window, poisson))


def drive(sc: Scenario, urls: list[str], args: argparse.Namespace) -> tuple[Tally, Tally]:
    """Run A's flood here and B's requests in a process of their own (so neither client's lag is the other's)."""
    start = time.monotonic() + 0.5
    window = (start + args.warmup, start + args.warmup + args.duration)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        b_future = pool.submit(run_light, urls, args.b_rps, args.tokens, window, args.poisson) if sc.light else None
        a = asyncio.run(flood(urls, args.a_streams, args.tokens, window)) if sc.flood else Tally(window)
        b = b_future.result() if b_future is not None else Tally(window)
    return a, b


@contextlib.contextmanager
def stack_for(sc: Scenario, args: argparse.Namespace, workdir: Path) -> Iterator[list[str]]:
    py = sys.executable
    with ExitStack() as stack:
        sim_port = free_port()
        sim_argv = [py, "-m", "sparsegate.backends.sim", "--host", "127.0.0.1", "--port", str(sim_port),
                    "--model", MODEL, "--max-context", "32768", "--max-running", str(args.max_running),
                    "--itl-ms", str(args.itl_ms)]  # fmt: skip
        if sc.priority:
            sim_argv.append("--enable-priority-scheduling")
        sim = stack.enter_context(process(f"{sc.name}-sim", sim_argv, workdir))
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_http(sim_url + "/health", sim, 30)
        config = workdir / f"{sc.name}.yaml"
        config.write_text(yaml.safe_dump(gateway_config(sc, sim_url)))
        urls = []
        for i in range(sc.replicas):
            port = free_port()
            argv = [py, "-m", "sparsegate.gateway.cli", "serve", "--config", str(config), "--host", "127.0.0.1",
                    "--port", str(port), "--log-level", "warning"]  # fmt: skip
            gw = stack.enter_context(process(f"{sc.name}-gateway{i}", argv, workdir))
            wait_http(f"http://127.0.0.1:{port}/health/ready", gw, 60)
            urls.append(f"http://127.0.0.1:{port}")
        time.sleep(1.0)  # the first capacity polls
        yield urls


def summarize(
    sc: Scenario, a: Tally, b: Tally, args: argparse.Namespace, measured_capacity: float | None
) -> dict[str, Any]:
    seconds = a.window[1] - a.window[0]
    a_tps, b_tps = a.tokens / seconds, b.tokens / seconds
    theoretical = args.max_running * 1000.0 / args.itl_ms
    ttft = [t * 1000 for t in b.ttft_s]
    row: dict[str, Any] = {
        "scenario": sc.name,
        "b_requests": len(ttft),
        "b_ttft_p50_ms": round(pct(ttft, 0.5), 1) if ttft else None,
        "b_ttft_p99_ms": round(pct(ttft, 0.99), 1) if ttft else None,
        "b_ttft_max_ms": round(max(ttft), 1) if ttft else None,
        "a_tokens_per_s": round(a_tps, 1),
        "b_tokens_per_s": round(b_tps, 1),
        "a_share_of_pool": round(a_tps / theoretical, 3),
        "a_share_of_what_b_leaves": round(a_tps / (theoretical - b_tps), 3) if sc.flood else None,
        "errors": {**{f"A:{k}": v for k, v in a.errors.items()}, **{f"B:{k}": v for k, v in b.errors.items()}},
        "loadavg": loadavg(),
    }
    if measured_capacity:
        row["a_share_of_measured_capacity"] = round(a_tps / measured_capacity, 3)
        row["a_share_of_measured_left_by_b"] = round(a_tps / (measured_capacity - b_tps), 3) if sc.flood else None
    return row


def show(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    theoretical = args.max_running * 1000.0 / args.itl_ms
    slot_free_ms = args.tokens * args.itl_ms / args.max_running
    print(
        f"\npool capacity (theoretical): {theoretical:.0f} tokens/s = {args.max_running} slots x 1000 / "
        f"{args.itl_ms:g} ms; mean time for one slot to free up: {slot_free_ms:.0f} ms"
    )
    header = ("scenario", "B n", "B TTFT p50", "p99", "max", "A tok/s", "B tok/s", "A/pool", "A/left by B",
              "A/meas.", "A/meas. left", "errors")  # fmt: skip
    print(" | ".join(header))
    for r in rows:

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f} ms"

        def frac(v: float | None) -> str:
            return "-" if v is None else f"{v * 100:.1f} %"

        print(" | ".join([
            r["scenario"], str(r["b_requests"]), ms(r["b_ttft_p50_ms"]), ms(r["b_ttft_p99_ms"]), ms(r["b_ttft_max_ms"]),
            f"{r['a_tokens_per_s']:.0f}", f"{r['b_tokens_per_s']:.0f}", frac(r["a_share_of_pool"]),
            frac(r["a_share_of_what_b_leaves"]), frac(r.get("a_share_of_measured_capacity")),
            frac(r.get("a_share_of_measured_left_by_b")), json.dumps(r["errors"]) if r["errors"] else "",
        ]))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated, from: " + ", ".join(SCENARIOS)
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--a-streams", type=int, default=64)
    parser.add_argument("--b-rps", type=float, default=2.0)
    parser.add_argument("--poisson", action="store_true", help="B's requests as a Poisson process (default: even)")
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--max-running", type=int, default=8)
    parser.add_argument("--itl-ms", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(), "machine": machine(),
            "loadavg_before": loadavg(), "argv": sys.argv[1:]}  # fmt: skip
    print(json.dumps(meta))
    rows: list[dict[str, Any]] = []
    measured: float | None = None
    with tempfile.TemporaryDirectory(prefix="fairness-") as tmp:
        for name in names:
            sc = scenario(name)
            print(f"-- {name}", flush=True)
            with stack_for(sc, args, Path(tmp)) as urls:
                a, b = drive(sc, urls, args)
            row = summarize(sc, a, b, args, measured)
            if name == "a-alone":
                measured = row["a_tokens_per_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    show(rows, args)
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
