"""sparse_mla against its twin: output (bf16) and log-sum-exp (float32), with -1 indices and empty rows."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
import torch
import triton

from sparsegate.kernels.dsa import sparse_mla
from sparsegate.kernels.dsa import sparse_mla_two_pass as two_pass
from sparsegate.kernels.dsa.naive import naive_sparse_mla
from sparsegate.kernels.dsa.sparse_mla import max_splits, uses_two_passes, wants_partials
from sparsegate.kernels.dsa.sparse_mla_merge import merge_splits
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
    _check_against_twin(tokens, heads, topk, num_slots, device, sparse_mla)


@pytest.fixture(params=[128, 256], ids=["cols128", "cols256"])
def value_columns(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The values pass of the two-pass kernels takes 128 or 256 value columns a program; under the interpreter
    its one config is swapped for each (on a GPU the autotuner tries both)."""
    kernel = two_pass._mla_values_kernel
    if torch.cuda.is_available():
        yield int(request.param)
        return
    config = two_pass.VALUES_INTERPRETER
    swapped = triton.Config({**config.kwargs, "COLS": request.param}, num_warps=config.num_warps, num_stages=1)
    monkeypatch.setattr(kernel, "configs", [swapped])
    kernel.cache.clear()
    yield int(request.param)
    kernel.cache.clear()


@pytest.mark.parametrize(
    ("tokens", "heads", "topk", "num_slots"),
    CASES,
    ids=[f"T{t}-H{h}-topk{k}-S{s}" for t, h, k, s in CASES],
)
def test_two_pass_matches_twin(tokens, heads, topk, num_slots, value_columns, device, poisoned) -> None:
    """The two-pass decode kernels (scores, then values) at every case, whichever path sparse_mla would take."""
    _check_against_twin(
        tokens,
        heads,
        topk,
        num_slots,
        device,
        lambda q, kv, idx, scale: two_pass.two_pass_sparse_mla(q, kv, idx, scale, 4),
    )


def _check_against_twin(tokens, heads, topk, num_slots, device, op) -> None:
    gen = torch.Generator(device=device).manual_seed(30)
    kv = mla_cache(num_slots, device, gen)
    q = mla_queries(tokens, heads, device, gen)
    indices = slot_indices(tokens, topk, num_slots, device, gen)
    indices[0, topk // 3 :] = -1  # a short row, -1 padded
    if tokens > 2:
        indices[1] = -1  # a row with no valid slot: zeros and lse = -inf
        indices[2, ::3] = -1  # holes in the middle
    out, lse = op(q, kv, indices, SM_SCALE)
    out_ref, lse_ref = naive_sparse_mla(q, kv, indices, SM_SCALE)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert_close(out, out_ref, "sparse MLA output")
    assert_close(lse, lse_ref, "sparse MLA lse")
    if tokens > 2:
        assert bool((out[1] == 0).all()) and bool((lse[1] == float("-inf")).all())


def test_decode_with_several_rows_takes_two_passes() -> None:
    assert uses_two_passes(tokens=32, heads=64, multiprocessors=132)
    assert not uses_two_passes(tokens=1, heads=64, multiprocessors=132)
    assert not uses_two_passes(tokens=4096, heads=64, multiprocessors=132)


def test_few_rows_split_the_index_list() -> None:
    assert wants_partials(tokens=32, heads=64, multiprocessors=132)
    assert not wants_partials(tokens=4096, heads=64, multiprocessors=132)
    assert max_splits(tokens=1, heads=8, topk=2048, multiprocessors=132) == 32
    assert max_splits(tokens=32, heads=64, topk=2048, multiprocessors=132) == 8
    assert max_splits(tokens=1, heads=8, topk=64, multiprocessors=132) == 1


def test_sparse_mla_says_what_q_must_be(device) -> None:
    with pytest.raises(ValueError, match="512 latent \\+ 64 rope"):
        sparse_mla(
            torch.zeros(1, 8, 512, dtype=torch.bfloat16, device=device),
            torch.zeros(4, 656, dtype=torch.uint8, device=device),
            torch.zeros(1, 4, dtype=torch.int32, device=device),
            SM_SCALE,
        )


@pytest.mark.parametrize("splits", [3, 32])
def test_merge_weighs_splits_by_their_lse(splits, device) -> None:
    """The split merge alone, at split counts the one interpreter config never runs: a split without a valid slot
    (lse = -inf) weighs nothing, and a row no split saw gives zeros and lse = -inf."""
    gen = torch.Generator(device=device).manual_seed(31)
    tokens, heads = 2, 3
    part = torch.randn(tokens, splits, heads, 512, generator=gen, device=device)
    part_lse = torch.randn(tokens, splits, heads, generator=gen, device=device) * 4
    part_lse[0, 1] = float("-inf")
    part[0, 1] = 0.0
    part_lse[1, :, 2] = float("-inf")
    part[1, :, 2] = 0.0
    out = torch.full((tokens, heads, 512), float("nan"), dtype=torch.bfloat16, device=device)
    lse = torch.full((tokens, heads), float("nan"), device=device)
    merge_splits(part.flatten(), part_lse.flatten(), out, lse, splits)
    want_lse = torch.logsumexp(part_lse.double(), dim=1)
    weight = torch.nan_to_num(torch.exp(part_lse.double() - want_lse[:, None]), nan=0.0)
    want = (weight[..., None] * part.double()).sum(dim=1)
    assert_close(out, want, "merged output")
    assert_close(lse, want_lse, "merged lse")
    assert bool((out[1, 2] == 0).all()) and lse[1, 2] == float("-inf")
