"""The simulated worker's prefix cache: time to first token and `cached_tokens` for a shared prompt prefix.

An in-process sim (ASGI, no sockets) with a steep prefill cost, so the effect is plain: a prompt whose prefix
the worker holds prefills only its uncached tail, as SGLang's radix cache does; a prompt with another prefix
pays the whole prefill again. This is what makes prefix-affinity routing show in TTFT against the sim.

    .venv/bin/python bench/sim_prefix_cache.py [--per-1k-ms 100] [--repeat 600]

Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx

from sparsegate.backends.sim import SimConfig, SimState, create_app


async def first_token(client: httpx.AsyncClient, system: str, question: str) -> tuple[float, dict[str, int]]:
    body = {
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft = float("nan")
    usage: dict[str, int] = {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if ttft != ttft and any(c["delta"].get("content") for c in chunk["choices"]):
                ttft = (time.perf_counter() - started) * 1000
            if chunk.get("usage"):
                usage = {"prompt": chunk["usage"]["prompt_tokens"]}
                usage["cached"] = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
    return ttft, usage


async def main(per_1k_ms: float, repeat: int) -> None:
    config = SimConfig(
        max_context=65536, ttft_base_ms=5.0, ttft_per_1k_prompt_tokens_ms=per_1k_ms, enable_cache_report=True
    )
    state = SimState.build(config)
    transport = httpx.ASGITransport(app=create_app(config, state=state))
    shared = "You are a careful assistant. " * repeat
    other = "Answer tersely and cite sources. " * repeat
    rows = [
        ("first (cold)", shared, "q1"),
        ("same prefix, new question", shared, "q2"),
        ("same prefix again", shared, "q3"),
        ("another prefix (cold)", other, "q1"),
    ]
    print(f"{'request':<28}{'prompt':>8}{'cached':>8}{'ttft_ms':>9}")
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        for name, system, question in rows:
            ttft, usage = await first_token(client, system, question)
            print(f"{name:<28}{usage['prompt']:>8}{usage['cached']:>8}{ttft:>9.1f}")
    await state.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-1k-ms", type=float, default=100.0, help="prefill cost per 1k uncached tokens")
    parser.add_argument("--repeat", type=int, default=600, help="how many times the system sentence repeats")
    args = parser.parse_args()
    asyncio.run(main(args.per_1k_ms, args.repeat))
