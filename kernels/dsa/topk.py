"""Top-k of each logits row by radix select, and the positions -> physical slots transform.

Top-k never sorts. Each float is mapped to a uint32 key whose unsigned order is the float order. Passes over the row
build histograms of one key digit each (most significant first), restricted to the keys that match the digits chosen
so far; each pass finds the digit holding the k-th largest key, and the search stops early once that digit's whole
bin is taken. A last pass writes every key above the threshold and enough keys equal to it. No shared-memory buffer
scales with the row, which keeps it inside Ada's 99 KiB (sgl-kernel's CUDA top-k asks for 128 KB).

Two paths, chosen by shape: with at least one row per multiprocessor (prefill) one program walks a whole row with
5-bit digits; with fewer rows (decode) each row is split over chunks of programs that add 8-bit histograms into
global memory, one launch per digit, with the search state kept on the device (CUDA-graph safe either way).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsegate.kernels.dsa._configs import interpreting, sm_count, tensor_capability
from sparsegate.kernels.dsa._layout import PAGE_SIZE

TOPK_BLOCK = 4096  # logits per loop step
RADIX_BITS = 8  # digit width of the split path: 4 launches of histograms
ROW_RADIX_BITS = 5  # one program per row: 32-bin histograms cost ~8x less per key; 7 passes still win by ~13%


def radix_shifts(bits: int) -> list[int]:
    """Where each digit starts, most significant first; the last one may overlap chosen bits to end at bit 0."""
    return [max(shift, 0) for shift in range(32 - bits, -bits, -bits)]


def topk_warps(capability: tuple[int, int] | None) -> int:
    """16 warps keep enough loads in flight for one row per SM on both Ada and Hopper."""
    return 4 if capability is None else 16


@triton.jit
def _ordered_key(x):
    # float32 -> uint32 whose unsigned order is the float order: flip all bits of negatives, the sign of the rest.
    bits = x.to(tl.uint32, bitcast=True)
    negative = (bits >> 31) != 0
    return tl.where(negative, ~bits, bits | 0x80000000)


@triton.jit
def _digit_histogram(row, lo, hi, prefix, known, shift, BLOCK: tl.constexpr, BINS: tl.constexpr):
    # Histogram of key byte `shift` over positions [lo, hi) whose higher bytes equal `prefix` (under mask `known`).
    offs = tl.arange(0, BLOCK)
    bins = tl.arange(0, BINS)
    hist = tl.zeros((BINS,), dtype=tl.int32)
    dropped = 0
    for start in range(lo, hi, BLOCK):
        i = start + offs  # [BLOCK]
        ok = i < hi
        key = _ordered_key(tl.load(row + i, mask=ok, other=0.0))
        match = ok & ((key & known) == prefix)
        digit = tl.where(match, (key >> shift) & (BINS - 1), 0).to(tl.int32)
        hist += tl.histogram(digit, BINS)
        dropped += tl.sum((~match).to(tl.int32), axis=0)
    return hist - tl.where(bins == 0, dropped, 0)  # non-matching keys were counted in bin 0


@triton.jit
def _choose_digit(hist, need, BINS: tl.constexpr):
    # The digit whose bin holds the need-th largest key; how many keys lie above that bin; how many in it.
    bins = tl.arange(0, BINS)
    at_or_above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist  # [BINS] keys with digit >= bin
    chosen = tl.max(tl.where(at_or_above >= need, bins, -1), axis=0)
    above = tl.sum(tl.where(bins > chosen, hist, 0), axis=0)
    in_bin = tl.sum(tl.where(bins == chosen, hist, 0), axis=0)
    return chosen, above, in_bin


@triton.jit
def _write_selection(
    row, out, lo, hi, prefix, known, first_tied, need, above_base, tied_base, BLOCK: tl.constexpr, WRITE: tl.constexpr
):
    # Over [lo, hi): keys above the threshold go to out[above_base + rank], the first `need` tied ones after
    # first_tied. Returns how many of each this range held; with WRITE false it only counts.
    offs = tl.arange(0, BLOCK)
    n_above = 0
    n_tied = 0
    for start in range(lo, hi, BLOCK):
        i = start + offs
        ok = i < hi
        key = _ordered_key(tl.load(row + i, mask=ok, other=0.0)) & known
        above = ok & (key > prefix)
        tied = ok & (key == prefix)
        above_rank = above_base + n_above + tl.cumsum(above.to(tl.int32), axis=0) - 1
        tied_rank = tied_base + n_tied + tl.cumsum(tied.to(tl.int32), axis=0) - 1
        if WRITE:
            tl.store(out + above_rank, i, mask=above)
            tl.store(out + (tied_rank + first_tied), i, mask=tied & (tied_rank < need))
        n_above += tl.sum(above.to(tl.int32), axis=0)
        n_tied += tl.sum(tied.to(tl.int32), axis=0)
    return n_above, n_tied


@triton.jit
def _topk_row_kernel(
    logits_ptr,  # [R, N] f32
    lengths_ptr,  # [R] int32
    out_ptr,  # [R, K] int32
    N,
    stride_row,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
    BITS: tl.constexpr,
):
    # One program per row: for many rows (prefill), where rows alone fill the GPU.
    BINS: tl.constexpr = 1 << BITS
    r = tl.program_id(0)
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + r), 0), N)
    row = logits_ptr + r.to(tl.int64) * stride_row
    out = out_ptr + r.to(tl.int64) * K
    kk = tl.arange(0, K)
    if length <= K:  # a short row keeps every visible position
        tl.store(out + kk, tl.where(kk < length, kk, -1))
    else:
        prefix = tl.zeros((), dtype=tl.uint32)  # chosen key bytes, in place
        known = tl.zeros((), dtype=tl.uint32)  # mask of the chosen bytes
        need = K  # how many of the keys matching `prefix` still belong to the top-k
        shift = 32
        while shift > 0:
            shift = tl.maximum(shift - BITS, 0)  # the last digit may overlap bytes already chosen: harmless
            hist = _digit_histogram(row, 0, length, prefix, known, shift, BLOCK, BINS)
            chosen, above, in_bin = _choose_digit(hist, need, BINS)
            need -= above
            prefix = prefix | (chosen.to(tl.uint32) << shift)
            known = known | (tl.full((), BINS - 1, tl.uint32) << shift)
            if in_bin == need:
                shift = 0  # the whole bin is taken: no need to resolve lower bytes
        _write_selection(row, out, 0, length, prefix, known, K - need, need, 0, 0, BLOCK, True)


# The split path keeps each row's search state in global memory between launches: [prefix, known, need, done,
# keys written above, keys written tied, -, -] as int32.
STATE = 8


@triton.jit
def _topk_init_kernel(lengths_ptr, state_ptr, hist_ptr, N, K: tl.constexpr, BINS: tl.constexpr, STATE: tl.constexpr):
    r = tl.program_id(0)
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + r), 0), N)
    fields = tl.arange(0, STATE)
    init = tl.where(fields == 2, K, 0)
    init = tl.where(fields == 3, (length <= K).to(tl.int32), init)
    tl.store(state_ptr + r * STATE + fields, init)
    tl.store(hist_ptr + r * BINS + tl.arange(0, BINS), tl.zeros((BINS,), dtype=tl.int32))


@triton.jit
def _topk_hist_kernel(
    logits_ptr,  # [R, N] f32
    lengths_ptr,  # [R] int32
    state_ptr,  # [R, STATE] int32
    hist_ptr,  # [R, BINS] int32, zero on entry
    N,
    stride_row,
    shift,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
    BITS: tl.constexpr,
    STATE: tl.constexpr,
):
    # Programs (row, chunk): each adds its chunk's histogram of one key byte into the row's.
    BINS: tl.constexpr = 1 << BITS
    r = tl.program_id(0)
    lo = tl.program_id(1) * CHUNK
    state = state_ptr + r * STATE
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + r), 0), N)
    if (tl.load(state + 3) == 0) & (lo < length):
        row = logits_ptr + r.to(tl.int64) * stride_row
        prefix = tl.load(state).to(tl.uint32, bitcast=True)
        known = tl.load(state + 1).to(tl.uint32, bitcast=True)
        hist = _digit_histogram(row, lo, tl.minimum(lo + CHUNK, length), prefix, known, shift, BLOCK, BINS)
        tl.atomic_add(hist_ptr + r * BINS + tl.arange(0, BINS), hist)


@triton.jit
def _topk_select_kernel(state_ptr, hist_ptr, shift, BITS: tl.constexpr, STATE: tl.constexpr):
    # One program per row: pick this byte of the threshold from the summed histogram; clear it for the next byte.
    BINS: tl.constexpr = 1 << BITS
    r = tl.program_id(0)
    state = state_ptr + r * STATE
    if tl.load(state + 3) == 0:
        bins = hist_ptr + r * BINS + tl.arange(0, BINS)
        need = tl.load(state + 2)
        chosen, above, in_bin = _choose_digit(tl.load(bins), need, BINS)
        need -= above
        prefix = tl.load(state).to(tl.uint32, bitcast=True) | (chosen.to(tl.uint32) << shift)
        known = tl.load(state + 1).to(tl.uint32, bitcast=True) | (tl.full((), BINS - 1, tl.uint32) << shift)
        tl.store(state, prefix.to(tl.int32, bitcast=True))
        tl.store(state + 1, known.to(tl.int32, bitcast=True))
        tl.store(state + 2, need)
        tl.store(state + 3, ((in_bin == need) | (shift == 0)).to(tl.int32))
        tl.store(bins, tl.zeros((BINS,), dtype=tl.int32))


@triton.jit
def _topk_collect_kernel(
    logits_ptr,  # [R, N] f32
    lengths_ptr,  # [R] int32
    state_ptr,  # [R, STATE] int32
    out_ptr,  # [R, K] int32
    N,
    stride_row,
    K: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
    STATE: tl.constexpr,
):
    # Programs (row, chunk) write their chunk's selected positions at places reserved with atomics, so which tied
    # keys are kept may vary between runs; the selected values do not.
    r = tl.program_id(0)
    lo = tl.program_id(1) * CHUNK
    state = state_ptr + r * STATE
    out = out_ptr + r.to(tl.int64) * K
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + r), 0), N)
    offs = tl.arange(0, BLOCK)
    if length <= K:  # a short row keeps every visible position; the chunks tile the K output places
        for start in range(lo, tl.minimum(lo + CHUNK, K), BLOCK):
            j = start + offs
            tl.store(out + j, tl.where(j < length, j, -1), mask=j < K)
    elif lo < length:
        row = logits_ptr + r.to(tl.int64) * stride_row
        prefix = tl.load(state).to(tl.uint32, bitcast=True)
        known = tl.load(state + 1).to(tl.uint32, bitcast=True)
        need = tl.load(state + 2)
        hi = tl.minimum(lo + CHUNK, length)
        counted_above, counted_tied = _write_selection(row, out, lo, hi, prefix, known, 0, 0, 0, 0, BLOCK, False)
        above_base = tl.atomic_add(state + 4, counted_above)
        tied_base = tl.atomic_add(state + 5, counted_tied)
        _write_selection(row, out, lo, hi, prefix, known, K - need, need, above_base, tied_base, BLOCK, True)


def topk_indices(logits: Tensor, lengths: Tensor, k: int = 2048) -> Tensor:
    """The `k` largest of the first `lengths[r]` logits of each row, as int32 positions, -1 padded.

    logits: f32 [R, N]; lengths: int32 [R]. A row with lengths[r] <= k gets 0 .. len-1. Order inside a row is
    unspecified and ties may resolve either way. Lengths are read on the device: CUDA-graph safe.

    Many rows (prefill) run one program per row. Fewer rows than multiprocessors (decode) split each row over
    chunks of SPLIT_CHUNK logits, one launch per key byte, with the search state kept on the device.
    """
    if logits.dim() != 2 or logits.dtype != torch.float32:
        raise ValueError(f"logits must be float32 [R, N], got {logits.dtype} {tuple(logits.shape)}")
    rows, width = logits.shape
    if lengths.shape != (rows,) or lengths.dtype != torch.int32:
        raise ValueError(f"lengths must be int32 [R] = [{rows}], got {lengths.dtype} {tuple(lengths.shape)}")
    if k < 16 or k & (k - 1):
        raise ValueError(f"k must be a power of two >= 16 (DSA uses 2048), got {k}")
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    lengths = lengths.contiguous()
    out = torch.empty(rows, k, dtype=torch.int32, device=logits.device)
    if rows == 0:
        return out
    warps = topk_warps(tensor_capability(logits))
    block = 1024 if interpreting() else TOPK_BLOCK
    if rows >= sm_count(logits):
        _topk_row_kernel[(rows,)](
            logits, lengths, out, width, logits.stride(0), K=k, BLOCK=block, BITS=ROW_RADIX_BITS, num_warps=warps
        )
        return out
    chunk = 2 * block
    chunks = triton.cdiv(max(width, k), chunk)
    state = torch.empty(rows, STATE, dtype=torch.int32, device=logits.device)
    hist = torch.empty(rows, 1 << RADIX_BITS, dtype=torch.int32, device=logits.device)
    _topk_init_kernel[(rows,)](lengths, state, hist, width, K=k, BINS=1 << RADIX_BITS, STATE=STATE)
    for shift in radix_shifts(RADIX_BITS):
        _topk_hist_kernel[(rows, chunks)](
            logits, lengths, state, hist, width, logits.stride(0), shift,
            CHUNK=chunk, BLOCK=block, BITS=RADIX_BITS, STATE=STATE, num_warps=warps,
        )  # fmt: skip
        _topk_select_kernel[(rows,)](state, hist, shift, BITS=RADIX_BITS, STATE=STATE)
    _topk_collect_kernel[(rows, chunks)](
        logits,
        lengths,
        state,
        out,
        width,
        logits.stride(0),
        K=k,
        CHUNK=chunk,
        BLOCK=block,
        STATE=STATE,
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
