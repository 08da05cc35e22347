"""Merge of sparse MLA's split-K partials: one kernel, spread over (head block, 128 value columns, query row).

Each split of a query row's index list leaves its output normalized by itself (float32) and its natural-log lse.
The merge weighs split s by exp(lse_s - max lse) / sum over the splits, so a split that saw no valid slot
(lse = -inf) weighs nothing and a row no split saw gives zeros and lse = -inf. A program holds at most 2,048
partial values ([SPLITS, BLOCK_H, BLOCK_D]), so a row of 32 splits at 64 heads is 512 programs: the loads of many
programs overlap, where a merge by one program per (row, head block) read its splits in dependent rounds.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

MERGE_VALUES = 2048  # partial values a merge program holds: SPLITS x BLOCK_H x BLOCK_D (4,096 spilled on sm_89)
MERGE_WARPS = 4


def merge_tile(splits: int, heads: int) -> tuple[int, int]:
    """(heads, value columns) a merge program takes, so that it holds at most MERGE_VALUES partial values."""
    rows = triton.next_power_of_2(splits)
    block_d = min(128, MERGE_VALUES // rows)
    return max(1, min(triton.next_power_of_2(heads), MERGE_VALUES // (rows * block_d))), block_d


@triton.jit
def _merge_splits_kernel(
    part_ptr,  # [T, splits, H, LATENT] f32, each split normalized by itself
    part_lse_ptr,  # [T, splits, H] f32, natural log; -inf for a split without a valid slot
    out_ptr,  # [T, H, LATENT] bf16
    lse_ptr,  # [T, H] f32
    H,
    splits,
    SPLITS: tl.constexpr,  # splits rounded up to a power of two
    LATENT: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(2)
    column_block = tl.program_id(1)
    heads = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = heads < H
    s = tl.arange(0, SPLITS)
    rows = (t.to(tl.int64) * splits + s[:, None]) * H + heads[None, :]  # [SPLITS, BLOCK_H] partial rows
    ok = (s < splits)[:, None] & h_ok[None, :]
    lse_s = tl.load(part_lse_ptr + rows, mask=ok, other=float("-inf"))
    top = tl.max(lse_s, axis=0)  # [BLOCK_H]
    top_safe = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp(lse_s - top_safe[None, :])  # 0 for a split without a valid slot
    total = tl.sum(weight, axis=0)
    seen = total > 0.0
    total_safe = tl.where(seen, total, 1.0)
    weight = weight * tl.where(seen, 1.0 / total_safe, 0.0)[None, :]
    cols = column_block * BLOCK_D + tl.arange(0, BLOCK_D)
    parts = tl.load(part_ptr + rows[:, :, None] * LATENT + cols[None, None, :], mask=ok[:, :, None], other=0.0)
    merged = tl.sum(parts * weight[:, :, None], axis=0)  # [BLOCK_H, BLOCK_D]
    out_rows = (t.to(tl.int64) * H + heads)[:, None] * LATENT
    tl.store(out_ptr + out_rows + cols[None, :], merged.to(out_ptr.dtype.element_ty), mask=h_ok[:, None])
    if column_block == 0:
        merged_lse = tl.where(seen, top_safe + tl.log(total_safe), float("-inf"))
        tl.store(lse_ptr + t.to(tl.int64) * H + heads, merged_lse, mask=h_ok)


def merge_splits(part: Tensor, part_lse: Tensor, out: Tensor, lse: Tensor, splits: int) -> None:
    """Merge `splits` partials per (row, head) into out [T, H, 512] bf16 and lse [T, H] f32, in place. part and
    part_lse are flat buffers of at least T * splits * H * 512 and T * splits * H float32 values."""
    tokens, heads, latent = out.shape
    block_h, block_d = merge_tile(splits, heads)
    grid = (triton.cdiv(heads, block_h), latent // block_d, tokens)
    _merge_splits_kernel[grid](
        part,
        part_lse,
        out,
        lse,
        heads,
        splits,
        SPLITS=triton.next_power_of_2(splits),
        LATENT=latent,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=MERGE_WARPS,
    )
