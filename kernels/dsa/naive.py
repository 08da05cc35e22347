"""Naive twins of the DSA kernels: plain PyTorch in float32, written to be read, never optimized.

They are the oracle for tests/kernels. Each `naive_<op>` takes the same arguments as `<op>` in
`sparsegate.kernels.dsa` and follows ../shared/DSA.md §3 line by line.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsegate.kernels.dsa._layout import (
    FP8,
    FP8_MAX,
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
    SCALE_FLOOR,
)


def naive_quantize_fp8_blocks(x: Tensor, block: int = QUANT_BLOCK) -> tuple[Tensor, Tensor]:
    """scale = 2 ** ceil(log2(max(amax / 448, 1e-4))) per block of `block` values; q = x / scale as e4m3."""
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // block, block)
    amax = blocks.abs().amax(dim=-1)
    # float64 so that log2 of a ratio just above a power of two does not round down onto it.
    exponent = torch.ceil(torch.log2(torch.clamp(amax.double() / FP8_MAX, min=SCALE_FLOOR)))
    scale = torch.exp2(exponent).float()
    q = (blocks / scale.unsqueeze(-1)).to(FP8)
    return q.reshape(x.shape), scale


def naive_write_mla_kv(cache: Tensor, latent: Tensor, rope: Tensor, slots: Tensor) -> None:
    """Write each token's 656-byte row at its slot; a negative slot means "skip this token"."""
    q, scales = naive_quantize_fp8_blocks(latent)
    for t in range(latent.shape[0]):
        slot = int(slots[t])
        if slot < 0:
            continue
        cache[slot, :MLA_SCALE_OFFSET] = q[t].view(torch.uint8)
        cache[slot, MLA_SCALE_OFFSET:MLA_ROPE_OFFSET] = scales[t].contiguous().view(torch.uint8)
        cache[slot, MLA_ROPE_OFFSET:MLA_ROW_BYTES] = rope[t].to(torch.bfloat16).contiguous().view(torch.uint8)


def naive_write_index_k(pages: Tensor, k: Tensor, slots: Tensor) -> None:
    """Write each token's 128 e4m3 bytes and its float32 scale into the page holding its slot."""
    q, scales = naive_quantize_fp8_blocks(k)
    for t in range(k.shape[0]):
        slot = int(slots[t])
        if slot < 0:
            continue
        page, offset = divmod(slot, PAGE_SIZE)
        key_start = offset * INDEX_DIM
        pages[page, key_start : key_start + INDEX_DIM] = q[t].view(torch.uint8)
        scale_start = INDEX_SCALE_OFFSET + 4 * offset
        pages[page, scale_start : scale_start + 4] = scales[t].contiguous().view(torch.uint8)


def read_index_k(pages: Tensor, page_ids: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """The e4m3 keys (as float32, unscaled) and their scales at (page, offset) pairs."""
    keys = pages[:, :INDEX_SCALE_OFFSET].reshape(-1, PAGE_SIZE, INDEX_DIM)
    scales = pages[:, INDEX_SCALE_OFFSET:INDEX_PAGE_BYTES].contiguous().view(torch.float32)
    k = keys[page_ids, offsets].view(FP8).float()
    return k, scales[page_ids, offsets]


def read_mla_kv(cache: Tensor, slots: Tensor) -> tuple[Tensor, Tensor]:
    """Dequantized latent [n, 512] and rope [n, 64] of the rows at `slots`, in float32."""
    rows = cache[slots]
    latent = rows[:, :MLA_SCALE_OFFSET].view(FP8).float()
    scales = rows[:, MLA_SCALE_OFFSET:MLA_ROPE_OFFSET].contiguous().view(torch.float32)
    latent = latent.reshape(-1, LATENT_TILES, LATENT_DIM // LATENT_TILES) * scales.unsqueeze(-1)
    rope = rows[:, MLA_ROPE_OFFSET:MLA_ROW_BYTES].contiguous().view(torch.bfloat16).float()
    return latent.reshape(-1, LATENT_DIM), rope


def index_scores(q: Tensor, k: Tensor, k_scale: Tensor, weights: Tensor) -> Tensor:
    """logits[t, s] = sum_h w[t, h] * ReLU(q[t, h] . k[s]) * k_scale[s]; the ReLU sits inside the head sum."""
    per_head = torch.einsum("thd,sd->ths", q.float(), k.float())
    return (torch.relu(per_head) * weights.float().unsqueeze(-1)).sum(dim=1) * k_scale.float()


def naive_paged_mqa_logits(
    q: Tensor, pages: Tensor, weights: Tensor, context_lens: Tensor, block_table: Tensor, max_context: int
) -> Tensor:
    """Row j of request b sees keys [0, L - next_n + j + 1); everything else is -inf."""
    batch, next_n = q.shape[0], q.shape[1]
    logits = torch.full((batch * next_n, max_context), float("-inf"), device=q.device)
    for b in range(batch):
        length = int(context_lens[b])
        positions = torch.arange(length, device=q.device)
        page_ids = block_table[b, positions // PAGE_SIZE].long()
        k, k_scale = read_index_k(pages, page_ids, positions % PAGE_SIZE)
        for j in range(next_n):
            row = b * next_n + j
            visible = max(length - next_n + j + 1, 0)
            scores = index_scores(q[b, j : j + 1], k[:visible], k_scale[:visible], weights[row : row + 1])
            logits[row, :visible] = scores[0]
    return logits


def naive_ragged_mqa_logits(q: Tensor, k: Tensor, k_scale: Tensor, weights: Tensor, ks: Tensor, ke: Tensor) -> Tensor:
    """Query t sees keys [ks[t], ke[t]); everything else is -inf."""
    logits = index_scores(q, k, k_scale, weights)
    positions = torch.arange(k.shape[0], device=q.device)
    visible = (positions[None, :] >= ks[:, None]) & (positions[None, :] < ke[:, None])
    return torch.where(visible, logits, torch.full_like(logits, float("-inf")))


def naive_topk_indices(logits: Tensor, lengths: Tensor, k: int = 2048) -> Tensor:
    """The k largest among the first lengths[r] logits of each row; 0..len-1 when len <= k; -1 pads."""
    rows = logits.shape[0]
    out = torch.full((rows, k), -1, dtype=torch.int32, device=logits.device)
    for r in range(rows):
        length = min(int(lengths[r]), logits.shape[1])
        if length <= k:
            out[r, :length] = torch.arange(length, dtype=torch.int32, device=logits.device)
        else:
            out[r] = torch.topk(logits[r, :length].float(), k).indices.to(torch.int32)
    return out


def naive_slots_from_positions(positions: Tensor, page_table: Tensor, page_size: int = PAGE_SIZE) -> Tensor:
    """slot = page_table[r, pos // page_size] * page_size + pos % page_size; -1 stays -1."""
    valid = positions >= 0
    safe = torch.where(valid, positions, torch.zeros_like(positions)).long()
    pages = torch.gather(page_table.long(), 1, safe // page_size)
    slots = pages * page_size + safe % page_size
    return torch.where(valid, slots, torch.full_like(slots, -1)).to(torch.int32)


def naive_sparse_mla(q: Tensor, kv: Tensor, indices: Tensor, sm_scale: float) -> tuple[Tensor, Tensor]:
    """Softmax attention of each query row over its own selected slots; no valid slot gives zeros and -inf."""
    tokens, heads = q.shape[0], q.shape[1]
    out = torch.zeros(tokens, heads, LATENT_DIM, device=q.device)
    lse = torch.full((tokens, heads), float("-inf"), device=q.device)
    for t in range(tokens):
        slots = indices[t][indices[t] >= 0].long()
        if slots.numel() == 0:
            continue
        latent, rope = read_mla_kv(kv, slots)
        keys = torch.cat([latent, rope], dim=-1)  # [n, 576]
        scores = q[t].float() @ keys.T * sm_scale  # [H, n]
        lse[t] = torch.logsumexp(scores, dim=-1)
        out[t] = torch.softmax(scores, dim=-1) @ latent
    return out.to(torch.bfloat16), lse
