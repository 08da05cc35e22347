"""Byte layouts shared with SGLang's DSA pools (../shared/DSA.md §2), as the constants the kernels derive from.

MLA KV row, 656 bytes per token:
    [0, 512)    latent, float8 e4m3, four tiles of 128
    [512, 528)  four float32 scales, one per tile
    [528, 656)  rope, 64 x bf16, not quantized

Index-K page, 8448 bytes per 64 tokens (struct of arrays):
    [0, 8192)     64 keys x 128 e4m3, token-major
    [8192, 8448)  64 float32 scales, one per token
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8 e4m3fn
SCALE_FLOOR = 1e-4  # smallest amax / FP8_MAX a scale may represent
QUANT_BLOCK = 128

PAGE_SIZE = 64  # tokens per page; SGLang forces 64 for DSA on CUDA

LATENT_DIM = 512
ROPE_DIM = 64
QK_DIM = LATENT_DIM + ROPE_DIM  # 576: absorbed MLA query/key width
LATENT_TILES = LATENT_DIM // QUANT_BLOCK  # 4
MLA_SCALE_OFFSET = LATENT_DIM  # byte 512
MLA_ROPE_OFFSET = MLA_SCALE_OFFSET + 4 * LATENT_TILES  # byte 528
MLA_ROW_BYTES = MLA_ROPE_OFFSET + 2 * ROPE_DIM  # 656

INDEX_DIM = 128
INDEX_SCALE_OFFSET = PAGE_SIZE * INDEX_DIM  # byte 8192
INDEX_PAGE_BYTES = INDEX_SCALE_OFFSET + 4 * PAGE_SIZE  # 8448

assert MLA_ROW_BYTES == 656 and INDEX_PAGE_BYTES == 8448


def check_byte_rows(name: str, buffer: torch.Tensor, row_bytes: int, rows: str) -> None:
    """The caches are raw byte tables: a contiguous uint8 [`rows`, `row_bytes`] tensor, or a ValueError saying so."""
    if buffer.dtype != torch.uint8 or buffer.dim() != 2 or buffer.shape[1] != row_bytes or not buffer.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous uint8 [{rows}, {row_bytes}] tensor, got {buffer.dtype} {tuple(buffer.shape)}"
        )
