"""Top-k of each logits row by threshold estimation and compaction, and the positions -> physical slots transform.

Top-k never sorts. Each float maps to an int32 key whose signed order is the float order. A strided sample of the
row gives a threshold that, with a margin of four standard deviations, lies below the k-th largest key; one pass
over the row compacts the keys at or above it (a few thousand of a 128K row) into a small buffer, and a five-way
search on the key value over those candidates, held in registers, finds the exact k-th largest key (14 counting
steps for 32-bit keys). The result is exact whenever the candidates number between k and CANDIDATES: that count is
checked on the device, and a row that misses it (a sample far off, or heavy ties) is solved by bisection over the
whole row instead, slower (up to 32 passes over it) and still exact. No buffer scales with the row, so shared
memory stays far inside Ada's 99 KiB.

Two launch shapes, chosen by row count: with at least one row per multiprocessor (prefill) one program solves a
row, holding rows of up to ROW_BLOCK logits in registers outright; fewer rows (decode) take three launches: one
program a row sets the threshold, chunks of programs compact (reserving buffer places with an atomic counter),
and one program a row selects. Lengths are read on the device, grids depend on shapes only: CUDA-graph safe.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsegate.kernels.dsa._configs import persistent_zeros, sm_count, tensor_capability
from sparsegate.kernels.dsa._layout import PAGE_SIZE

CANDIDATES = 8192  # compacted keys per row the select step holds in registers
SAMPLE = 4096  # evenly spaced logits per row that set the threshold
SAMPLE_SIGMAS = 4.0  # margin of the threshold's rank, in binomial standard deviations
ROW_BLOCK = 8192  # the one-program-per-row path keeps rows up to this long in registers
CHUNK = 4096  # logits per program when a row is split (decode)
STREAM = 2048  # logits a step where the row kernel streams a long row (8192 spills on sm_89)
KEY_MIN = -2147483647  # below every key of a non-NaN float; -2**31 marks "no key"


def topk_warps(capability: tuple[int, int] | None) -> int:
    """8 warps for the split path's kernels (4096-logit chunks); the interpreter wants few."""
    return 4 if capability is None else 8


def row_warps(capability: tuple[int, int] | None) -> int:
    """8 warps for one program per row: 16 would cap registers at 128 a thread, and the register-resident row
    (ROW_BLOCK keys) then spills."""
    return 4 if capability is None else 8


@triton.jit
def _ordered_key(x):
    # float32 -> int32 whose signed order is the float order: negative floats get their magnitude bits flipped.
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _kth_key(key, valid, k, slack):
    # The largest t with at least k valid keys >= t (the k-th largest valid key), by a five-way search on the key
    # value: each step counts the keys at or above four thresholds in two int32 sums of two 16-bit counts each (so
    # at most 32767 keys), which cuts the range to a fifth. Stops early at a threshold with k..k+slack keys at or
    # above it. Needs at least k valid keys.
    lo = tl.full((), -2147483647, tl.int64)  # count(key >= lo) >= k holds throughout
    hi = tl.full((), 2147483647, tl.int64)  # every t > hi has fewer than k keys >= t
    while lo < hi:
        width = hi - lo + 1
        t1 = tl.minimum(lo + tl.maximum(width // 5, 1), hi)
        t2 = tl.minimum(lo + tl.maximum(2 * width // 5, 2), hi)
        t3 = tl.minimum(lo + tl.maximum(3 * width // 5, 3), hi)
        t4 = tl.minimum(lo + tl.maximum(4 * width // 5, 4), hi)
        low = (valid & (key >= t1.to(tl.int32))).to(tl.int32) + ((valid & (key >= t2.to(tl.int32))).to(tl.int32) << 16)
        high = (valid & (key >= t3.to(tl.int32))).to(tl.int32) + ((valid & (key >= t4.to(tl.int32))).to(tl.int32) << 16)
        low = tl.sum(low, axis=0)
        high = tl.sum(high, axis=0)
        c1 = (low & 0xFFFF).to(tl.int64)
        c2 = (low >> 16).to(tl.int64)
        c3 = (high & 0xFFFF).to(tl.int64)
        c4 = (high >> 16).to(tl.int64)
        lo_next = tl.where(c4 >= k, t4, tl.where(c3 >= k, t3, tl.where(c2 >= k, t2, tl.where(c1 >= k, t1, lo))))
        hi_next = tl.where(
            c1 < k, t1 - 1, tl.where(c2 < k, t2 - 1, tl.where(c3 < k, t3 - 1, tl.where(c4 < k, t4 - 1, hi)))
        )
        close = (lo_next == t1) & (c1 <= k + slack)  # the chosen threshold is close enough: stop there
        close = close | ((lo_next == t2) & (c2 <= k + slack))
        close = close | ((lo_next == t3) & (c3 <= k + slack))
        close = close | ((lo_next == t4) & (c4 <= k + slack))
        lo = lo_next
        hi = tl.where(close, lo_next, hi_next)
    return lo.to(tl.int32)


@triton.jit
def _write_top(out, key, valid, pos, k):
    # The k largest valid keys' positions at places 0..k-1 of `out`: every key above the k-th largest and the
    # first tied ones up to k.
    threshold = _kth_key(key, valid, k, 0)
    above = valid & (key > threshold)
    tied = valid & (key == threshold)
    need = k - tl.sum(above.to(tl.int32), axis=0)
    chosen = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=0) <= need))
    place = tl.cumsum(chosen.to(tl.int32), axis=0) - 1
    tl.store(out + place, pos, mask=chosen)


@triton.jit
def _sample_threshold(row, length, K: tl.constexpr, SAMPLE: tl.constexpr, SIGMAS: tl.constexpr):
    # A key that at least K of the row's keys reach with high probability, and not many more: the rank
    # K * SAMPLE / length (plus SIGMAS standard deviations) of an evenly spaced sample, give or take half the margin.
    s = tl.arange(0, SAMPLE)
    key = _ordered_key(tl.load(row + (s.to(tl.int64) * length) // SAMPLE))  # [SAMPLE]
    expected = K * SAMPLE / length.to(tl.float32)
    want = tl.ceil(expected + SIGMAS * tl.sqrt(expected)).to(tl.int32) + 1
    want = tl.minimum(tl.maximum(want, 1), SAMPLE)
    return _kth_key(key, s < SAMPLE, want, (SIGMAS * 0.5 * tl.sqrt(expected)).to(tl.int32))


@triton.jit
def _select_whole_row(row, out, length, K: tl.constexpr, BLOCK: tl.constexpr):
    # The exact top-k of a row of any length, streamed from memory: bisection with one counting pass per step,
    # then a writing pass. Slow (up to 32 passes) and only for rows the candidate path could not solve.
    offs = tl.arange(0, BLOCK)
    lo = tl.full((), -2147483647, tl.int64)
    hi = tl.full((), 2147483647, tl.int64)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        count = 0
        for start in range(0, length, BLOCK):
            i = start + offs
            key = _ordered_key(tl.load(row + i, mask=i < length, other=float("-inf")))
            count += tl.sum(((key >= mid.to(tl.int32)) & (i < length)).to(tl.int32), axis=0)
        enough = count >= K
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, tl.where(count == K, mid, hi), mid - 1)
    threshold = lo.to(tl.int32)
    n_above = 0
    for start in range(0, length, BLOCK):
        i = start + offs
        key = _ordered_key(tl.load(row + i, mask=i < length, other=float("-inf")))
        n_above += tl.sum(((key > threshold) & (i < length)).to(tl.int32), axis=0)
    need = K - n_above
    taken_above = 0
    taken_tied = 0
    for start in range(0, length, BLOCK):
        i = start + offs
        ok = i < length
        key = _ordered_key(tl.load(row + i, mask=ok, other=float("-inf")))
        above = ok & (key > threshold)
        tied = ok & (key == threshold)
        tie_rank = taken_tied + tl.cumsum(tied.to(tl.int32), axis=0)  # 1-based
        chosen = above | (tied & (tie_rank <= need))
        place = taken_above + tl.minimum(taken_tied, need) + tl.cumsum(chosen.to(tl.int32), axis=0) - 1
        tl.store(out + place, i, mask=chosen)
        taken_above += tl.sum(above.to(tl.int32), axis=0)
        taken_tied += tl.sum(tied.to(tl.int32), axis=0)


@triton.jit
def _write_prefix(out, length, K: tl.constexpr):
    kk = tl.arange(0, K)
    tl.store(out + kk, tl.where(kk < length, kk, -1))


@triton.jit
def _topk_row_kernel(
    logits_ptr,  # [R, N] f32
    lengths_ptr,  # [R] int32
    out_ptr,  # [R, K] int32
    cand_key_ptr,  # [programs, CANDIDATES] int32 scratch (rows longer than ROW_BLOCK only)
    cand_pos_ptr,  # [programs, CANDIDATES] int32 scratch
    R,
    N,
    stride_row,
    K: tl.constexpr,
    ROW_BLOCK: tl.constexpr,
    CANDIDATES: tl.constexpr,
    SAMPLE: tl.constexpr,
    SIGMAS: tl.constexpr,
    LONG: tl.constexpr,  # rows may be longer than ROW_BLOCK: compact candidates instead of holding the row
    STREAM: tl.constexpr,  # logits a step when streaming a long row
):
    # One program per row (persistent over rows when rows are long): for many rows (prefill). The two row
    # strategies are separate specializations: compiled together they spill on sm_89.
    pid = tl.program_id(0)
    cand_key = cand_key_ptr + pid.to(tl.int64) * CANDIDATES
    cand_pos = cand_pos_ptr + pid.to(tl.int64) * CANDIDATES
    for r in range(pid, R, tl.num_programs(0)):
        r64 = tl.zeros((), dtype=tl.int64) + r  # the loop index is a plain int in the interpreter
        length = tl.minimum(tl.maximum(tl.load(lengths_ptr + r), 0), N)
        row = logits_ptr + r64 * stride_row
        out = out_ptr + r64 * K
        if length <= K:  # a short row keeps every visible position
            _write_prefix(out, length, K)
        elif not LONG:  # the whole row fits in registers
            i = tl.arange(0, ROW_BLOCK)
            key = _ordered_key(tl.load(row + i, mask=i < length, other=0.0))
            _write_top(out, key, i < length, i, K)
        else:
            if length <= CANDIDATES:  # noqa: SIM108 (a run-time condition: Triton has no run-time ternary)
                threshold = -2147483647  # every key is a candidate
            else:
                threshold = _sample_threshold(row, length, K, SAMPLE, SIGMAS)
            found = 0
            offs = tl.arange(0, STREAM)
            for start in range(0, length, STREAM):
                i = start + offs
                key = _ordered_key(tl.load(row + i, mask=i < length, other=0.0))
                keep = (i < length) & (key >= threshold)
                place = found + tl.cumsum(keep.to(tl.int32), axis=0) - 1
                tl.store(cand_key + place, key, mask=keep & (place < CANDIDATES))
                tl.store(cand_pos + place, i, mask=keep & (place < CANDIDATES))
                found += tl.sum(keep.to(tl.int32), axis=0)
            if (found >= K) & (found <= CANDIDATES):
                j = tl.arange(0, CANDIDATES)
                key = tl.load(cand_key + j, mask=j < found, other=0)
                _write_top(out, key, j < found, tl.load(cand_pos + j, mask=j < found, other=0), K)
            else:
                _select_whole_row(row, out, length, K, STREAM)


@triton.jit
def _topk_threshold_kernel(
    logits_ptr,  # [R, N] f32
    lengths_ptr,  # [R] int32
    threshold_ptr,  # [R] int32: each row's candidate threshold, as a key
    N,
    stride_row,
    K: tl.constexpr,
    CANDIDATES: tl.constexpr,
    SAMPLE: tl.constexpr,
    SIGMAS: tl.constexpr,
):
    # One program per row, so that the chunks of a split row read one threshold instead of each computing it.
    r = tl.program_id(0)
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + r), 0), N)
    if length > CANDIDATES:
        threshold = _sample_threshold(logits_ptr + r.to(tl.int64) * stride_row, length, K, SAMPLE, SIGMAS)
        tl.store(threshold_ptr + r, threshold)
    else:
        tl.store(threshold_ptr + r, -2147483647)  # every key is a candidate


@triton.jit
def _topk_compact_kernel(
    logits_ptr,  # [R, N] f32
    lengths_ptr,  # [R] int32
    threshold_ptr,  # [R] int32
    found_ptr,  # [R] int32, zero on entry: candidates of each row
    cand_key_ptr,  # [R, CANDIDATES] int32
    cand_pos_ptr,  # [R, CANDIDATES] int32
    N,
    stride_row,
    K: tl.constexpr,
    CHUNK: tl.constexpr,
    CANDIDATES: tl.constexpr,
):
    # Programs (row, chunk): the chunk's keys at or above the row's threshold, appended to the row's candidates.
    r = tl.program_id(0)
    lo = tl.program_id(1) * CHUNK
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + r), 0), N)
    if (length > K) & (lo < length):
        row = logits_ptr + r.to(tl.int64) * stride_row
        i = lo + tl.arange(0, CHUNK)  # [CHUNK]
        ok = i < length
        key = _ordered_key(tl.load(row + i, mask=ok, other=0.0))
        keep = ok & (key >= tl.load(threshold_ptr + r))
        base = tl.atomic_add(found_ptr + r, tl.sum(keep.to(tl.int32), axis=0))
        place = base + tl.cumsum(keep.to(tl.int32), axis=0) - 1
        fits = keep & (place < CANDIDATES)
        tl.store(cand_key_ptr + r.to(tl.int64) * CANDIDATES + place, key, mask=fits)
        tl.store(cand_pos_ptr + r.to(tl.int64) * CANDIDATES + place, i, mask=fits)


@triton.jit
def _topk_select_kernel(
    logits_ptr,  # [R, N] f32
    lengths_ptr,  # [R] int32
    found_ptr,  # [R] int32: reset to zero here for the next call
    cand_key_ptr,  # [R, CANDIDATES] int32
    cand_pos_ptr,  # [R, CANDIDATES] int32
    out_ptr,  # [R, K] int32
    N,
    stride_row,
    K: tl.constexpr,
    CANDIDATES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0)
    length = tl.minimum(tl.maximum(tl.load(lengths_ptr + r), 0), N)
    out = out_ptr + r.to(tl.int64) * K
    # Read and reset in one atomic: a plain load then store races, as the store (one thread) can land before
    # another warp's load, and warps then disagree on the path (seen on the H200 as repeated positions).
    found = tl.atomic_xchg(found_ptr + r, 0)
    if length <= K:
        _write_prefix(out, length, K)
    elif (found >= K) & (found <= CANDIDATES):
        j = tl.arange(0, CANDIDATES)
        key = tl.load(cand_key_ptr + r.to(tl.int64) * CANDIDATES + j, mask=j < found, other=0)
        pos = tl.load(cand_pos_ptr + r.to(tl.int64) * CANDIDATES + j, mask=j < found, other=0)
        _write_top(out, key, j < found, pos, K)
    else:
        _select_whole_row(logits_ptr + r.to(tl.int64) * stride_row, out, length, K, BLOCK)


def topk_indices(logits: Tensor, lengths: Tensor, k: int = 2048) -> Tensor:
    """The `k` largest of the first `lengths[r]` logits of each row, as int32 positions, -1 padded.

    logits: f32 [R, N]; lengths: int32 [R]. A row with lengths[r] <= k gets 0 .. len-1. Order inside a row is
    unspecified and ties may resolve either way. Lengths are read on the device: CUDA-graph safe.

    Many rows (prefill) run one program per row. Fewer rows than multiprocessors (decode) split each row's
    compaction over chunks of CHUNK logits, then select in a second launch.
    """
    if logits.dim() != 2 or logits.dtype != torch.float32:
        raise ValueError(f"logits must be float32 [R, N], got {logits.dtype} {tuple(logits.shape)}")
    rows, width = logits.shape
    if lengths.shape != (rows,) or lengths.dtype != torch.int32:
        raise ValueError(f"lengths must be int32 [R] = [{rows}], got {lengths.dtype} {tuple(lengths.shape)}")
    if k < 16 or k & (k - 1) or k > CANDIDATES // 2:
        raise ValueError(f"k must be a power of two in 16..{CANDIDATES // 2} (DSA uses 2048), got {k}")
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    lengths = lengths.contiguous()
    out = torch.empty(rows, k, dtype=torch.int32, device=logits.device)
    if rows == 0:
        return out
    capability = tensor_capability(logits)
    common = {"K": k, "CANDIDATES": CANDIDATES}
    multiprocessors = sm_count(logits)
    if rows >= multiprocessors:
        long_rows = width > ROW_BLOCK
        programs = min(rows, 2 * multiprocessors) if long_rows else rows
        scratch = programs * CANDIDATES if long_rows else 1
        cand_key = torch.empty(scratch, dtype=torch.int32, device=logits.device)
        cand_pos = torch.empty(scratch, dtype=torch.int32, device=logits.device)
        _topk_row_kernel[(programs,)](
            logits, lengths, out, cand_key, cand_pos, rows, width, logits.stride(0),
            ROW_BLOCK=ROW_BLOCK, SAMPLE=SAMPLE, SIGMAS=SAMPLE_SIGMAS, LONG=long_rows, STREAM=STREAM,
            num_warps=row_warps(capability),
            **common,
        )  # fmt: skip
        return out
    found = persistent_zeros(logits.device, "topk_found", multiprocessors)
    threshold = torch.empty(rows, dtype=torch.int32, device=logits.device)
    cand_key = torch.empty(rows, CANDIDATES, dtype=torch.int32, device=logits.device)
    cand_pos = torch.empty(rows, CANDIDATES, dtype=torch.int32, device=logits.device)
    warps = topk_warps(capability)
    _topk_threshold_kernel[(rows,)](
        logits, lengths, threshold, width, logits.stride(0), SAMPLE=SAMPLE, SIGMAS=SAMPLE_SIGMAS, num_warps=warps,
        **common,
    )  # fmt: skip
    _topk_compact_kernel[(rows, triton.cdiv(width, CHUNK))](
        logits, lengths, threshold, found, cand_key, cand_pos, width, logits.stride(0), CHUNK=CHUNK, num_warps=warps,
        **common,
    )  # fmt: skip
    _topk_select_kernel[(rows,)](
        logits, lengths, found, cand_key, cand_pos, out, width, logits.stride(0),
        BLOCK=ROW_BLOCK, num_warps=topk_warps(capability), **common,
    )  # fmt: skip
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
