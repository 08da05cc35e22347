"""Sparse MLA over the 656-byte FP8 rows: each query row attends to its own selected slots.

One program takes a block of heads of one query row (all heads share the latent rows, MLA being MQA-like) and one
split of its index list. Per block of BLOCK_N slots it gathers the rows and dequantizes the latent in registers:
e4m3 times its tile's power-of-two scale is exact in bf16, so the 512-wide latent is one bf16 operand, used by the
score dot (q_latent . k, plus q_rope . k_rope for the 64 rope columns) and again as V by the output dot, both with
float32 accumulation. Few query rows (decode) split the index list over programs, each writing its partial output
and log-sum-exp; a second kernel (sparse_mla_merge.py) merges them, spread over heads and value columns.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsegate.kernels.dsa._configs import autotune_configs, capability_key, make_pruner, sm_count
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
from sparsegate.kernels.dsa.sparse_mla_merge import merge_splits
from sparsegate.kernels.dsa.sparse_mla_two_pass import two_pass_sparse_mla

SPLIT_CHOICES = (1, 2, 4, 8, 16, 32)  # index-list splits the autotuner may pick for few query rows
MAX_SPLITS = SPLIT_CHOICES[-1]
MIN_SPLIT_LEN = 64  # indices per split: one BLOCK_N=64 step
TWO_PASS_MIN_TOKENS = 8  # decode rows from which the two-pass kernels serve (uses_two_passes)


def _tile(block_h: int, block_n: int, dequant: bool, warps: int, stages: int) -> triton.Config:
    kwargs = {"BLOCK_H": block_h, "BLOCK_N": block_n, "DEQUANT": dequant}
    return triton.Config(kwargs, num_warps=warps, num_stages=stages)


# Two ways to apply the per-tile scales (DEQUANT, see the kernel), each with tiles that compile without spills for
# sm_89 (tests/kernels/sm89_compile.py). 4 warps fit only the smallest tiles beside mma.sync's register operands,
# but leave room for two or three programs per multiprocessor; 8 warps share the [BLOCK_H, 512] accumulator.
SPARSE_MLA_CANDIDATES = [
    _tile(16, 16, dequant=True, warps=4, stages=2),
    _tile(16, 16, dequant=False, warps=4, stages=3),
    _tile(16, 16, dequant=True, warps=8, stages=3),
    _tile(16, 32, dequant=True, warps=8, stages=3),
    _tile(32, 16, dequant=True, warps=8, stages=3),
    _tile(32, 32, dequant=True, warps=8, stages=3),
    _tile(16, 32, dequant=False, warps=8, stages=2),
    _tile(16, 64, dequant=False, warps=8, stages=2),
    _tile(32, 32, dequant=False, warps=8, stages=2),
    _tile(64, 16, dequant=True, warps=8, stages=3),
    _tile(64, 16, dequant=True, warps=8, stages=2),
    _tile(64, 32, dequant=False, warps=8, stages=2),
    _tile(64, 64, dequant=False, warps=8, stages=2),
]
# Hopper-only: 64 heads make one wgmma tile (M = 64), which reads q and the rows from shared memory; for sm_89's
# mma.sync the same tile spills (ptxas) and needs more than its 99 KiB of shared memory.
SPARSE_MLA_HOPPER_ONLY = [c for c in SPARSE_MLA_CANDIDATES if c.kwargs["BLOCK_H"] >= 64]
# The interpreter's one config runs two splits whenever the shape allows it (the kernel and grid clamp the count
# to split_cap), so the CPU tests cover the merge.
SPARSE_MLA_INTERPRETER = triton.Config(
    {"BLOCK_H": 16, "BLOCK_N": 64, "DEQUANT": True, "num_splits": 2}, num_warps=4, num_stages=1
)


def sparse_mla_shared_memory(config: triton.Config) -> int:
    """Upper estimate, checked against the compiler for sm_89: q as bf16 dot operands, plus per gathered slot 256
    bytes a stage and 256 more (Triton measured 700-900 bytes a slot at three stages: the e4m3 rows in flight and
    the widened tile share space that is not live at once)."""
    block_h, block_n = config.kwargs["BLOCK_H"], config.kwargs["BLOCK_N"]
    return block_h * QK_DIM * 2 + block_n * 256 * (config.num_stages + 1)


def max_splits(tokens: int, heads: int, topk: int, multiprocessors: int) -> int:
    """The most splits worth trying: at most 8 programs per multiprocessor (at 16 heads a program) and at least
    64 indices per split. Depends on shapes only, so a captured graph keeps its grid."""
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
    cap = named_args["split_cap"]
    tiles = _TILE_PRUNE(SPARSE_MLA_CANDIDATES, named_args)
    if not kwargs.get("PARTIAL"):
        return [c for c in configs if c.kwargs["num_splits"] == 1 and _same_tile(c, tiles)]
    return [c for c in configs if c.kwargs["num_splits"] <= cap and _same_tile(c, tiles)]


def _same_tile(config: triton.Config, tiles: list[triton.Config]) -> bool:
    tile_keys = ("BLOCK_H", "BLOCK_N", "DEQUANT")
    return any(all(config.kwargs[k] == t.kwargs[k] for k in tile_keys)
               and config.num_warps == t.num_warps and config.num_stages == t.num_stages for t in tiles)  # fmt: skip


TUNED_CONFIGS = [
    triton.Config({**tile.kwargs, "num_splits": splits}, num_warps=tile.num_warps, num_stages=tile.num_stages)
    for tile in SPARSE_MLA_CANDIDATES
    for splits in SPLIT_CHOICES
]


def _split_count(config: dict[str, object]) -> int:
    return min(int(config["num_splits"]), int(config["split_cap"]))  # type: ignore[call-overload]


def _merge_after_timing(nargs: dict[str, Any], exception: BaseException | None = None) -> None:
    # The autotuner times each config with its merge, so that more splits are not free.
    if exception is None and nargs.get("PARTIAL"):
        out = nargs["out_ptr"]
        merge_splits(nargs["part_ptr"], nargs["part_lse_ptr"], out, nargs["lse_ptr"], _split_count(nargs))


@triton.autotune(
    configs=autotune_configs(TUNED_CONFIGS, SPARSE_MLA_INTERPRETER),
    key=["H", "TOPK", "token_bucket", "split_cap", "capability"],
    prune_configs_by={"early_config_prune": _prune},
    reset_to_zero=None,
    post_hook=_merge_after_timing,
)
@triton.jit(do_not_specialize=["num_splits", "split_cap", "capability"])
def _sparse_mla_kernel(
    q_ptr,  # [T, H, 576] bf16
    row_fp8_ptr,  # the cache as e4m3 [S, 656]
    row_f32_ptr,  # the cache as f32 [S, 164]
    row_bf16_ptr,  # the cache as bf16 [S, 328]
    idx_ptr,  # [T, TOPK] int32
    out_ptr,  # [T, H, 512] bf16
    lse_ptr,  # [T, H] f32
    part_ptr,  # [T, splits, H, 512] f32: each split normalized by itself (PARTIAL only)
    part_lse_ptr,  # [T, split_cap, H] f32
    qk_scale,  # sm_scale / ln 2: scores in the base-2 domain
    H,
    TOPK,
    stride_qt,
    stride_qh,
    stride_it,
    token_bucket,  # T rounded up to a power of two, at most 4096: only for the autotune key
    split_cap,  # the most splits the partial buffers hold (max_splits): in the key, and a bound
    capability,  # major * 10 + minor of the device (0: interpreter): only for the autotune key
    num_splits,  # chosen by the autotuner; 1 without PARTIAL
    PARTIAL: tl.constexpr,  # split the index list; sparse_mla_merge merges the partials
    ROW_BYTES: tl.constexpr,
    SCALE_OFFSET: tl.constexpr,
    ROPE_OFFSET: tl.constexpr,
    LATENT: tl.constexpr,
    TILES: tl.constexpr,
    ROPE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DEQUANT: tl.constexpr,  # True: dequantize the latent before the dots; False: scale scores and p per tile
):
    TILE: tl.constexpr = LATENT // TILES
    t = tl.program_id(2)
    split = tl.program_id(1)
    block = tl.program_id(0)
    heads = block * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    h_ok = heads < H
    dl = tl.arange(0, LATENT)
    r = tl.arange(0, ROPE)
    tile = tl.arange(0, TILES)
    d = tl.arange(0, TILE)
    q_rows = q_ptr + t.to(tl.int64) * stride_qt + heads[:, None] * stride_qh
    q_rope = tl.load(q_rows + (r + LATENT)[None, :], mask=h_ok[:, None], other=0.0)  # [BLOCK_H, 64] bf16
    if DEQUANT:
        q_lat = tl.load(q_rows + dl[None, :], mask=h_ok[:, None], other=0.0)  # [BLOCK_H, 512] bf16
        acc = tl.zeros((BLOCK_H, LATENT), dtype=tl.float32)
    else:
        q0 = tl.load(q_rows + d[None, :], mask=h_ok[:, None], other=0.0)  # [BLOCK_H, 128] bf16
        q1 = tl.load(q_rows + (d + TILE)[None, :], mask=h_ok[:, None], other=0.0)
        q2 = tl.load(q_rows + (d + 2 * TILE)[None, :], mask=h_ok[:, None], other=0.0)
        q3 = tl.load(q_rows + (d + 3 * TILE)[None, :], mask=h_ok[:, None], other=0.0)
        acc0 = tl.zeros((BLOCK_H, TILE), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_H, TILE), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_H, TILE), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_H, TILE), dtype=tl.float32)
    m = tl.full((BLOCK_H,), float("-inf"), dtype=tl.float32)  # running max, base-2 domain
    denom = tl.zeros((BLOCK_H,), dtype=tl.float32)  # running sum of exp2

    splits = tl.minimum(num_splits, split_cap) if PARTIAL else 1
    split_len = tl.cdiv(tl.cdiv(TOPK, splits), BLOCK_N) * BLOCK_N  # whole blocks per split
    begin = split * split_len
    end = tl.minimum(begin + split_len, TOPK)
    idx_row = idx_ptr + t.to(tl.int64) * stride_it
    for start in range(begin, end, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        slot = tl.load(idx_row + n, mask=n < end, other=-1)
        valid = slot >= 0
        slot = tl.where(valid, slot, 0).to(tl.int64)
        rows8 = row_fp8_ptr + slot[:, None] * ROW_BYTES
        scales = row_f32_ptr + slot * (ROW_BYTES // 4) + SCALE_OFFSET // 4  # [BLOCK_N] pointers to 4 scales
        k_rope = tl.load(
            row_bf16_ptr + slot[:, None] * (ROW_BYTES // 2) + (r + ROPE_OFFSET // 2)[None, :],
            mask=valid[:, None],
            other=0.0,
        )  # [BLOCK_N, 64] bf16
        scores = tl.dot(q_rope, tl.trans(k_rope))  # [BLOCK_H, BLOCK_N] f32
        if DEQUANT:  # latent x its tile's scale, exact in bf16: one operand for both dots
            k8 = tl.load(
                rows8[:, :, None] + (tile[:, None] * TILE + d[None, :])[None, :, :],
                mask=valid[:, None, None],
                other=0.0,
            )  # [BLOCK_N, 4, 128] e4m3
            scale = tl.load(scales[:, None] + tile[None, :], mask=valid[:, None], other=0.0)  # [BLOCK_N, 4] f32
            k = tl.reshape(k8.to(tl.bfloat16) * scale.to(tl.bfloat16)[:, :, None], (BLOCK_N, LATENT))
            scores = tl.dot(q_lat, tl.trans(k), scores)
        else:  # widened tiles as stored; the scales go on the scores and on p
            k0 = tl.load(rows8 + d[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)  # [BLOCK_N, 128]
            k1 = tl.load(rows8 + (d + TILE)[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
            k2 = tl.load(rows8 + (d + 2 * TILE)[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
            k3 = tl.load(rows8 + (d + 3 * TILE)[None, :], mask=valid[:, None], other=0.0).to(tl.bfloat16)
            s0 = tl.load(scales, mask=valid, other=0.0)  # [BLOCK_N]
            s1 = tl.load(scales + 1, mask=valid, other=0.0)
            s2 = tl.load(scales + 2, mask=valid, other=0.0)
            s3 = tl.load(scales + 3, mask=valid, other=0.0)
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
        if DEQUANT:
            acc = tl.dot(p.to(tl.bfloat16), k, acc * alpha[:, None])  # [BLOCK_H, 512]
        else:
            acc0 = tl.dot((p * s0[None, :]).to(tl.bfloat16), k0, acc0 * alpha[:, None])  # [BLOCK_H, 128]
            acc1 = tl.dot((p * s1[None, :]).to(tl.bfloat16), k1, acc1 * alpha[:, None])
            acc2 = tl.dot((p * s2[None, :]).to(tl.bfloat16), k2, acc2 * alpha[:, None])
            acc3 = tl.dot((p * s3[None, :]).to(tl.bfloat16), k3, acc3 * alpha[:, None])
        m = m_new

    seen = denom > 0.0
    denom_safe = tl.where(seen, denom, 1.0)  # rows without a valid slot divide nothing and take no log of zero
    inv = tl.where(seen, 1.0 / denom_safe, 0.0)[:, None]
    lse = tl.where(seen, (m + tl.log2(denom_safe)) * 0.6931471805599453, float("-inf"))  # ln 2: natural log
    if PARTIAL:
        rows = (t.to(tl.int64) * splits + split) * H + heads  # [BLOCK_H] partial rows, float32
        dest = part_ptr + rows[:, None] * LATENT
        tl.store(part_lse_ptr + rows, lse, mask=h_ok)
    else:
        dest = out_ptr + (t.to(tl.int64) * H + heads)[:, None] * LATENT
        tl.store(lse_ptr + t.to(tl.int64) * H + heads, lse, mask=h_ok)
    if DEQUANT:
        tl.store(dest + dl[None, :], (acc * inv).to(dest.dtype.element_ty), mask=h_ok[:, None])
    else:
        tl.store(dest + d[None, :], (acc0 * inv).to(dest.dtype.element_ty), mask=h_ok[:, None])
        tl.store(dest + (d + TILE)[None, :], (acc1 * inv).to(dest.dtype.element_ty), mask=h_ok[:, None])
        tl.store(dest + (d + 2 * TILE)[None, :], (acc2 * inv).to(dest.dtype.element_ty), mask=h_ok[:, None])
        tl.store(dest + (d + 3 * TILE)[None, :], (acc3 * inv).to(dest.dtype.element_ty), mask=h_ok[:, None])


def sparse_mla(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float) -> tuple[Tensor, Tensor]:
    """Attention of each query row over its own selected FP8 MLA rows; returns (out, lse).

    q: bf16 [T, H, 576] (512 latent + 64 rope, 1..128 heads); kv: uint8 [S, 656]; indices: int32 [T, topk] slots,
    -1 for none. Returns out bf16 [T, H, 512] and lse f32 [T, H] (natural log). A row without any valid slot gives
    zeros and lse = -inf. Few rows (decode) split the index list (split-K) and a second launch merges the parts by
    their lse; the autotuner picks the split count per shape (timing each with its merge), so a captured graph
    keeps its grids.
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
    multiprocessors = sm_count(q)
    two_passes = tokens > 0 and uses_two_passes(tokens, heads, multiprocessors)
    _LAST_PATH[0] = "two-pass" if two_passes else "split-K"
    if two_passes:
        return two_pass_sparse_mla(q, kv, indices, sm_scale, multiprocessors)
    return split_k_sparse_mla(q, kv, indices, sm_scale, multiprocessors)


def uses_two_passes(tokens: int, heads: int, multiprocessors: int) -> bool:
    """Decode with several query rows takes the two-pass kernels (sparse_mla_two_pass.py); one or a few rows keep
    split-K, whose values pass would have too few programs."""
    return tokens >= TWO_PASS_MIN_TOKENS and wants_partials(tokens, heads, multiprocessors)


def split_k_sparse_mla(
    q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, multiprocessors: int
) -> tuple[Tensor, Tensor]:
    """sparse_mla in one pass per split of the index list, then the split merge; arguments already checked."""
    tokens, heads, _ = q.shape
    topk = indices.shape[1]
    out = torch.empty(tokens, heads, LATENT_DIM, dtype=torch.bfloat16, device=q.device)
    lse = torch.empty(tokens, heads, dtype=torch.float32, device=q.device)
    if tokens == 0:
        return out, lse
    cap = max_splits(tokens, heads, topk, multiprocessors) if wants_partials(tokens, heads, multiprocessors) else 1
    if cap > 1:
        part = torch.empty(tokens * cap * heads * LATENT_DIM, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(tokens * cap * heads, dtype=torch.float32, device=q.device)
    else:
        part, part_lse = out, lse  # unused without splits

    def grid(meta: dict[str, int]) -> tuple[int, int, int]:
        return (triton.cdiv(heads, meta["BLOCK_H"]), min(meta["num_splits"], cap), tokens)

    _LAST_LAUNCH[0] = _sparse_mla_kernel[grid](
        q,
        kv.view(FP8),
        kv.view(torch.float32),
        kv.view(torch.bfloat16),
        indices,
        out,
        lse,
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
        capability_key(q),
        PARTIAL=cap > 1,
        ROW_BYTES=MLA_ROW_BYTES,
        SCALE_OFFSET=MLA_SCALE_OFFSET,
        ROPE_OFFSET=MLA_ROPE_OFFSET,
        LATENT=LATENT_DIM,
        TILES=LATENT_TILES,
        ROPE=ROPE_DIM,
    )
    if cap > 1:
        config = _sparse_mla_kernel.best_config
        merge_splits(part, part_lse, out, lse, _split_count({**config.kwargs, "split_cap": cap}))
    return out, lse


_LAST_LAUNCH: list[object] = [None]
_LAST_PATH = ["split-K"]


def last_path() -> str:
    """Which kernels the latest sparse_mla call ran, for benchmarks: "split-K" or "two-pass"."""
    return _LAST_PATH[0]


def last_launch() -> tuple[triton.Config | None, object]:
    """What ran in the latest call, for benchmarks: the autotuner's config (tile, warps, stages, split count) and
    the compiled kernel (`n_regs`, `n_spills`, `metadata.shared`; None under the interpreter)."""
    return getattr(_sparse_mla_kernel, "best_config", None), _LAST_LAUNCH[0]


assert QUANT_BLOCK * LATENT_TILES == LATENT_DIM
