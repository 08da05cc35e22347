"""Adapters from sglang 0.5.23's DSA indexer calls to the sparsegate indexer kernels.

The indexer (`sglang/srt/layers/attention/dsa/dsa_indexer.py`, `Indexer._get_topk_paged` and `_get_topk_ragged`)
does not call DeepGEMM by name: it asks three resolvers in `sglang/srt/layers/attention/dsa/utils.py` for the
function, and the backend (`dsa_backend.py`) asks the same resolvers for the schedule metadata:

- `resolve_fp8_paged_mqa_logits_fn()` -> `fn(q, kv_cache, weights, context_lens, block_table, schedule_metadata,
  max_seq_len, clean_logits=False)`, DeepGEMM's `fp8_paged_mqa_logits`. Decode, MTP verify and draft extend.
- `resolve_fp8_mqa_logits_fn()` -> `fn(q, (k, k_scale), weights, ks, ke, clean_logits=False)`, DeepGEMM's
  `fp8_mqa_logits`. Prefill without speculation.
- `resolve_paged_mqa_logits_metadata_fn()` -> `fn(context_lens_2d, block_kv, num_sms)`, DeepGEMM's
  `get_paged_mqa_logits_metadata`: a split plan our kernels do not need.
- `resolve_num_sms()` imports deep_gemm unless SGLANG_FP8_PAGED_MQA_LOGITS_TORCH is set.

The plugin replaces those four resolvers (HookRegistry REPLACE, which also rebinds the names `dsa_indexer` and
`dsa_backend` imported), so every indexer call lands here. Nothing here syncs with the host: decode stays
CUDA-graph safe.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsegate.backends.sglang.kernels import paged_mqa_logits, ragged_mqa_logits

Tensor = Any  # torch is untyped for mypy here (ignore_missing_imports)

INDEX_PAGE_BYTES = 8448  # 64 keys x 128 e4m3, then 64 float32 scales (shared/DSA.md §2)


def fp8_paged_mqa_logits(
    q: Tensor,
    kv_cache: Tensor,
    weights: Tensor,
    context_lens: Tensor,
    block_table: Tensor,
    schedule_metadata: Tensor | None,
    max_seq_len: int,
    clean_logits: bool = False,
    indices: Tensor | None = None,
) -> Tensor:
    """DeepGEMM's `fp8_paged_mqa_logits` signature over `sparsegate.kernels.dsa.paged_mqa_logits`.

    q: e4m3 [B, next_n, H, 128]. kv_cache: the index-K buffer as SGLang views it, uint8 [P, 64, 1, 132]; the bytes
    are the 8448-byte struct-of-arrays page, so it is read back as [P, 8448]. weights: f32 [B * next_n, H].
    context_lens: int32 [B], [B, 1], or [B, next_n] holding each request's length in every column (how
    dsa_backend._build_paged_mqa_schedule_2d_ctx_lens builds it). Row j of a request sees keys
    [0, L - next_n + j + 1), as DeepGEMM's. `clean_logits` is moot: masked keys are always -inf, which the
    top-k treats as not visible.
    """
    del schedule_metadata, clean_logits  # our kernel needs no split plan and always writes -inf outside the window
    if indices is not None:
        raise NotImplementedError("sparsegate paged_mqa_logits does not take an index tensor (DeepGEMM's `indices`)")
    pages = kv_cache.view(torch.uint8).reshape(kv_cache.shape[0], -1)
    if pages.shape[1] != INDEX_PAGE_BYTES:
        raise ValueError(f"index-K pages must be {INDEX_PAGE_BYTES} bytes (64-token pages), got {pages.shape[1]}")
    # Column 0 of a [B, n] table is a strided view; the kernel reads lengths as a dense int32 [B].
    lens = (context_lens[:, 0] if context_lens.dim() == 2 else context_lens).to(torch.int32).contiguous()
    return paged_mqa_logits(
        q,
        pages,
        weights.float(),
        lens,
        block_table.to(torch.int32),
        int(max_seq_len),
    )


def fp8_mqa_logits(
    q: Tensor,
    kv: tuple[Tensor, Tensor],
    weights: Tensor,
    ks: Tensor,
    ke: Tensor,
    clean_logits: bool = False,
    max_seqlen_k: int = 0,
) -> Tensor:
    """DeepGEMM's `fp8_mqa_logits` signature over `sparsegate.kernels.dsa.ragged_mqa_logits`.

    q: e4m3 [M, H, 128] (the indexer pads H up to 32); kv: (e4m3 [N, 128], f32 [N] or [N, 1]) gathered from the
    index-K pages; weights: f32 [M, H]; ks, ke: int32 [M]. Returns f32 [M, N], -inf outside [ks, ke).
    """
    del clean_logits, max_seqlen_k
    k, k_scale = kv
    return ragged_mqa_logits(
        q,
        k.view(torch.float8_e4m3fn),
        k_scale.reshape(-1).float(),
        weights.float(),
        ks.to(torch.int32),
        ke.to(torch.int32),
    )


def paged_mqa_logits_metadata(context_lens: Tensor, block_kv: int, num_sms: int) -> Tensor:
    """Stands in for DeepGEMM's schedule plan. Fixed shape, so `metadata.paged_mqa_schedule_metadata.copy_(new)`
    in dsa_backend._refresh_paged_mqa_schedule_metadata keeps working across graph replays."""
    del block_kv, num_sms
    return torch.zeros(1, 2, dtype=torch.int32, device=context_lens.device)


def device_sm_count() -> int:
    """`resolve_num_sms` without deep_gemm: the indexer only uses it to size chunks and schedules."""
    if not torch.cuda.is_available():
        return 1
    return int(torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count)


def resolve_fp8_paged_mqa_logits_fn() -> Any:
    return fp8_paged_mqa_logits


def resolve_fp8_mqa_logits_fn() -> Any:
    return fp8_mqa_logits


def resolve_paged_mqa_logits_metadata_fn() -> Any:
    return paged_mqa_logits_metadata
