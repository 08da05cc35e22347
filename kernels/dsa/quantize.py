"""FP8 block quantization and the two cache writers (656-byte MLA rows, 8448-byte index-K pages).

All three share `_pow2_scale_exponent`, which computes the exponent of
`scale = 2 ** ceil(log2(max(amax / 448, 1e-4)))` from amax's bits: no division, no log2, so it is exact and
agrees with the float64 twin to the bit. Dividing by a power of two is then exact too, and the only rounding left
is the one conversion to e4m3 (round to nearest even).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsegate.kernels.dsa._configs import require_fp8_capability
from sparsegate.kernels.dsa._layout import (
    FP8,
    INDEX_DIM,
    INDEX_PAGE_BYTES,
    INDEX_SCALE_OFFSET,
    LATENT_DIM,
    LATENT_TILES,
    MLA_ROPE_OFFSET,
    MLA_ROW_BYTES,
    MLA_SCALE_OFFSET,
    PAGE_SIZE,
    QUANT_BLOCK,
    ROPE_DIM,
    check_byte_rows,
)

QUANT_ROWS = 16  # rows per program in quantize_fp8_blocks


@triton.jit
def _pow2_scale_exponent(amax):
    # amax >= 0, float32. Returns k = ceil(log2(max(amax / 448, 1e-4))) as int32.
    bits = amax.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127  # amax = 1.m * 2**exponent
    mantissa = bits & 0x7FFFFF
    # 448 = 1.75 * 2**8, so amax / 448 passes 2**(exponent - 8) exactly when 1.m > 1.75 (mantissa 0x600000).
    k = exponent - 8 + (mantissa > 0x600000).to(tl.int32)
    return tl.maximum(k, -13)  # ceil(log2(1e-4)) = -13; also catches amax = 0 and subnormals


@triton.jit
def _pow2(k):
    # 2**k as float32, built from its exponent field; exact for -126 <= k <= 127.
    return ((k + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _quantize_blocks_kernel(
    x_ptr,  # [R, D] bf16 / f32
    q_ptr,  # [R, D] e4m3
    scale_ptr,  # [R, D // BLOCK] f32
    rows,
    stride_x,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [ROWS]
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    r_ok = r < rows
    x = tl.load(x_ptr + r[:, None].to(tl.int64) * stride_x + c[None, :], mask=r_ok[:, None], other=0.0)
    x = x.to(tl.float32)  # [ROWS, BLOCK]
    k = _pow2_scale_exponent(tl.max(tl.abs(x), axis=1))  # [ROWS]
    q = (x * _pow2(-k)[:, None]).to(q_ptr.dtype.element_ty)
    tl.store(q_ptr + r[:, None].to(tl.int64) * D + c[None, :], q, mask=r_ok[:, None])
    tl.store(scale_ptr + r.to(tl.int64) * (D // BLOCK) + tl.program_id(1), _pow2(k), mask=r_ok)


@triton.jit
def _write_mla_kv_kernel(
    latent_ptr,  # [T, 512] bf16
    rope_ptr,  # [T, 64] bf16
    slots_ptr,  # [T] int64
    row_fp8_ptr,  # the cache as e4m3 [S, 656]
    row_f32_ptr,  # the cache as f32 [S, 164]
    row_bf16_ptr,  # the cache as bf16 [S, 328]
    stride_latent,
    stride_rope,
    ROW_BYTES: tl.constexpr,
    SCALE_OFFSET: tl.constexpr,
    ROPE_OFFSET: tl.constexpr,
    TILES: tl.constexpr,
    TILE: tl.constexpr,
    ROPE: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    if slot >= 0:
        tile = tl.arange(0, TILES)
        d = tl.arange(0, TILE)
        x = tl.load(latent_ptr + t * stride_latent + tile[:, None] * TILE + d[None, :]).to(tl.float32)  # [4, 128]
        k = _pow2_scale_exponent(tl.max(tl.abs(x), axis=1))  # [4]
        q = (x * _pow2(-k)[:, None]).to(row_fp8_ptr.dtype.element_ty)
        tl.store(row_fp8_ptr + slot * ROW_BYTES + tile[:, None] * TILE + d[None, :], q)
        tl.store(row_f32_ptr + slot * (ROW_BYTES // 4) + (tile + SCALE_OFFSET // 4), _pow2(k))
        r = tl.arange(0, ROPE)
        rope = tl.load(rope_ptr + t * stride_rope + r)  # [64] bf16, copied as is
        tl.store(row_bf16_ptr + slot * (ROW_BYTES // 2) + (r + ROPE_OFFSET // 2), rope)


@triton.jit
def _write_index_k_kernel(
    k_ptr,  # [T, 128] bf16
    slots_ptr,  # [T] int64
    page_fp8_ptr,  # the pages as e4m3 [P, 8448]
    page_f32_ptr,  # the pages as f32 [P, 2112]
    stride_k,
    PAGE_BYTES: tl.constexpr,
    SCALE_OFFSET: tl.constexpr,
    PAGE: tl.constexpr,
    DIM: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slots_ptr + t).to(tl.int64)
    if slot >= 0:
        page = slot // PAGE
        offset = slot % PAGE
        d = tl.arange(0, DIM)
        x = tl.load(k_ptr + t * stride_k + d).to(tl.float32)  # [128]
        k = _pow2_scale_exponent(tl.max(tl.abs(x), axis=0))  # scalar
        q = (x * _pow2(-k)).to(page_fp8_ptr.dtype.element_ty)
        tl.store(page_fp8_ptr + page * PAGE_BYTES + offset * DIM + d, q)
        tl.store(page_f32_ptr + page * (PAGE_BYTES // 4) + SCALE_OFFSET // 4 + offset, _pow2(k))


def quantize_fp8_blocks(x: Tensor, block: int = QUANT_BLOCK) -> tuple[Tensor, Tensor]:
    """Quantize the last dimension of `x` in blocks of `block` values to float8 e4m3 with power-of-two scales.

    Returns `(q, scale)`: `q` has x's shape in float8_e4m3fn, `scale` is float32 `[..., D // block]`.
    """
    if x.dtype not in (torch.bfloat16, torch.float32):
        raise TypeError(f"quantize_fp8_blocks takes bf16 or float32, got {x.dtype}; cast x first")
    d = x.shape[-1]
    if block < 16 or block & (block - 1) or d % block:
        raise ValueError(f"block must be a power of two >= 16 dividing the last dimension ({d}); got {block}")
    require_fp8_capability(x, "quantize_fp8_blocks")
    flat = x.reshape(-1, d)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    rows = flat.shape[0]
    q = torch.empty(x.shape, dtype=FP8, device=x.device)
    scale = torch.empty(*x.shape[:-1], d // block, dtype=torch.float32, device=x.device)
    if rows:
        grid = (triton.cdiv(rows, QUANT_ROWS), d // block)
        _quantize_blocks_kernel[grid](flat, q, scale, rows, flat.stride(0), D=d, BLOCK=block, ROWS=QUANT_ROWS)
    return q, scale


def _check_slots(slots: Tensor, tokens: int, op: str) -> Tensor:
    if slots.shape != (tokens,):
        raise ValueError(f"{op}: slots must be [T] = [{tokens}], got {tuple(slots.shape)}")
    if slots.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: slots must be int32 or int64, got {slots.dtype}")
    return slots.to(torch.int64).contiguous()


def write_mla_kv(cache: Tensor, latent: Tensor, rope: Tensor, slots: Tensor) -> None:
    """Quantize `latent` in four tiles of 128 and write 656-byte rows into `cache` at `slots` (in place).

    cache: uint8 [S, 656]; latent: bf16 [T, 512]; rope: bf16 [T, 64]; slots: int [T], negative = skip.
    """
    check_byte_rows("cache", cache, MLA_ROW_BYTES, "S")
    tokens = latent.shape[0]
    if latent.shape != (tokens, LATENT_DIM) or rope.shape != (tokens, ROPE_DIM):
        raise ValueError(f"latent must be [T, {LATENT_DIM}] and rope [T, {ROPE_DIM}]; got {latent.shape}, {rope.shape}")
    if latent.dtype != torch.bfloat16 or rope.dtype != torch.bfloat16:
        raise TypeError(f"latent and rope must be bf16, got {latent.dtype}, {rope.dtype}")
    slots = _check_slots(slots, tokens, "write_mla_kv")
    require_fp8_capability(cache, "write_mla_kv")
    latent = latent if latent.stride(-1) == 1 else latent.contiguous()
    rope = rope if rope.stride(-1) == 1 else rope.contiguous()
    if tokens:
        _write_mla_kv_kernel[(tokens,)](
            latent,
            rope,
            slots,
            cache.view(FP8),
            cache.view(torch.float32),
            cache.view(torch.bfloat16),
            latent.stride(0),
            rope.stride(0),
            ROW_BYTES=MLA_ROW_BYTES,
            SCALE_OFFSET=MLA_SCALE_OFFSET,
            ROPE_OFFSET=MLA_ROPE_OFFSET,
            TILES=LATENT_TILES,
            TILE=QUANT_BLOCK,
            ROPE=ROPE_DIM,
        )


def write_index_k(pages: Tensor, k: Tensor, slots: Tensor) -> None:
    """Quantize each 128-dim key with one scale and write it into the 8448-byte page holding its slot (in place).

    pages: uint8 [P, 8448]; k: bf16 [T, 128]; slots: int [T] with slot = page * 64 + offset, negative = skip.
    """
    check_byte_rows("pages", pages, INDEX_PAGE_BYTES, "P")
    tokens = k.shape[0]
    if k.shape != (tokens, INDEX_DIM) or k.dtype != torch.bfloat16:
        raise ValueError(f"k must be bf16 [T, {INDEX_DIM}], got {k.dtype} {tuple(k.shape)}")
    slots = _check_slots(slots, tokens, "write_index_k")
    require_fp8_capability(pages, "write_index_k")
    k = k if k.stride(-1) == 1 else k.contiguous()
    if tokens:
        _write_index_k_kernel[(tokens,)](
            k,
            slots,
            pages.view(FP8),
            pages.view(torch.float32),
            k.stride(0),
            PAGE_BYTES=INDEX_PAGE_BYTES,
            SCALE_OFFSET=INDEX_SCALE_OFFSET,
            PAGE=PAGE_SIZE,
            DIM=INDEX_DIM,
        )
