"""Spend from tokens, by the optional price table (`ledger.prices`, per model).

Two ways to price, which add up when both are set:
- per 1K tokens: `input_per_1k * prompt / 1000 + output_per_1k * completion / 1000`;
- per GPU-second, estimated from the tokens and the context length:
  `gpu_s = prompt / prefill_tokens_per_gpu_s + completion / decode_tokens_per_gpu_s * (1 + context / context_scale)`
  where `context` is the mean context over the decode (prompt + completion / 2): prefill is compute-bound and
  linear in the prompt; a decode step is memory-bound and grows with the context it attends to.
"""

from __future__ import annotations

from sparsegate.gateway.ledger.record import UsageRecord
from sparsegate.gateway.settings import Price


def gpu_seconds(record: UsageRecord, price: Price) -> float:
    prefill = record.prompt_tokens / price.prefill_tokens_per_gpu_s
    context = record.prompt_tokens + record.completion_tokens / 2
    decode = record.completion_tokens / price.decode_tokens_per_gpu_s * (1 + context / price.context_scale_tokens)
    return prefill + decode


def spend(record: UsageRecord, price: Price | None) -> tuple[float | None, float | None]:
    """(estimated GPU-seconds, spend) for a record; both None without a price for its model."""
    if price is None:
        return None, None
    gpu_s = gpu_seconds(record, price)
    cost = (
        price.input_per_1k * record.prompt_tokens / 1000
        + price.output_per_1k * record.completion_tokens / 1000
        + price.per_gpu_second * gpu_s
    )
    return round(gpu_s, 6), round(cost, 9)
