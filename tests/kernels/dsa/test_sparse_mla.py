"""sparse_mla against its twin: output (bf16) and log-sum-exp (float32), with -1 indices and empty rows."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch
import triton

from sparsegate.kernels.dsa import sparse_mla
from sparsegate.kernels.dsa.naive import naive_sparse_mla
from sparsegate.kernels.dsa.sparse_mla import max_splits, wants_partials
from tests.kernels.checks import assert_close
from tests.kernels.dsa_inputs import mla_cache, mla_queries, slot_indices

SM_SCALE = 256**-0.5  # GLM-5: qk_head_dim 192 nope + 64 rope

CASES = [
    # (tokens, heads, topk, slots in the cache)
    (1, 8, 512, 700),
    (63, 16, 128, 300),
    (2, 128, 128, 200),
    (5, 64, 192, 400),
    (4, 24, 100, 150),
]


@pytest.fixture(params=[True, False], ids=["dequant", "scaled-scores"])
def scale_placement(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Both ways the kernel applies the per-tile scales (its DEQUANT switch). On a GPU the autotuner picks among
    both; under the interpreter the autotuner's one config is swapped for each."""
    module = importlib.import_module("sparsegate.kernels.dsa.sparse_mla")
    kernel = module._sparse_mla_kernel
    if torch.cuda.is_available():  # the autotuner already tries both; re-tuning per case would only cost time
        yield bool(request.param)
        return
    config = module.SPARSE_MLA_INTERPRETER
    swapped = triton.Config({**config.kwargs, "DEQUANT": request.param}, num_warps=config.num_warps, num_stages=1)
    monkeypatch.setattr(kernel, "configs", [swapped])
    kernel.cache.clear()
    yield bool(request.param)
    kernel.cache.clear()


@pytest.mark.parametrize(
    ("tokens", "heads", "topk", "num_slots"),
    CASES,
    ids=[f"T{t}-H{h}-topk{k}-S{s}" for t, h, k, s in CASES],
)
def test_sparse_mla_matches_twin(tokens, heads, topk, num_slots, scale_placement, device, poisoned) -> None:
    gen = torch.Generator(device=device).manual_seed(30)
    kv = mla_cache(num_slots, device, gen)
    q = mla_queries(tokens, heads, device, gen)
    indices = slot_indices(tokens, topk, num_slots, device, gen)
    indices[0, topk // 3 :] = -1  # a short row, -1 padded
    if tokens > 2:
        indices[1] = -1  # a row with no valid slot: zeros and lse = -inf
        indices[2, ::3] = -1  # holes in the middle
    out, lse = sparse_mla(q, kv, indices, SM_SCALE)
    out_ref, lse_ref = naive_sparse_mla(q, kv, indices, SM_SCALE)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert_close(out, out_ref, "sparse MLA output")
    assert_close(lse, lse_ref, "sparse MLA lse")
    if tokens > 2:
        assert bool((out[1] == 0).all()) and bool((lse[1] == float("-inf")).all())


def test_few_rows_split_the_index_list() -> None:
    assert wants_partials(tokens=32, heads=64, multiprocessors=132)
    assert not wants_partials(tokens=4096, heads=64, multiprocessors=132)
    assert max_splits(tokens=1, heads=8, topk=2048, multiprocessors=132) == 16
    assert max_splits(tokens=32, heads=64, topk=2048, multiprocessors=132) == 8
    assert max_splits(tokens=1, heads=8, topk=128, multiprocessors=132) == 1


def test_sparse_mla_says_what_q_must_be(device) -> None:
    with pytest.raises(ValueError, match="512 latent \\+ 64 rope"):
        sparse_mla(
            torch.zeros(1, 8, 512, dtype=torch.bfloat16, device=device),
            torch.zeros(4, 656, dtype=torch.uint8, device=device),
            torch.zeros(1, 4, dtype=torch.int32, device=device),
            SM_SCALE,
        )
