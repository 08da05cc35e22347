"""Sparse MLA decode in two passes, so that no program holds a [heads, 512] float32 accumulator and a widened
576-wide row tile at once.

- Scores: a program takes BLOCK_H heads of one query row and one split of its index list, gathers the rows, and
  computes the base-2 scores in four 128-wide latent dots (each tile's scale on its scores) plus the rope dot. It
  writes the scores ([T, H, topk] float32, -inf for invalid slots).
- Values: a program takes BLOCK_H heads of one query row, COLS of the 512 value columns and one split of the index
  list. It reads the stored scores (online softmax), gathers only its columns of the rows (dequantized in
  registers: e4m3 times a power-of-two scale is exact in bf16) and accumulates p . v in float32 over a
  [BLOCK_H, COLS] accumulator. Several splits leave partials that sparse_mla_merge.py merges.

The scores make a round trip through memory (T * H * topk * 4 bytes, 16.8 MB at T=32 H=64, mostly in L2), and the
values pass reads each row's 512 latent bytes once in total, spread over 512 / COLS programs. Each pass autotunes
its own tile and split count (the values pass timed with its merge).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsegate.kernels.dsa._configs import autotune_configs, capability_key, make_pruner
from sparsegate.kernels.dsa._layout import (
    FP8,
    LATENT_DIM,
    LATENT_TILES,
    MLA_ROPE_OFFSET,
    MLA_ROW_BYTES,
    MLA_SCALE_OFFSET,
    QK_DIM,
    QUANT_BLOCK,
    ROPE_DIM,
)
from sparsegate.kernels.dsa.sparse_mla_merge import merge_splits

SCORE_SPLITS = (1, 2, 4, 8, 16)
VALUE_SPLITS = (1, 2, 4, 8, 16)


def _scores(block_h: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_H": block_h, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


SCORES_CANDIDATES = [
    _scores(16, 32, 4, 3),
    _scores(16, 64, 4, 3),
    _scores(32, 32, 4, 3),
    _scores(32, 64, 8, 2),
    _scores(64, 32, 8, 3),
    _scores(64, 64, 8, 2),
]
SCORES_HOPPER_ONLY = [c for c in SCORES_CANDIDATES if c.kwargs["BLOCK_H"] >= 64]
SCORES_INTERPRETER = triton.Config({"BLOCK_H": 16, "BLOCK_N": 64, "num_splits": 2}, num_warps=4, num_stages=1)


def _values(block_h: int, block_n: int, cols: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_H": block_h, "BLOCK_N": block_n, "COLS": cols}, num_warps=warps, num_stages=stages)


VALUES_CANDIDATES = [
    _values(16, 64, 128, 4, 3),
    _values(32, 64, 128, 4, 3),
    _values(64, 64, 128, 4, 3),
    _values(64, 64, 128, 8, 3),
    _values(64, 32, 256, 8, 3),
    _values(32, 64, 256, 8, 3),
    _values(64, 64, 256, 8, 2),
]
# Hopper-only: for sm_89 the 64-head tile at 4 warps spills (932 bytes, ptxas); the 256-column tiles are not
# offered to it (twice the accumulator).
VALUES_HOPPER_ONLY = [
    c for c in VALUES_CANDIDATES if c.kwargs["COLS"] > 128 or (c.kwargs["BLOCK_H"] == 64 and c.num_warps == 4)
]
VALUES_INTERPRETER = triton.Config(
    {"BLOCK_H": 16, "BLOCK_N": 64, "COLS": 256, "num_splits": 2}, num_warps=4, num_stages=1
)


def scores_shared_memory(config: triton.Config) -> int:
    """Upper estimate, the split-K kernel's with scaled scores (the same loads and dots): q as bf16 dot operands,
    plus 256 bytes per gathered slot a stage and 256 more; tests/kernels/sm89_compile.py checks the real figure."""
    block_h, block_n = config.kwargs["BLOCK_H"], config.kwargs["BLOCK_N"]
    return block_h * QK_DIM * 2 + block_n * 256 * (config.num_stages + 1)


def values_shared_memory(config: triton.Config) -> int:
    """Upper estimate: per slot its COLS e4m3 bytes in flight and widened to bf16, a stage; p as a bf16 operand."""
    block_h, block_n, cols = config.kwargs["BLOCK_H"], config.kwargs["BLOCK_N"], config.kwargs["COLS"]
    return block_n * cols * 3 * config.num_stages + block_h * block_n * 2


_SCORES_TILES = make_pruner(SCORES_CANDIDATES, SCORES_INTERPRETER, scores_shared_memory, "q_ptr", SCORES_HOPPER_ONLY)
_VALUES_TILES = make_pruner(VALUES_CANDIDATES, VALUES_INTERPRETER, values_shared_memory, "idx_ptr", VALUES_HOPPER_ONLY)


def _prune_scores(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    tiles = [_tile_of(t) for t in _SCORES_TILES(SCORES_CANDIDATES, named_args)]
    return [c for c in configs if c.kwargs["num_splits"] <= named_args["split_cap"] and _tile_of(c) in tiles]


def _tile_of(config: triton.Config) -> tuple[int, int, int, int]:
    return (config.kwargs["BLOCK_H"], config.kwargs["BLOCK_N"], config.num_warps, config.num_stages)


SCORES_TUNED = [
    triton.Config({**tile.kwargs, "num_splits": s}, num_warps=tile.num_warps, num_stages=tile.num_stages)
    for tile in SCORES_CANDIDATES
    for s in SCORE_SPLITS
]


@triton.autotune(
    configs=autotune_configs(SCORES_TUNED, SCORES_INTERPRETER),
    key=["H", "TOPK", "token_bucket", "split_cap", "capability"],
    prune_configs_by={"early_config_prune": _prune_scores},
)
@triton.jit(do_not_specialize=["num_splits", "split_cap", "capability"])
def _mla_scores_kernel(
    q_ptr,  # [T, H, 576] bf16
    row_fp8_ptr,  # the cache as e4m3 [S, 656]
    row_f32_ptr,  # the cache as f32 [S, 164]
    row_bf16_ptr,  # the cache as bf16 [S, 328]
    idx_ptr,  # [T, TOPK] int32
    scores_ptr,  # [T, H, TOPK] f32, base 2
    qk_scale,  # sm_scale / ln 2
    H,
    TOPK,
    stride_qt,
    stride_qh,
    stride_it,
    token_bucket,
    split_cap,
    capability,
    num_splits,
    ROW_BYTES: tl.constexpr,
    SCALE_OFFSET: tl.constexpr,
    ROPE_OFFSET: tl.constexpr,
    LATENT: tl.constexpr,
    TILES: tl.constexpr,
    ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    TILE: tl.constexpr = LATENT // TILES
    t = tl.program_id(2)
    split = tl.program_id(1)
    heads = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = heads < H
    r = tl.arange(0, ROPE)
    d = tl.arange(0, TILE)
    q_rows = q_ptr + t.to(tl.int64) * stride_qt + heads[:, None] * stride_qh
    q_rope = tl.load(q_rows + (r + LATENT)[None, :], mask=h_ok[:, None], other=0.0)
    q0 = tl.load(q_rows + d[None, :], mask=h_ok[:, None], other=0.0)
    q1 = tl.load(q_rows + (d + TILE)[None, :], mask=h_ok[:, None], other=0.0)
    q2 = tl.load(q_rows + (d + 2 * TILE)[None, :], mask=h_ok[:, None], other=0.0)
    q3 = tl.load(q_rows + (d + 3 * TILE)[None, :], mask=h_ok[:, None], other=0.0)
    splits = tl.minimum(num_splits, split_cap)
    split_len = tl.cdiv(tl.cdiv(TOPK, splits), BLOCK_N) * BLOCK_N
    begin = split * split_len
    end = tl.minimum(begin + split_len, TOPK)
    idx_row = idx_ptr + t.to(tl.int64) * stride_it
    score_rows = scores_ptr + (t.to(tl.int64) * H + heads)[:, None] * TOPK
    for start in range(begin, end, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        slot = tl.load(idx_row + n, mask=n < end, other=-1)
        valid = slot >= 0
        slot = tl.where(valid, slot, 0).to(tl.int64)
        rows8 = row_fp8_ptr + slot[:, None] * ROW_BYTES
        scales = row_f32_ptr + slot * (ROW_BYTES // 4) + SCALE_OFFSET // 4
        k_rope = tl.load(
            row_bf16_ptr + slot[:, None] * (ROW_BYTES // 2) + (r + ROPE_OFFSET // 2)[None, :],
            mask=valid[:, None],
            other=0.0,
        )
        k0 = tl.load(rows8 + d[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
        k1 = tl.load(rows8 + (d + TILE)[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
        k2 = tl.load(rows8 + (d + 2 * TILE)[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
        k3 = tl.load(rows8 + (d + 3 * TILE)[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
        s0 = tl.load(scales, mask=valid, other=0.0)
        s1 = tl.load(scales + 1, mask=valid, other=0.0)
        s2 = tl.load(scales + 2, mask=valid, other=0.0)
        s3 = tl.load(scales + 3, mask=valid, other=0.0)
        scores = tl.dot(q_rope, tl.trans(k_rope))
        scores += tl.dot(q0, tl.trans(k0)) * s0[None, :]
        scores += tl.dot(q1, tl.trans(k1)) * s1[None, :]
        scores += tl.dot(q2, tl.trans(k2)) * s2[None, :]
        scores += tl.dot(q3, tl.trans(k3)) * s3[None, :]
        scores = tl.where(valid[None, :], scores * qk_scale, float("-inf"))
        tl.store(score_rows + n[None, :], scores, mask=h_ok[:, None] & (n < end)[None, :])


def _prune_values(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    tiles = [_values_tile_of(t) for t in _VALUES_TILES(VALUES_CANDIDATES, named_args)]
    return [c for c in configs if c.kwargs["num_splits"] <= named_args["split_cap"] and _values_tile_of(c) in tiles]


def _values_tile_of(config: triton.Config) -> tuple[int, ...]:
    kw = config.kwargs
    return (kw["BLOCK_H"], kw["BLOCK_N"], kw["COLS"], config.num_warps, config.num_stages)


def _merge_after_timing(nargs: dict[str, Any], exception: BaseException | None = None) -> None:
    # The autotuner times each values config with its merge, so that more splits are not free.
    splits = min(int(nargs["num_splits"]), int(nargs["split_cap"]))
    if exception is None and splits > 1:
        merge_splits(nargs["part_ptr"], nargs["part_lse_ptr"], nargs["out_ptr"], nargs["lse_ptr"], splits)


VALUES_TUNED = [
    triton.Config({**tile.kwargs, "num_splits": s}, num_warps=tile.num_warps, num_stages=tile.num_stages)
    for tile in VALUES_CANDIDATES
    for s in VALUE_SPLITS
]


@triton.autotune(
    configs=autotune_configs(VALUES_TUNED, VALUES_INTERPRETER),
    key=["H", "TOPK", "token_bucket", "split_cap", "capability"],
    prune_configs_by={"early_config_prune": _prune_values},
    post_hook=_merge_after_timing,
)
@triton.jit(do_not_specialize=["split_cap", "num_splits", "capability"])
def _mla_values_kernel(
    row_fp8_ptr,  # the cache as e4m3 [S, 656]
    row_f32_ptr,  # the cache as f32 [S, 164]
    idx_ptr,  # [T, TOPK] int32
    scores_ptr,  # [T, H, TOPK] f32, base 2
    out_ptr,  # [T, H, 512] bf16
    lse_ptr,  # [T, H] f32
    part_ptr,  # [T, splits, H, 512] f32, each split normalized by itself (several splits only)
    part_lse_ptr,  # [T, splits, H] f32
    H,
    TOPK,
    stride_it,
    token_bucket,
    split_cap,  # the most splits the partial buffers hold
    capability,
    num_splits,
    ROW_BYTES: tl.constexpr,
    SCALE_OFFSET: tl.constexpr,
    LATENT: tl.constexpr,
    TILE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    COLS: tl.constexpr,
):
    TILES: tl.constexpr = COLS // TILE
    COLUMN_BLOCKS: tl.constexpr = LATENT // COLS
    t = tl.program_id(2)
    split = tl.program_id(1)
    column_block = tl.program_id(0) % COLUMN_BLOCKS
    heads = (tl.program_id(0) // COLUMN_BLOCKS) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = heads < H
    tile = tl.arange(0, TILES)
    d = tl.arange(0, TILE)
    first_col = column_block * COLS
    m = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)
    denom = tl.zeros((BLOCK_H,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_H, COLS), dtype=tl.float32)

    splits = tl.minimum(num_splits, split_cap)
    split_len = tl.cdiv(tl.cdiv(TOPK, splits), BLOCK_N) * BLOCK_N
    begin = split * split_len
    end = tl.minimum(begin + split_len, TOPK)
    idx_row = idx_ptr + t.to(tl.int64) * stride_it
    score_rows = scores_ptr + (t.to(tl.int64) * H + heads)[:, None] * TOPK
    for start in range(begin, end, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        slot = tl.load(idx_row + n, mask=n < end, other=-1)
        valid = slot >= 0
        slot = tl.where(valid, slot, 0).to(tl.int64)
        score = tl.load(score_rows + n[None, :], mask=h_ok[:, None] & (n < end)[None, :], other=float("-inf"))
        v8 = tl.load(
            row_fp8_ptr + slot[:, None, None] * ROW_BYTES + (first_col + tile[:, None] * TILE + d[None, :])[None, :, :],
            mask=valid[:, None, None],
            other=0.0,
        )  # [BLOCK_N, TILES, TILE] e4m3
        scale = tl.load(
            row_f32_ptr + slot[:, None] * (ROW_BYTES // 4) + SCALE_OFFSET // 4 + column_block * TILES + tile[None, :],
            mask=valid[:, None],
            other=0.0,
        )  # [BLOCK_N, TILES]
        v = tl.reshape(v8.to(tl.bfloat16) * scale.to(tl.bfloat16)[:, :, None], (BLOCK_N, COLS))
        m_new = tl.maximum(m, tl.max(score, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(score - m_safe[:, None])  # 0 for invalid slots
        denom = denom * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(tl.bfloat16), v, acc * alpha[:, None])
        m = m_new
    seen = denom > 0.0
    denom_safe = tl.where(seen, denom, 1.0)
    inv = tl.where(seen, 1.0 / denom_safe, 0.0)
    lse = tl.where(seen, (m + tl.log2(denom_safe)) * 0.6931471805599453, float("-inf"))
    cols = first_col + tl.arange(0, COLS)
    if splits > 1:
        rows = (t.to(tl.int64) * splits + split) * H + heads
        tl.store(part_ptr + rows[:, None] * LATENT + cols[None, :], acc * inv[:, None], mask=h_ok[:, None])
        if column_block == 0:
            tl.store(part_lse_ptr + rows, lse, mask=h_ok)
    else:
        out_rows = out_ptr + (t.to(tl.int64) * H + heads)[:, None] * LATENT
        tl.store(out_rows + cols[None, :], (acc * inv[:, None]).to(out_ptr.dtype.element_ty), mask=h_ok[:, None])
        if column_block == 0:
            tl.store(lse_ptr + t.to(tl.int64) * H + heads, lse, mask=h_ok)


def max_value_splits(tokens: int, heads: int, topk: int, multiprocessors: int) -> int:
    """At most 16 values programs per multiprocessor (at 16 heads and 128 columns a program), at least 64 slots a
    split."""
    base = tokens * triton.cdiv(heads, 16) * (LATENT_DIM // 128)
    fits = [s for s in VALUE_SPLITS if base * s <= 16 * multiprocessors and topk // s >= 64]
    return max(fits, default=1)


def max_score_splits(tokens: int, heads: int, topk: int, multiprocessors: int) -> int:
    """At most 8 scores programs per multiprocessor (at 16 heads a program), at least 64 slots a split."""
    base = tokens * triton.cdiv(heads, 16)
    fits = [s for s in SCORE_SPLITS if base * s <= 8 * multiprocessors and topk // s >= 64]
    return max(fits, default=1)


def two_pass_sparse_mla(
    q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, multiprocessors: int
) -> tuple[Tensor, Tensor]:
    """sparse_mla's decode path in two passes (see the module docstring); arguments already checked."""
    tokens, heads, _ = q.shape
    topk = indices.shape[1]
    out = torch.empty(tokens, heads, LATENT_DIM, dtype=torch.bfloat16, device=q.device)
    lse = torch.empty(tokens, heads, dtype=torch.float32, device=q.device)
    scores = torch.empty(tokens * heads * topk, dtype=torch.float32, device=q.device)
    cap = max_score_splits(tokens, heads, topk, multiprocessors)
    bucket = min(triton.next_power_of_2(tokens), 4096)
    capability = capability_key(q)

    def scores_grid(meta: dict[str, int]) -> tuple[int, int, int]:
        return (triton.cdiv(heads, meta["BLOCK_H"]), min(meta["num_splits"], cap), tokens)

    _LAST[0] = _mla_scores_kernel[scores_grid](
        q,
        kv.view(FP8),
        kv.view(torch.float32),
        kv.view(torch.bfloat16),
        indices,
        scores,
        sm_scale * 1.4426950408889634,
        heads,
        topk,
        q.stride(0),
        q.stride(1),
        indices.stride(0),
        bucket,
        cap,
        capability,
        ROW_BYTES=MLA_ROW_BYTES,
        SCALE_OFFSET=MLA_SCALE_OFFSET,
        ROPE_OFFSET=MLA_ROPE_OFFSET,
        LATENT=LATENT_DIM,
        TILES=LATENT_TILES,
        ROPE=ROPE_DIM,
    )
    value_cap = max_value_splits(tokens, heads, topk, multiprocessors)
    if value_cap > 1:
        part = torch.empty(tokens * value_cap * heads * LATENT_DIM, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(tokens * value_cap * heads, dtype=torch.float32, device=q.device)
    else:
        part, part_lse = out, lse  # unused without splits

    def values_grid(meta: dict[str, int]) -> tuple[int, int, int]:
        blocks = triton.cdiv(heads, meta["BLOCK_H"]) * (LATENT_DIM // meta["COLS"])
        return (blocks, min(meta["num_splits"], value_cap), tokens)

    _LAST[1] = _mla_values_kernel[values_grid](
        kv.view(FP8),
        kv.view(torch.float32),
        indices,
        scores,
        out,
        lse,
        part,
        part_lse,
        heads,
        topk,
        indices.stride(0),
        bucket,
        value_cap,
        capability,
        ROW_BYTES=MLA_ROW_BYTES,
        SCALE_OFFSET=MLA_SCALE_OFFSET,
        LATENT=LATENT_DIM,
        TILE=QUANT_BLOCK,
    )
    if value_cap > 1:
        splits = min(int(_mla_values_kernel.best_config.kwargs["num_splits"]), value_cap)
        if splits > 1:
            merge_splits(part, part_lse, out, lse, splits)
    return out, lse


_LAST: list[object] = [None, None]


def last_launch() -> tuple[tuple[triton.Config | None, object], tuple[triton.Config | None, object]]:
    """What ran in the latest call, for benchmarks: (config, compiled kernel) of the scores and the values pass."""
    return (
        (getattr(_mla_scores_kernel, "best_config", None), _LAST[0]),
        (getattr(_mla_values_kernel, "best_config", None), _LAST[1]),
    )
