"""What mending SGLang 0.5.23's stream into OpenAI's shape costs the relay, per event.

Events are SGLang's own (tests/fixtures/sglang, built by its serving code), plus a tool-call delta as pydantic
writes it (`delta.role: null`). Each row times, per event of that kind, the tally the relay runs on every event
anyway (`StreamTally.take`) and the mend added after it (`Mender.event`: the n > 1 id rewrite and the removal of
`role: null` / `*_tokens_details: null`). Best of five runs of `--rounds` calls each, in CPU time of this thread
(`thread_time_ns`), so other processes on a busy machine do not count.

    .venv/bin/python bench/relay_mend.py [--rounds 200000]

Prints a table; the figures go into docs/benchmarks.md by hand, with the date and the machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from sparsegate.gateway.relay.mend import Mender
from sparsegate.gateway.sse import StreamTally, event_data

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sglang"
TOOL_DELTA = (
    b'{"id":"gw-1_1","object":"chat.completion.chunk","created":1764547200,"model":"glm-5.1","choices":[{"index":1,'
    b'"delta":{"role":null,"content":null,"reasoning_content":null,"tool_calls":[{"id":null,"index":0,"type":'
    b'"function","function":{"name":null,"arguments":"{\\"city\\": "}}]},"logprobs":null,"finish_reason":null,'
    b'"matched_stop":null}],"usage":null}'
)


def events(name: str) -> list[bytes]:
    raw = (FIXTURES / name).read_bytes()
    out = [event_data(block) for block in raw.split(b"\n\n") if block.strip()]
    return [d for d in out if d is not None and d != b"[DONE]"]


def per_call_ns(fn: Callable[[bytes], object], data: bytes, rounds: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.thread_time_ns()
        for _ in range(rounds):
            fn(data)
        best = min(best, (time.thread_time_ns() - started) / rounds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200_000)
    args = parser.parse_args()
    n2 = events("chat_n2.sse")
    cases = [
        ("content delta, n=1", events("chat_stop.sse")[1], 1),
        ("content delta, n=2 (id rewritten)", n2[1], 2),
        ("tool-call delta, n=2 (id, role: null)", TOOL_DELTA, 2),
        ("usage chunk, n=2 (id, details: null)", n2[-1], 2),
    ]
    print(f"{'event':<40} {'bytes':>6} {'tally ns':>9} {'mend ns':>8} {'mend/tally':>10}")
    for label, data, n in cases:
        tally = StreamTally(wants_usage=True)  # reused: `take` keeps no per-event state that changes its work
        base = per_call_ns(tally.take, data, args.rounds)
        mend = per_call_ns(Mender("gw-1", n > 1).event, data, args.rounds)
        print(f"{label:<40} {len(data):>6} {base:>9.0f} {mend:>8.0f} {mend / base:>9.0%}")


if __name__ == "__main__":
    main()
