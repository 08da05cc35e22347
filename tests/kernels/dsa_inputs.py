"""Random DSA inputs in the byte layouts of ../shared/DSA.md §2, built with the twins' quantizer (vectorized)."""

from __future__ import annotations

import torch

from sparsegate.kernels.dsa._layout import (
    FP8,
    INDEX_DIM,
    INDEX_SCALE_OFFSET,
    LATENT_DIM,
    MLA_ROPE_OFFSET,
    MLA_SCALE_OFFSET,
    PAGE_SIZE,
    QK_DIM,
    ROPE_DIM,
)
from sparsegate.kernels.dsa.naive import naive_quantize_fp8_blocks


def index_pages(num_pages: int, device: str, gen: torch.Generator) -> torch.Tensor:
    """uint8 [P, 8448] index-K pages holding random keys."""
    keys = torch.randn(num_pages * PAGE_SIZE, INDEX_DIM, generator=gen, device=device)
    keys = keys * torch.exp(torch.randn(num_pages * PAGE_SIZE, 1, generator=gen, device=device))  # varied scales
    q, scale = naive_quantize_fp8_blocks(keys.to(torch.bfloat16))
    pages = torch.empty(num_pages, INDEX_SCALE_OFFSET + 4 * PAGE_SIZE, dtype=torch.uint8, device=device)
    pages[:, :INDEX_SCALE_OFFSET] = q.view(torch.uint8).reshape(num_pages, -1)
    pages[:, INDEX_SCALE_OFFSET:] = scale.reshape(num_pages, PAGE_SIZE).contiguous().view(torch.uint8)
    return pages


def mla_cache(num_slots: int, device: str, gen: torch.Generator) -> torch.Tensor:
    """uint8 [S, 656] MLA rows holding random latents and ropes."""
    latent = torch.randn(num_slots, LATENT_DIM, generator=gen, device=device).to(torch.bfloat16)
    rope = torch.randn(num_slots, ROPE_DIM, generator=gen, device=device).to(torch.bfloat16)
    q, scale = naive_quantize_fp8_blocks(latent)
    cache = torch.empty(num_slots, MLA_ROPE_OFFSET + 2 * ROPE_DIM, dtype=torch.uint8, device=device)
    cache[:, :MLA_SCALE_OFFSET] = q.view(torch.uint8)
    cache[:, MLA_SCALE_OFFSET:MLA_ROPE_OFFSET] = scale.contiguous().view(torch.uint8)
    cache[:, MLA_ROPE_OFFSET:] = rope.view(torch.uint8)
    return cache


def index_queries(shape: tuple[int, ...], device: str, gen: torch.Generator) -> torch.Tensor:
    """e4m3 queries [..., 128]; their scales are taken as folded into the weights, as DSA does."""
    q = torch.randn(*shape, INDEX_DIM, generator=gen, device=device)
    return naive_quantize_fp8_blocks(q.to(torch.bfloat16))[0]


def head_weights(rows: int, heads: int, device: str, gen: torch.Generator) -> torch.Tensor:
    """Signed weights, as the indexer's learned ones are, so that a ReLU misplaced across the head sum shows."""
    return torch.randn(rows, heads, generator=gen, device=device) * heads**-0.5


def block_table(batch: int, pages_per_request: int, num_pages: int, device: str, gen: torch.Generator) -> torch.Tensor:
    """int32 [B, pages_per_request]: disjoint random physical pages per request."""
    perm = torch.randperm(num_pages, generator=gen, device=device)[: batch * pages_per_request]
    return perm.reshape(batch, pages_per_request).to(torch.int32)


def mla_queries(tokens: int, heads: int, device: str, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(tokens, heads, QK_DIM, generator=gen, device=device).to(torch.bfloat16)


def slot_indices(tokens: int, topk: int, num_slots: int, device: str, gen: torch.Generator) -> torch.Tensor:
    """int32 [T, topk] distinct random slots per row."""
    keys = torch.rand(tokens, num_slots, generator=gen, device=device)
    return keys.argsort(dim=1)[:, :topk].to(torch.int32)


assert FP8 is torch.float8_e4m3fn
