"""Top-k of each logits row by radix select, and the positions -> physical slots transform.

Top-k runs one program per row and never sorts. Each float is mapped to a uint32 key whose unsigned order is the
float order. Four passes over the row build 256-bin histograms of one key byte each (most significant first),
restricted to the keys that match the bytes chosen so far; each pass finds the byte holding the k-th largest key,
and stops early once that byte's whole bin is taken. A last pass writes every key above the threshold and the first
keys equal to it, in index order, so ties resolve towards lower positions. No shared-memory buffer scales with the
row, which is what keeps it inside Ada's 99 KiB (sgl-kernel's CUDA top-k asks for 128 KB).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsegate.kernels.dsa._configs import interpreting, tensor_capability
from sparsegate.kernels.dsa._layout import PAGE_SIZE

TOPK_BLOCK = 4096  # logits per loop step
RADIX_BITS = 8
RADIX_BINS = 1 << RADIX_BITS


def topk_warps(capability: tuple[int, int] | None) -> int:
    """16 warps keep enough loads in flight for one row per SM on both Ada and Hopper."""
    return 4 if capability is None else 16


def topk_shared_memory(num_warps: int) -> int:
    """Histogram bins per warp, scan scratch and reduction scratch: a few KiB whatever the row length."""
    return num_warps * RADIX_BINS * 4 + TOPK_BLOCK * 4 + 4096


@triton.jit
def _ordered_key(x):
    # float32 -> uint32 whose unsigned order is the float order: flip all bits of negatives, the sign of the rest.
    bits = x.to(tl.uint32, bitcast=True)
    negative = (bits >> 31) != 0
    return tl.where(negative, ~bits, bits | 0x80000000)


@triton.jit
def _topk_kernel(
    logits_ptr,  # [R, N] f32
    lengths_ptr,  # [R] int32
    out_ptr,  # [R, K] int32
    N,
    stride_row,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    BITS: tl.constexpr,
):
    BINS: tl.constexpr = 1 << BITS
    r = tl.program_id(0)
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + r), 0), N)
    row = logits_ptr + r.to(tl.int64) * stride_row
    out = out_ptr + r.to(tl.int64) * K
    kk = tl.arange(0, K)
    if length <= K:  # a short row keeps every visible position
        tl.store(out + kk, tl.where(kk < length, kk, -1))
    else:
        bins = tl.arange(0, BINS)
        offs = tl.arange(0, BLOCK)
        prefix = tl.zeros((), dtype=tl.uint32)  # chosen key bytes, in place
        known = tl.zeros((), dtype=tl.uint32)  # mask of the chosen bytes
        need = K  # how many of the keys matching `prefix` still belong to the top-k
        shift = 32
        while shift > 0:
            shift -= BITS
            hist = tl.zeros((BINS,), dtype=tl.int32)
            dropped = 0
            for start in range(0, length, BLOCK):
                i = start + offs  # [BLOCK]
                ok = i < length
                key = _ordered_key(tl.load(row + i, mask=ok, other=0.0))
                match = ok & ((key & known) == prefix)
                digit = tl.where(match, (key >> shift) & (BINS - 1), 0).to(tl.int32)
                hist += tl.histogram(digit, BINS)
                dropped += tl.sum((~match).to(tl.int32), axis=0)
            hist -= tl.where(bins == 0, dropped, 0)  # non-matching keys were counted in bin 0
            at_or_above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist  # [BINS] keys with digit >= bin
            chosen = tl.max(tl.where(at_or_above >= need, bins, -1), axis=0)
            need -= tl.sum(tl.where(bins > chosen, hist, 0), axis=0)
            prefix = prefix | (chosen.to(tl.uint32) << shift)
            known = known | (tl.full((), BINS - 1, tl.uint32) << shift)
            if tl.sum(tl.where(bins == chosen, hist, 0), axis=0) == need:
                shift = 0  # the whole bin is taken: no need to resolve lower bytes
        above_base = 0
        tied_base = 0
        for start in range(0, length, BLOCK):
            i = start + offs
            ok = i < length
            key = _ordered_key(tl.load(row + i, mask=ok, other=0.0)) & known
            above = ok & (key > prefix)
            tied = ok & (key == prefix)
            above_rank = above_base + tl.cumsum(above.to(tl.int32), axis=0) - 1
            tied_rank = tied_base + tl.cumsum(tied.to(tl.int32), axis=0) - 1
            tl.store(out + above_rank, i, mask=above)
            tl.store(out + (tied_rank + (K - need)), i, mask=tied & (tied_rank < need))
            above_base += tl.sum(above.to(tl.int32), axis=0)
            tied_base += tl.sum(tied.to(tl.int32), axis=0)


def topk_indices(logits: Tensor, lengths: Tensor, k: int = 2048) -> Tensor:
    """The `k` largest of the first `lengths[r]` logits of each row, as int32 positions, -1 padded.

    logits: f32 [R, N]; lengths: int32 [R]. A row with lengths[r] <= k gets 0 .. len-1. Order inside a row is
    unspecified; ties go to lower positions. Lengths are read on the device: CUDA-graph safe.
    """
    if logits.dim() != 2 or logits.dtype != torch.float32:
        raise ValueError(f"logits must be float32 [R, N], got {logits.dtype} {tuple(logits.shape)}")
    rows = logits.shape[0]
    if lengths.shape != (rows,) or lengths.dtype != torch.int32:
        raise ValueError(f"lengths must be int32 [R] = [{rows}], got {lengths.dtype} {tuple(lengths.shape)}")
    if k < 16 or k & (k - 1):
        raise ValueError(f"k must be a power of two >= 16 (DSA uses 2048), got {k}")
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    out = torch.empty(rows, k, dtype=torch.int32, device=logits.device)
    if rows:
        warps = topk_warps(tensor_capability(logits))
        block = 1024 if interpreting() else TOPK_BLOCK
        _topk_kernel[(rows,)](
            logits,
            lengths.contiguous(),
            out,
            logits.shape[1],
            logits.stride(0),
            K=k,
            BLOCK=block,
            BITS=RADIX_BITS,
            num_warps=warps,
        )
    return out


@triton.jit
def _slots_kernel(
    pos_ptr,  # [R, K] int32
    table_ptr,  # [R, max_pages] int32
    out_ptr,  # [R, K] int32
    K,
    max_pages,
    stride_pos,
    stride_table,
    PAGE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    c_ok = c < K
    pos = tl.load(pos_ptr + r.to(tl.int64) * stride_pos + c, mask=c_ok, other=-1)
    valid = (pos >= 0) & (pos // PAGE < max_pages)
    page = tl.load(table_ptr + r.to(tl.int64) * stride_table + pos // PAGE, mask=valid, other=0)
    slot = tl.where(valid, page * PAGE + pos % PAGE, -1)
    tl.store(out_ptr + r.to(tl.int64) * K + c, slot, mask=c_ok)


def slots_from_positions(positions: Tensor, page_table: Tensor, page_size: int = PAGE_SIZE) -> Tensor:
    """Map logical positions to physical cache slots: `page_table[r, pos // page_size] * page_size + pos % page_size`.

    positions: int32 [R, k], -1 padded; page_table: int32 [R, max_pages]. -1 (and any position past the table) maps
    to -1. CUDA-graph safe.
    """
    if positions.dim() != 2 or positions.dtype != torch.int32:
        raise ValueError(f"positions must be int32 [R, k], got {positions.dtype} {tuple(positions.shape)}")
    rows, k = positions.shape
    if page_table.dim() != 2 or page_table.shape[0] != rows or page_table.dtype != torch.int32:
        raise ValueError(
            f"page_table must be int32 [R, max_pages] with R = {rows}, got {page_table.dtype} {page_table.shape}"
        )
    if page_size < 1 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two, got {page_size}")
    positions = positions if positions.stride(1) == 1 else positions.contiguous()
    page_table = page_table if page_table.stride(1) == 1 else page_table.contiguous()
    out = torch.empty_like(positions)
    if rows and k:
        block = min(1024, triton.next_power_of_2(k))
        _slots_kernel[(rows, triton.cdiv(k, block))](
            positions,
            page_table,
            out,
            k,
            page_table.shape[1],
            positions.stride(0),
            page_table.stride(0),
            PAGE=page_size,
            BLOCK=block,
        )
    return out
