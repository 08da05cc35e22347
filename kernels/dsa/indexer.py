"""The DSA indexer's logits in FP8: paged decode (with MTP rows) and ragged prefill.

    logits[t, s] = sum_h w[t, h] * ReLU(q[t, h] . k[s]) * k_scale[s]

The ReLU sits inside the head sum, so the kernels keep one score per (query row, head, key) and reduce over heads
after the ReLU; folding w into q first would be a different function. The products of two e4m3 values are exact,
but Hopper's fp8 tensor-core dot accumulates with about 13 mantissa bits, so the logits differ from the float32
twin by 1.3e-4 - 2e-4 relative there (issue 13's measurement on an H200), not by summation order alone; Ada's
accumulation has not been measured. The tests allow 1e-3.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsegate.kernels.dsa._configs import autotune_configs, make_pruner, require_fp8_capability
from sparsegate.kernels.dsa._layout import (
    FP8,
    INDEX_DIM,
    INDEX_PAGE_BYTES,
    INDEX_SCALE_OFFSET,
    PAGE_SIZE,
    check_byte_rows,
)

MAX_NEXT_N = 4  # MTP rows per request the paged kernel is sized for (shared memory estimate, q tile)

# --- paged decode -----------------------------------------------------------------------------------------------

PAGED_CANDIDATES = [
    triton.Config({"BLOCK_S": 64, "TILES": 4}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_S": 128, "TILES": 2}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_S": 128, "TILES": 4}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_S": 256, "TILES": 2}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_S": 64, "TILES": 1}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_S": 64, "TILES": 8}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_S": 64, "TILES": 4}, num_warps=4, num_stages=4),
]
PAGED_INTERPRETER = triton.Config({"BLOCK_S": 128, "TILES": 2}, num_warps=4, num_stages=1)


def paged_shared_memory(config: triton.Config) -> int:
    """Upper estimate: pipelined key tiles (128 e4m3 + a float32 scale per key) and the q tile for the worst case
    of 64 heads x 4 MTP rows."""
    block_s = config.kwargs["BLOCK_S"]
    return config.num_stages * block_s * (INDEX_DIM + 4) + MAX_NEXT_N * 64 * INDEX_DIM + 8192


@triton.autotune(
    configs=autotune_configs(PAGED_CANDIDATES, PAGED_INTERPRETER),
    key=["H", "NEXT_N", "max_context"],
    prune_configs_by={
        "early_config_prune": make_pruner(PAGED_CANDIDATES, PAGED_INTERPRETER, paged_shared_memory, "q_ptr")
    },
)
@triton.jit
def _paged_mqa_logits_kernel(
    q_ptr,  # [B, NEXT_N, H, 128] e4m3
    k_ptr,  # the pages as e4m3 [P, 8448]
    k_scale_ptr,  # the pages as f32 [P, 2112]
    w_ptr,  # [B * NEXT_N, H] f32
    context_lens_ptr,  # [B] int32
    table_ptr,  # [B, max_pages] int32
    out_ptr,  # [B * NEXT_N, max_context] f32
    max_context,
    stride_table,
    H: tl.constexpr,
    NEXT_N: tl.constexpr,
    ROWS: tl.constexpr,  # NEXT_N rounded up to a power of two
    DIM: tl.constexpr,
    PAGE: tl.constexpr,
    PAGE_BYTES: tl.constexpr,
    SCALE_OFFSET: tl.constexpr,
    BLOCK_S: tl.constexpr,
    TILES: tl.constexpr,
):
    b = tl.program_id(1)
    first = tl.program_id(0) * (BLOCK_S * TILES)
    length = tl.load(context_lens_ptr + b)
    j = tl.arange(0, ROWS)  # [ROWS] this request's query rows
    jh = tl.arange(0, ROWS * H)  # [ROWS * H] (row, head) pairs, row-major
    d = tl.arange(0, DIM)
    jh_ok = jh // H < NEXT_N
    q = tl.load(q_ptr + (jh + b * NEXT_N * H)[:, None] * DIM + d[None, :], mask=jh_ok[:, None], other=0.0)
    w = tl.load(w_ptr + (jh + b * NEXT_N * H), mask=jh_ok, other=0.0)  # [ROWS * H]
    visible = length - NEXT_N + 1 + j  # [ROWS] row j sees keys [0, visible)
    row_ok = j < NEXT_N
    out_rows = out_ptr + (j + b * NEXT_N).to(tl.int64) * max_context  # [ROWS] row pointers
    s_range = tl.arange(0, BLOCK_S)
    live = tl.minimum(tl.maximum(tl.cdiv(length - first, BLOCK_S), 0), TILES)  # tiles that hold any key
    for tile in range(0, live):
        s = first + tile * BLOCK_S + s_range  # [BLOCK_S] key positions
        in_ctx = s < length
        page = tl.load(table_ptr + b * stride_table + s // PAGE, mask=in_ctx, other=0).to(tl.int64)
        offset = s % PAGE
        k = tl.load(k_ptr + page[:, None] * PAGE_BYTES + offset[:, None] * DIM + d[None, :], mask=in_ctx[:, None])
        k_scale = tl.load(k_scale_ptr + page * (PAGE_BYTES // 4) + (offset + SCALE_OFFSET // 4), mask=in_ctx)
        scores = tl.dot(k, tl.trans(q))  # [BLOCK_S, ROWS * H] f32
        weighted = tl.maximum(scores, 0.0) * w[None, :]  # ReLU per head, before the head sum
        if ROWS == 1:
            logits = tl.sum(weighted, axis=1)[:, None]  # [BLOCK_S, 1]
        else:
            logits = tl.sum(tl.reshape(weighted, (BLOCK_S, ROWS, H)), axis=2)  # [BLOCK_S, ROWS]
        logits = tl.where(s[:, None] < visible[None, :], logits * k_scale[:, None], float("-inf"))
        tl.store(out_rows[None, :] + s[:, None], logits, mask=(s < max_context)[:, None] & row_ok[None, :])
    for tile in range(live, TILES):  # past the context: only -inf to write
        s = first + tile * BLOCK_S + s_range
        blank = tl.full((BLOCK_S, ROWS), float("-inf"), tl.float32)
        tl.store(out_rows[None, :] + s[:, None], blank, mask=(s < max_context)[:, None] & row_ok[None, :])


def paged_mqa_logits(
    q: Tensor, pages: Tensor, weights: Tensor, context_lens: Tensor, block_table: Tensor, max_context: int
) -> Tensor:
    """Decode indexer logits over paged FP8 keys; `next_n` >= 1 query rows per request (MTP).

    q: e4m3 [B, next_n, H, 128] (H = 32 or 64); pages: uint8 [P, 8448]; weights: f32 [B * next_n, H];
    context_lens: int32 [B]; block_table: int32 [B, max_pages]. Returns f32 [B * next_n, max_context]; row j of
    request b holds the logits of keys [0, L - next_n + j + 1) and -inf after. Reads lengths on the device only.
    """
    if q.dim() != 4 or q.shape[-1] != INDEX_DIM or q.dtype != FP8:
        raise ValueError(f"q must be float8_e4m3fn [B, next_n, H, {INDEX_DIM}], got {q.dtype} {tuple(q.shape)}")
    batch, next_n, heads, _ = q.shape
    if heads not in (32, 64):
        raise ValueError(f"the indexer kernels take 32 or 64 index heads, got {heads}")
    if not 1 <= next_n <= MAX_NEXT_N:
        raise ValueError(f"next_n must be in 1..{MAX_NEXT_N}, got {next_n}; split larger MTP batches")
    check_byte_rows("pages", pages, INDEX_PAGE_BYTES, "P")
    if weights.shape != (batch * next_n, heads) or weights.dtype != torch.float32:
        raise ValueError(f"weights must be float32 [B * next_n, H] = [{batch * next_n}, {heads}], got {weights.shape}")
    if context_lens.shape != (batch,) or context_lens.dtype != torch.int32:
        raise ValueError(f"context_lens must be int32 [B] = [{batch}], got {context_lens.dtype} {context_lens.shape}")
    if block_table.dim() != 2 or block_table.shape[0] != batch or block_table.dtype != torch.int32:
        raise ValueError(f"block_table must be int32 [B, max_pages], got {block_table.dtype} {block_table.shape}")
    if block_table.shape[1] * PAGE_SIZE < max_context:
        raise ValueError(f"block_table holds {block_table.shape[1]} pages, too few for max_context={max_context}")
    require_fp8_capability(q, "paged_mqa_logits")
    q = q.contiguous()
    weights = weights.contiguous()
    block_table = block_table if block_table.stride(1) == 1 else block_table.contiguous()
    out = torch.empty(batch * next_n, max_context, dtype=torch.float32, device=q.device)
    if batch == 0 or max_context == 0:
        return out

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return (triton.cdiv(max_context, meta["BLOCK_S"] * meta["TILES"]), batch)

    _paged_mqa_logits_kernel[grid](
        q,
        pages.view(FP8),
        pages.view(torch.float32),
        weights,
        context_lens,
        block_table,
        out,
        max_context,
        block_table.stride(0),
        H=heads,
        NEXT_N=next_n,
        ROWS=triton.next_power_of_2(next_n),
        DIM=INDEX_DIM,
        PAGE=PAGE_SIZE,
        PAGE_BYTES=INDEX_PAGE_BYTES,
        SCALE_OFFSET=INDEX_SCALE_OFFSET,
    )
    return out


# --- ragged prefill ---------------------------------------------------------------------------------------------

RAGGED_CANDIDATES = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
]
# Larger tiles spill on sm_89 at 64 heads (ptxas, tests/kernels/sm89_compile.py); Hopper keeps them.
RAGGED_HOPPER_ONLY = [c for c in RAGGED_CANDIDATES if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 64 * 64]
RAGGED_INTERPRETER = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)


def ragged_shared_memory(config: triton.Config) -> int:
    """Upper estimate: both e4m3 operand tiles, pipelined."""
    block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    return config.num_stages * (block_m + block_n) * INDEX_DIM


@triton.autotune(
    configs=autotune_configs(RAGGED_CANDIDATES, RAGGED_INTERPRETER),
    key=["H"],
    prune_configs_by={
        "early_config_prune": make_pruner(RAGGED_CANDIDATES, RAGGED_INTERPRETER, ragged_shared_memory, "q_ptr")
    },
)
@triton.jit
def _ragged_mqa_logits_kernel(
    q_ptr,  # [M, H, 128] e4m3
    k_ptr,  # [N, 128] e4m3
    k_scale_ptr,  # [N] f32
    w_ptr,  # [M, H] f32
    ks_ptr,  # [M] int32
    ke_ptr,  # [M] int32
    out_ptr,  # [M, N] f32
    M,
    N,
    stride_qm,
    stride_kn,
    stride_wm,
    H: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] query rows
    n_first = tl.program_id(0) * BLOCK_N
    n = n_first + tl.arange(0, BLOCK_N)  # [BLOCK_N] keys
    m_ok = m < M
    n_ok = n < N
    lo = tl.load(ks_ptr + m, mask=m_ok, other=2147483647)
    hi = tl.load(ke_ptr + m, mask=m_ok, other=0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if (n_first < tl.max(hi, axis=0)) & (n_first + BLOCK_N > tl.min(lo, axis=0)):  # any visible key in the tile
        d = tl.arange(0, DIM)
        k = tl.load(k_ptr + n[:, None].to(tl.int64) * stride_kn + d[None, :], mask=n_ok[:, None])  # [BLOCK_N, 128]
        q_rows = q_ptr + m[:, None].to(tl.int64) * stride_qm + d[None, :]
        for h in range(H):
            q = tl.load(q_rows + h * DIM, mask=m_ok[:, None])  # [BLOCK_M, 128]
            w = tl.load(w_ptr + m * stride_wm + h, mask=m_ok, other=0.0)  # [BLOCK_M]
            scores = tl.dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N] f32
            acc += tl.maximum(scores, 0.0) * w[:, None]  # ReLU per head, before the head sum
        acc = acc * tl.load(k_scale_ptr + n, mask=n_ok, other=0.0)[None, :]
    visible = (n[None, :] >= lo[:, None]) & (n[None, :] < hi[:, None])
    out = tl.where(visible, acc, float("-inf"))
    tl.store(out_ptr + m[:, None].to(tl.int64) * N + n[None, :], out, mask=m_ok[:, None] & n_ok[None, :])


def ragged_mqa_logits(q: Tensor, k: Tensor, k_scale: Tensor, weights: Tensor, ks: Tensor, ke: Tensor) -> Tensor:
    """Prefill indexer logits: query t sees keys [ks[t], ke[t]) of one flat key array; the rest is -inf.

    q: e4m3 [M, H, 128]; k: e4m3 [N, 128]; k_scale: f32 [N]; weights: f32 [M, H]; ks, ke: int32 [M].
    Returns f32 [M, N].
    """
    if q.dim() != 3 or q.shape[-1] != INDEX_DIM or q.dtype != FP8:
        raise ValueError(f"q must be float8_e4m3fn [M, H, {INDEX_DIM}], got {q.dtype} {tuple(q.shape)}")
    rows, heads, _ = q.shape
    if heads not in (32, 64):
        raise ValueError(f"the indexer kernels take 32 or 64 index heads, got {heads}")
    if k.dim() != 2 or k.shape[1] != INDEX_DIM or k.dtype != FP8:
        raise ValueError(f"k must be float8_e4m3fn [N, {INDEX_DIM}], got {k.dtype} {tuple(k.shape)}")
    keys = k.shape[0]
    if k_scale.shape != (keys,) or k_scale.dtype != torch.float32:
        raise ValueError(f"k_scale must be float32 [N] = [{keys}], got {k_scale.dtype} {tuple(k_scale.shape)}")
    if weights.shape != (rows, heads) or weights.dtype != torch.float32:
        raise ValueError(f"weights must be float32 [M, H] = [{rows}, {heads}], got {weights.dtype} {weights.shape}")
    for name, bound in (("ks", ks), ("ke", ke)):
        if bound.shape != (rows,) or bound.dtype != torch.int32:
            raise ValueError(f"{name} must be int32 [M] = [{rows}], got {bound.dtype} {tuple(bound.shape)}")
    require_fp8_capability(q, "ragged_mqa_logits")
    q = q if (q.stride(2) == 1 and q.stride(1) == INDEX_DIM) else q.contiguous()
    k = k if k.stride(1) == 1 else k.contiguous()
    weights = weights if weights.stride(1) == 1 else weights.contiguous()
    out = torch.empty(rows, keys, dtype=torch.float32, device=q.device)
    if rows == 0 or keys == 0:
        return out

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return (triton.cdiv(keys, meta["BLOCK_N"]), triton.cdiv(rows, meta["BLOCK_M"]))

    _ragged_mqa_logits_kernel[grid](
        q,
        k,
        k_scale.contiguous(),
        weights,
        ks.contiguous(),
        ke.contiguous(),
        out,
        rows,
        keys,
        q.stride(0),
        k.stride(0),
        weights.stride(0),
        H=heads,
        DIM=INDEX_DIM,
    )
    return out
