"""quantize_fp8_blocks and the two cache writers against their twins, byte for byte."""

from __future__ import annotations

import pytest
import torch

from sparsegate.kernels.dsa import quantize_fp8_blocks, write_index_k, write_mla_kv
from sparsegate.kernels.dsa._layout import FP8_MAX, INDEX_PAGE_BYTES, MLA_ROW_BYTES, PAGE_SIZE
from sparsegate.kernels.dsa.naive import naive_quantize_fp8_blocks, naive_write_index_k, naive_write_mla_kv


def _awkward_values(shape: tuple[int, ...], dtype: torch.dtype, device: str, gen: torch.Generator) -> torch.Tensor:
    """Random values with scale edge cases planted: a zero block, amax exactly 448 * 2**k, tiny and huge blocks."""
    x = torch.randn(*shape, generator=gen, device=device) * torch.exp2(
        torch.randint(-20, 20, shape[:-1], generator=gen, device=device)
    ).unsqueeze(-1)
    flat = x.reshape(-1, shape[-1])
    flat[0, :128] = 0.0
    if flat.shape[0] > 1:
        flat[1, :128] = torch.linspace(-FP8_MAX * 4, FP8_MAX * 4, 128, device=device)  # amax = 448 * 2**2
    if flat.shape[0] > 2:
        flat[2, :128] *= 1e-30
    return flat.reshape(shape).to(dtype)


@pytest.mark.parametrize(
    ("shape", "dtype", "block"),
    [
        ((3, 256), torch.bfloat16, 128),
        ((2, 5, 512), torch.float32, 128),
        ((7, 128), torch.bfloat16, 64),
        ((1, 128), torch.float32, 128),
    ],
    ids=["R3-D256-bf16", "R2x5-D512-f32", "R7-D128-block64-bf16", "R1-D128-f32"],
)
def test_quantize_fp8_blocks_matches_twin_bitwise(shape, dtype, block, device, poisoned) -> None:
    gen = torch.Generator(device=device).manual_seed(1)
    x = _awkward_values(shape, dtype, device, gen)
    q, scale = quantize_fp8_blocks(x, block)
    q_ref, scale_ref = naive_quantize_fp8_blocks(x, block)
    assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert torch.equal(scale, scale_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def test_quantize_rejects_a_block_that_does_not_divide(device) -> None:
    with pytest.raises(ValueError, match="dividing the last dimension"):
        quantize_fp8_blocks(torch.zeros(2, 100, device=device), 64)


@pytest.mark.parametrize("tokens", [1, 63], ids=["T1", "T63"])
def test_write_mla_kv_matches_twin(tokens, device) -> None:
    gen = torch.Generator(device=device).manual_seed(2)
    slots_total = 200
    cache = torch.full((slots_total, MLA_ROW_BYTES), 0xFF, dtype=torch.uint8, device=device)
    expected = cache.clone()
    latent = _awkward_values((tokens, 512), torch.bfloat16, device, gen)
    rope = torch.randn(tokens, 64, generator=gen, device=device).to(torch.bfloat16)
    slots = torch.randperm(slots_total, generator=gen, device=device)[:tokens]
    slots[tokens // 2] = -1  # a padded token writes nothing
    write_mla_kv(cache, latent, rope, slots)
    naive_write_mla_kv(expected, latent, rope, slots)
    assert torch.equal(cache, expected)


@pytest.mark.parametrize("tokens", [1, 63, 130], ids=["T1", "T63", "T130"])
def test_write_index_k_matches_twin(tokens, device) -> None:
    gen = torch.Generator(device=device).manual_seed(3)
    num_pages = 5
    pages = torch.full((num_pages, INDEX_PAGE_BYTES), 0xFF, dtype=torch.uint8, device=device)
    expected = pages.clone()
    k = _awkward_values((tokens, 128), torch.bfloat16, device, gen)
    slots = torch.randperm(num_pages * PAGE_SIZE, generator=gen, device=device)[:tokens].to(torch.int32)
    slots[0] = -1
    write_index_k(pages, k, slots)
    naive_write_index_k(expected, k, slots)
    assert torch.equal(pages, expected)


def test_write_mla_kv_says_how_to_fix_a_wrong_cache(device) -> None:
    with pytest.raises(ValueError, match=r"uint8 \[S, 656\]"):
        write_mla_kv(
            torch.zeros(4, 576, dtype=torch.uint8, device=device),
            torch.zeros(1, 512, dtype=torch.bfloat16, device=device),
            torch.zeros(1, 64, dtype=torch.bfloat16, device=device),
            torch.zeros(1, dtype=torch.int64, device=device),
        )
