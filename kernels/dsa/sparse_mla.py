"""Sparse MLA over the 656-byte FP8 rows: each query row attends to its own selected slots.

One program takes a block of heads of one query row (all heads share the latent rows, MLA being MQA-like) and one
split of its index list. It gathers BLOCK_N rows, widens the e4m3 latent to bf16 (exact), and runs bf16 tensor-core
dots with float32 accumulation. The per-tile scales are powers of two, so they are applied exactly outside the
dots: to the scores of tile i after q_i . k_i, and to the probabilities before p . v_i. Few query rows (decode)
split the index list over programs and merge the partial results through their log-sum-exp in a second kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsegate.kernels.dsa._configs import autotune_configs, make_pruner, sm_count
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
    check_byte_rows,
)

SPLIT_CHOICES = (1, 2, 4, 8, 16)  # index-list splits the autotuner may pick for few query rows
MAX_SPLITS = SPLIT_CHOICES[-1]
MIN_SPLIT_LEN = 128  # indices per split below which merging costs more than it gains

# Measured with ptxas for sm_89 (tests/kernels/sm89_compile.py): these four fit Ada's 99 KiB without spilling.
SPARSE_MLA_CANDIDATES = [
    triton.Config({"BLOCK_H": 16, "BLOCK_N": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_H": 16, "BLOCK_N": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_H": 16, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_H": 32, "BLOCK_N": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_H": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_H": 64, "BLOCK_N": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_H": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2),
]
# Larger tiles spill on sm_89 (its mma.sync keeps both operands and a [BLOCK_H, 512] float32 accumulator in
# registers) and the 64-head ones come near its shared-memory limit; Hopper's wgmma reads an operand from shared
# memory, so they stay candidates there.
SPARSE_MLA_HOPPER_ONLY = [c for c in SPARSE_MLA_CANDIDATES if c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_N"] > 1024]
# The interpreter runs two splits whenever the launcher asks for partials, so the CPU tests cover the merge.
SPARSE_MLA_INTERPRETER = triton.Config({"BLOCK_H": 16, "BLOCK_N": 64, "num_splits": 2}, num_warps=4, num_stages=1)


def sparse_mla_shared_memory(config: triton.Config) -> int:
    """Upper estimate, checked against the compiler for sm_89: q as a bf16 dot operand, plus per stage half a row
    of widened key per gathered slot (Triton measured 1152 bytes a head and ~400 bytes a slot at two stages)."""
    block_h, block_n = config.kwargs["BLOCK_H"], config.kwargs["BLOCK_N"]
    return block_h * QK_DIM * 2 + config.num_stages * block_n * (MLA_ROW_BYTES // 2)


def max_splits(tokens: int, heads: int, topk: int, multiprocessors: int) -> int:
    """The most splits worth trying: at most 8 programs per multiprocessor (at 16 heads a program) and at least
    128 indices per split. Depends on shapes only, so a captured graph keeps its grid."""
    base = tokens * triton.cdiv(heads, 16)
    fits = [s for s in SPLIT_CHOICES if base * s <= 8 * multiprocessors and topk // s >= MIN_SPLIT_LEN]
    return max(fits, default=1)


def wants_partials(tokens: int, heads: int, multiprocessors: int) -> bool:
    """Few query rows (decode): too few programs to fill the GPU unless the index list is split."""
    return tokens * triton.cdiv(heads, 16) < 2 * multiprocessors


_TILE_PRUNE = make_pruner(
    SPARSE_MLA_CANDIDATES, SPARSE_MLA_INTERPRETER, sparse_mla_shared_memory, "q_ptr", SPARSE_MLA_HOPPER_ONLY
)


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    # Tiles allowed on this device, each with the split counts this shape may use (only 1 without partials).
    tiles = _TILE_PRUNE(SPARSE_MLA_CANDIDATES, named_args)
    if len(tiles) == 1 and tiles[0] is SPARSE_MLA_INTERPRETER:
        return tiles
    if kwargs.get("PARTIAL"):
        cap = named_args["split_cap"]
        return [c for c in configs if c.kwargs["num_splits"] <= cap and _same_tile(c, tiles)]
    return [c for c in configs if c.kwargs["num_splits"] == 1 and _same_tile(c, tiles)]


def _same_tile(config: triton.Config, tiles: list[triton.Config]) -> bool:
    return any(config.kwargs["BLOCK_H"] == t.kwargs["BLOCK_H"] and config.kwargs["BLOCK_N"] == t.kwargs["BLOCK_N"]
               and config.num_warps == t.num_warps and config.num_stages == t.num_stages for t in tiles)  # fmt: skip


TUNED_CONFIGS = [
    triton.Config({**tile.kwargs, "num_splits": splits}, num_warps=tile.num_warps, num_stages=tile.num_stages)
    for tile in SPARSE_MLA_CANDIDATES
    for splits in SPLIT_CHOICES
]


@triton.autotune(
    configs=autotune_configs(TUNED_CONFIGS, SPARSE_MLA_INTERPRETER),
    key=["H", "PARTIAL", "token_bucket", "split_cap"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(do_not_specialize=["num_splits", "split_cap"])
def _sparse_mla_kernel(
    q_ptr,  # [T, H, 576] bf16
    row_fp8_ptr,  # the cache as e4m3 [S, 656]
    row_f32_ptr,  # the cache as f32 [S, 164]
    row_bf16_ptr,  # the cache as bf16 [S, 328]
    idx_ptr,  # [T, TOPK] int32
    out_ptr,  # PARTIAL: [T, num_splits, H, 512] f32, each split normalized by itself; else [T, H, 512] bf16
    lse_ptr,  # PARTIAL: [T, num_splits, H] f32; else [T, H] f32
    qk_scale,  # sm_scale / ln 2: scores in the base-2 domain
    H,
    TOPK,
    stride_qt,
    stride_qh,
    stride_it,
    token_bucket,  # T rounded up to a power of two, at most 4096: only for the autotune key
    split_cap,  # the most splits the partial buffers hold (max_splits): in the key, and a bound
    num_splits,  # chosen by the autotuner; 1 without PARTIAL
    PARTIAL: tl.constexpr,
    ROW_BYTES: tl.constexpr,
    SCALE_OFFSET: tl.constexpr,
    ROPE_OFFSET: tl.constexpr,
    TILE: tl.constexpr,
    ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    t = tl.program_id(2)
    split = tl.program_id(1)
    heads = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    h_ok = heads < H
    d = tl.arange(0, TILE)
    r = tl.arange(0, ROPE)
    q_rows = q_ptr + t.to(tl.int64) * stride_qt + heads[:, None] * stride_qh
    q0 = tl.load(q_rows + d[None, :], mask=h_ok[:, None], other=0.0)  # [BLOCK_H, 128] bf16
    q1 = tl.load(q_rows + (d + TILE)[None, :], mask=h_ok[:, None], other=0.0)
    q2 = tl.load(q_rows + (d + 2 * TILE)[None, :], mask=h_ok[:, None], other=0.0)
    q3 = tl.load(q_rows + (d + 3 * TILE)[None, :], mask=h_ok[:, None], other=0.0)
    q_rope = tl.load(q_rows + (r + 4 * TILE)[None, :], mask=h_ok[:, None], other=0.0)  # [BLOCK_H, 64]

    m = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)  # running max, base-2 domain
    denom = tl.zeros((BLOCK_H,), dtype=tl.float32)  # running sum of exp2
    acc0 = tl.zeros((BLOCK_H, TILE), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_H, TILE), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_H, TILE), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_H, TILE), dtype=tl.float32)

    splits = tl.minimum(num_splits, split_cap) if PARTIAL else 1
    split_len = tl.cdiv(TOPK, splits)
    begin = split * split_len
    end = tl.minimum(begin + split_len, TOPK)
    idx_row = idx_ptr + t.to(tl.int64) * stride_it
    for start in range(begin, end, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        slot = tl.load(idx_row + n, mask=n < end, other=-1)
        valid = slot >= 0
        slot = tl.where(valid, slot, 0).to(tl.int64)
        rows8 = row_fp8_ptr + slot[:, None] * ROW_BYTES
        k0 = tl.load(rows8 + d[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)  # [BLOCK_N, 128]
        k1 = tl.load(rows8 + (d + TILE)[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
        k2 = tl.load(rows8 + (d + 2 * TILE)[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
        k3 = tl.load(rows8 + (d + 3 * TILE)[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
        scales = row_f32_ptr + slot * (ROW_BYTES // 4) + SCALE_OFFSET // 4  # [BLOCK_N] pointers to 4 scales
        s0 = tl.load(scales, mask=valid, other=0.0)
        s1 = tl.load(scales + 1, mask=valid, other=0.0)
        s2 = tl.load(scales + 2, mask=valid, other=0.0)
        s3 = tl.load(scales + 3, mask=valid, other=0.0)
        rope_rows = row_bf16_ptr + slot[:, None] * (ROW_BYTES // 2)
        k_rope = tl.load(rope_rows + (r + ROPE_OFFSET // 2)[None, :], mask=valid[:, None], other=0.0)

        scores = tl.dot(q_rope, tl.trans(k_rope))  # [BLOCK_H, BLOCK_N] f32
        scores += tl.dot(q0, tl.trans(k0)) * s0[None, :]
        scores += tl.dot(q1, tl.trans(k1)) * s1[None, :]
        scores += tl.dot(q2, tl.trans(k2)) * s2[None, :]
        scores += tl.dot(q3, tl.trans(k3)) * s3[None, :]
        scores = tl.where(valid[None, :], scores * qk_scale, float("-inf"))

        m_new = tl.maximum(m, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid slot yet: keep exp2 finite
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(scores - m_safe[:, None])  # [BLOCK_H, BLOCK_N]
        denom = denom * alpha + tl.sum(p, axis=1)
        acc0 = acc0 * alpha[:, None] + tl.dot((p * s0[None, :]).to(tl.bfloat16), k0)
        acc1 = acc1 * alpha[:, None] + tl.dot((p * s1[None, :]).to(tl.bfloat16), k1)
        acc2 = acc2 * alpha[:, None] + tl.dot((p * s2[None, :]).to(tl.bfloat16), k2)
        acc3 = acc3 * alpha[:, None] + tl.dot((p * s3[None, :]).to(tl.bfloat16), k3)
        m = m_new

    seen = denom > 0.0
    denom_safe = tl.where(seen, denom, 1.0)  # rows without a valid slot divide nothing and take no log of zero
    inv_l = tl.where(seen, 1.0 / denom_safe, 0.0)
    lse = tl.where(seen, (m + tl.log2(denom_safe)) * 0.6931471805599453, float("-inf"))  # ln 2: back to natural log
    if not PARTIAL:
        o_rows = out_ptr + (t.to(tl.int64) * H + heads)[:, None] * (4 * TILE)
        tl.store(o_rows + d[None, :], (acc0 * inv_l[:, None]).to(tl.bfloat16), mask=h_ok[:, None])
        tl.store(o_rows + (d + TILE)[None, :], (acc1 * inv_l[:, None]).to(tl.bfloat16), mask=h_ok[:, None])
        tl.store(o_rows + (d + 2 * TILE)[None, :], (acc2 * inv_l[:, None]).to(tl.bfloat16), mask=h_ok[:, None])
        tl.store(o_rows + (d + 3 * TILE)[None, :], (acc3 * inv_l[:, None]).to(tl.bfloat16), mask=h_ok[:, None])
        tl.store(lse_ptr + t.to(tl.int64) * H + heads, lse, mask=h_ok)
    else:
        part = (t.to(tl.int64) * splits + split) * H + heads  # [BLOCK_H] partial rows
        o_rows = out_ptr + part[:, None] * (4 * TILE)
        tl.store(o_rows + d[None, :], acc0 * inv_l[:, None], mask=h_ok[:, None])
        tl.store(o_rows + (d + TILE)[None, :], acc1 * inv_l[:, None], mask=h_ok[:, None])
        tl.store(o_rows + (d + 2 * TILE)[None, :], acc2 * inv_l[:, None], mask=h_ok[:, None])
        tl.store(o_rows + (d + 3 * TILE)[None, :], acc3 * inv_l[:, None], mask=h_ok[:, None])
        tl.store(lse_ptr + part, lse, mask=h_ok)


@triton.jit
def _merge_splits_kernel(
    part_ptr,  # [T, num_splits, H, 512] f32, each split normalized by its own sum
    part_lse_ptr,  # [T, num_splits, H] f32, natural log
    out_ptr,  # [T, H, 512] bf16
    lse_ptr,  # [T, H] f32
    H,
    num_splits,
    MAX_SPLITS: tl.constexpr,
    DV: tl.constexpr,
):
    t = tl.program_id(1)
    h = tl.program_id(0)
    s = tl.arange(0, MAX_SPLITS)
    s_ok = s < num_splits
    v = tl.arange(0, DV)
    part = (t.to(tl.int64) * num_splits + s) * H + h  # [MAX_SPLITS]
    lse_s = tl.load(part_lse_ptr + part, mask=s_ok, other=float("-inf"))  # [MAX_SPLITS]
    top = tl.max(lse_s, axis=0)
    top_safe = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp(lse_s - top_safe)  # [MAX_SPLITS], 0 for empty and absent splits
    total = tl.sum(weight, axis=0)
    o = tl.load(part_ptr + part[:, None] * DV + v[None, :], mask=s_ok[:, None], other=0.0)  # [MAX_SPLITS, 512]
    o = tl.sum(o * weight[:, None], axis=0)  # [512]
    seen = total > 0.0
    total_safe = tl.where(seen, total, 1.0)
    o = tl.where(seen, o / total_safe, 0.0)
    tl.store(out_ptr + (t.to(tl.int64) * H + h) * DV + v, o.to(tl.bfloat16))
    tl.store(lse_ptr + t.to(tl.int64) * H + h, tl.where(seen, top_safe + tl.log(total_safe), float("-inf")))


def sparse_mla(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float) -> tuple[Tensor, Tensor]:
    """Attention of each query row over its own selected FP8 MLA rows; returns (out, lse).

    q: bf16 [T, H, 576] (512 latent + 64 rope, 8..128 heads); kv: uint8 [S, 656]; indices: int32 [T, topk] slots,
    -1 for none. Returns out bf16 [T, H, 512] and lse f32 [T, H] (natural log). A row without any valid slot gives
    zeros and lse = -inf. Few rows (decode) split the index list (split-K) and merge the parts by their lse; the
    autotuner picks the split count per shape, so a captured graph keeps its grid.
    """
    if q.dim() != 3 or q.shape[-1] != QK_DIM or q.dtype != torch.bfloat16:
        raise ValueError(f"q must be bf16 [T, H, {QK_DIM}] (512 latent + 64 rope), got {q.dtype} {tuple(q.shape)}")
    tokens, heads, _ = q.shape
    if not 1 <= heads <= 128:
        raise ValueError(f"sparse_mla takes 1..128 heads per call, got {heads}; split the heads across calls")
    check_byte_rows("kv", kv, MLA_ROW_BYTES, "S")
    if indices.dim() != 2 or indices.shape[0] != tokens or indices.dtype != torch.int32:
        raise ValueError(f"indices must be int32 [T, topk] with T = {tokens}, got {indices.dtype} {indices.shape}")
    if q.stride(2) != 1:
        q = q.contiguous()
    indices = indices if indices.stride(1) == 1 else indices.contiguous()
    topk = indices.shape[1]
    out = torch.empty(tokens, heads, LATENT_DIM, dtype=torch.bfloat16, device=q.device)
    lse = torch.empty(tokens, heads, dtype=torch.float32, device=q.device)
    if tokens == 0:
        return out, lse
    multiprocessors = sm_count(q)
    partial = wants_partials(tokens, heads, multiprocessors)
    cap = max_splits(tokens, heads, topk, multiprocessors) if partial else 1
    if partial:
        part = torch.empty(tokens * cap * heads * LATENT_DIM, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(tokens * cap * heads, dtype=torch.float32, device=q.device)
    else:
        part, part_lse = out, lse

    def grid(meta: dict[str, int]) -> tuple[int, int, int]:
        return (triton.cdiv(heads, meta["BLOCK_H"]), min(meta["num_splits"], cap) if partial else 1, tokens)

    _sparse_mla_kernel[grid](
        q,
        kv.view(FP8),
        kv.view(torch.float32),
        kv.view(torch.bfloat16),
        indices,
        part,
        part_lse,
        sm_scale * 1.4426950408889634,  # 1 / ln 2
        heads,
        topk,
        q.stride(0),
        q.stride(1),
        indices.stride(0),
        min(triton.next_power_of_2(tokens), 4096),
        cap,
        PARTIAL=partial,
        ROW_BYTES=MLA_ROW_BYTES,
        SCALE_OFFSET=MLA_SCALE_OFFSET,
        ROPE_OFFSET=MLA_ROPE_OFFSET,
        TILE=QUANT_BLOCK,
        ROPE=ROPE_DIM,
    )
    if partial:
        splits = min(_sparse_mla_kernel.best_config.kwargs["num_splits"], cap)  # the autotuner's host state
        _merge_splits_kernel[(heads, tokens)](
            part, part_lse, out, lse, heads, splits, MAX_SPLITS=MAX_SPLITS, DV=LATENT_DIM
        )
    return out, lse


assert LATENT_TILES == 4  # the kernel unrolls the four latent tiles by hand
