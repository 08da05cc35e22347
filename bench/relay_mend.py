"""What mending SGLang 0.5.23's stream into OpenAI's shape costs the relay, per event.

Events are SGLang's own (tests/fixtures/sglang, built by its serving code), plus a tool-call delta as pydantic
writes it (`delta.role: null`). Each row times the relay's per-event work on that kind of event: the tally alone
(what the relay did before, `StreamTally.take`), and the tally followed by the mend (`Mender.event`: the n > 1
id rewrite and the removal of `role: null` / `*_tokens_details: null`). The difference is the mend's cost.

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
        started = time.perf_counter_ns()
        for _ in range(rounds):
            fn(data)
        best = min(best, (time.perf_counter_ns() - started) / rounds)
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
    print(f"{'event':<40} {'bytes':>6} {'tally ns':>9} {'tally+mend ns':>14} {'mend ns':>8}")
    for label, data, n in cases:
        mend = Mender("gw-1", n).event

        def tally_only(d: bytes) -> object:
            return StreamTally(wants_usage=True).take(d)

        def tally_and_mend(d: bytes, mend: Callable[[bytes], bytes] = mend) -> object:
            out = StreamTally(wants_usage=True).take(d)
            return mend(out) if out is not None else None

        base = per_call_ns(tally_only, data, args.rounds)
        both = per_call_ns(tally_and_mend, data, args.rounds)
        print(f"{label:<40} {len(data):>6} {base:>9.0f} {both:>14.0f} {both - base:>8.0f}")


if __name__ == "__main__":
    main()
