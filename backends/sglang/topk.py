"""sglang 0.5.23's unfused DSA top-k, routed to `sparsegate.kernels.dsa.topk_indices`.

With `--dsa-topk-backend torch` and `SGLANG_DSA_FUSE_TOPK=false`, every top-k of the indexer goes through
`DSATopKBackend.topk_func` -> `_topk_unfused(score, lengths, topk, row_starts=..., topk_op=torch.topk,
topk_op_kwargs={"dim": -1})` in `sglang/srt/layers/attention/dsa/dsa_topk_backend.py`. It returns, per row, the
positions of the `topk` largest scores in `[row_starts, row_starts + lengths)`, relative to `row_starts`, int32,
-1 padded. The backend then maps them to slots (`transform_index_page_table_*`).

The plugin wraps `_topk_unfused` (HookRegistry AROUND): calls made with `torch.topk` come here; the flashinfer
backend, which passes `flashinfer.top_k`, keeps its own path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from sparsegate.backends.sglang.kernels import topk_indices

Tensor = Any


def topk_from_row_starts(score: Tensor, lengths: Tensor, topk: int, row_starts: Tensor | None = None) -> Tensor:
    """`_topk_unfused`'s result for the torch backend: int32 [R, topk], positions relative to `row_starts`."""
    lengths = lengths.to(torch.int32)
    if row_starts is not None:
        # Shift each row so that its window starts at column 0, which is what topk_indices reads. A gather over
        # the full width: its shape depends on shapes only, so decode stays CUDA-graph safe.
        width = score.shape[1]
        columns = row_starts.to(torch.int64).unsqueeze(1) + torch.arange(width, device=score.device).unsqueeze(0)
        score = score.gather(1, columns.clamp_(max=max(width - 1, 0)))
    return topk_indices(score.float(), lengths, topk)


def unfused_topk(
    original: Callable[..., Tensor],
    score: Tensor,
    lengths: Tensor,
    topk: int,
    row_starts: Tensor | None = None,
    topk_op: Callable[..., Any] = torch.topk,
    topk_op_kwargs: Mapping[str, object] | None = None,
) -> Tensor:
    """AROUND hook for `dsa_topk_backend._topk_unfused`."""
    if topk_op is not torch.topk:
        return original(score, lengths, topk, row_starts=row_starts, topk_op=topk_op, topk_op_kwargs=topk_op_kwargs)
    return topk_from_row_starts(score, lengths, topk, row_starts)
