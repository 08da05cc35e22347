"""The hooked sglang 0.5.23 entry points, fed SGLang-shaped tensors, against the naive twins and sglang's own code.

Calls go through what the hooks patched (the resolvers as dsa_indexer sees them, `_topk_unfused`,
`triton_sparse_mla_fwd` / `triton_sparse_mla_decode_splitk`), so these tests fail if a hook is not applied. Kernels
run natively on a GPU and under Triton's interpreter otherwise (tests.kernels.conftest). Small shapes.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

# First: chooses Triton's interpreter (no GPU) before `sparsegate.kernels.dsa` decorates its kernels.
from tests.backends.sglang_support import load_sparsegate_plugin

# isort: split
from sparsegate.kernels.dsa.naive import (
    naive_paged_mqa_logits,
    naive_quantize_fp8_blocks,
    naive_ragged_mqa_logits,
    naive_sparse_mla,
    naive_topk_indices,
    naive_write_index_k,
    naive_write_mla_kv,
)
from tests.kernels.checks import TOLERANCE, assert_close

FP8 = torch.float8_e4m3fn
PAGE = 64


@pytest.fixture(scope="module")
def sglang() -> SimpleNamespace:
    return load_sparsegate_plugin()


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _index_pages(lengths: list[int], device: str, gen: torch.Generator) -> tuple[Any, Any]:
    """Index-K pages holding each request's keys on scattered pages; (pages uint8 [P, 8448], block_table int32)."""
    max_pages = max((n + PAGE - 1) // PAGE for n in lengths) + 1
    num_pages = len(lengths) * max_pages + 2
    order = torch.randperm(num_pages, generator=gen)
    pages = torch.zeros(num_pages, 8448, dtype=torch.uint8)
    table = order[: len(lengths) * max_pages].reshape(len(lengths), max_pages).to(torch.int32)
    for b, n in enumerate(lengths):
        keys = torch.randn(n, 128, generator=gen).to(torch.bfloat16)
        positions = torch.arange(n)
        slots = table[b, positions // PAGE].long() * PAGE + positions % PAGE
        naive_write_index_k(pages, keys, slots)
    return pages.to(device), table.to(device)


def _index_q(rows: int, heads: int, device: str, gen: torch.Generator) -> tuple[Any, Any]:
    q, _scale = naive_quantize_fp8_blocks(torch.randn(rows, heads, 128, generator=gen))
    weights = torch.randn(rows, heads, generator=gen) * 0.1
    return q.to(device), weights.to(device)


@pytest.mark.parametrize("heads", [32, 64], ids=lambda h: f"H{h}")
def test_paged_logits_split_path(sglang: SimpleNamespace, device: str, heads: int) -> None:
    """Decode as `_get_topk_paged` calls it on Ada: one row per token, q [T, 1, H, 128], ctx [T, 1]."""
    gen = torch.Generator().manual_seed(1)
    lengths = [1, 63, 111]
    pages, table = _index_pages(lengths, device, gen)
    q, weights = _index_q(len(lengths), heads, device, gen)
    ctx = torch.tensor(lengths, dtype=torch.int32, device=device).view(-1, 1)
    max_len = table.shape[1] * PAGE
    kv_cache = pages.view(pages.shape[0], PAGE, 1, 132)  # Indexer._get_topk_paged's view of the buffer
    fn = sglang.indexer.resolve_fp8_paged_mqa_logits_fn()
    schedule = sglang.indexer.resolve_paged_mqa_logits_metadata_fn()(ctx, PAGE, 1)
    got = fn(q.unsqueeze(1), kv_cache, weights, ctx, table, schedule, max_len, clean_logits=False)

    expected = naive_paged_mqa_logits(q.unsqueeze(1), pages, weights, ctx.view(-1), table, max_len)
    assert_close(got, expected, "paged logits")
    # sglang's own torch fallback reads the same pages the same way (bf16 math: compare the visible keys only).
    upstream = sglang.utils._fp8_paged_mqa_logits_torch(q.unsqueeze(1), kv_cache, weights, ctx, table, None, max_len)
    visible = torch.arange(max_len, device=device)[None, :] < ctx
    assert_bf16_close(got[visible], upstream[visible])


def test_paged_logits_mtp_rows(sglang: SimpleNamespace, device: str) -> None:
    """next_n = 2 with a [B, next_n] length table holding L in each column (dsa_backend's 2-D schedule lengths)."""
    gen = torch.Generator().manual_seed(2)
    lengths = [2, 70]
    pages, table = _index_pages(lengths, device, gen)
    q, weights = _index_q(2 * len(lengths), 32, device, gen)
    q = q.view(len(lengths), 2, 32, 128)
    ctx = torch.tensor(lengths, dtype=torch.int32, device=device).view(-1, 1).expand(-1, 2).contiguous()
    max_len = table.shape[1] * PAGE
    fn = sglang.indexer.resolve_fp8_paged_mqa_logits_fn()
    got = fn(q, pages.view(-1, PAGE, 1, 132), weights, ctx, table, None, max_len)
    assert_close(got, naive_paged_mqa_logits(q, pages, weights, ctx[:, 0], table, max_len), "MTP paged logits")


def test_ragged_logits_prefill(sglang: SimpleNamespace, device: str) -> None:
    """Prefill as `_get_topk_ragged` calls it: flat keys, (k_fp8, k_scale) pair, per-token [ks, ke) windows."""
    gen = torch.Generator().manual_seed(3)
    k, k_scale = naive_quantize_fp8_blocks(torch.randn(90, 128, generator=gen))
    k_scale = k_scale.reshape(-1)
    q, weights = _index_q(6, 32, device, gen)
    ks = torch.tensor([0, 0, 0, 40, 40, 40], dtype=torch.int32)
    ke = torch.tensor([1, 17, 40, 41, 77, 90], dtype=torch.int32)
    args = (k.to(device), k_scale.to(device)), weights, ks.to(device), ke.to(device)
    got = sglang.indexer.resolve_fp8_mqa_logits_fn()(q, *args, clean_logits=False)
    assert_close(
        got,
        naive_ragged_mqa_logits(q, k.to(device), k_scale.to(device), weights, ks.to(device), ke.to(device)),
        "ragged logits",
    )
    # sglang's torch fallback writes 0 outside the window, we write -inf: compare inside.
    upstream = sglang.utils._fp8_mqa_logits_torch(q, *args)
    inside = torch.arange(90, device=device)[None, :]
    inside = (inside >= ks.to(device)[:, None]) & (inside < ke.to(device)[:, None])
    assert_bf16_close(got[inside], upstream[inside])


def assert_bf16_close(ours: Any, upstream: Any) -> None:
    """sglang's torch fallbacks round each head's scores to bf16; hold them to the bf16 row of the tolerance table."""
    error = (ours - upstream.float()).norm() / upstream.float().norm()
    assert float(error) <= TOLERANCE[torch.bfloat16], f"relative error {float(error):.2e} against sglang's fallback"


def _as_sets(indices: Any) -> list[set[int]]:
    return [set(row[row >= 0].tolist()) for row in indices.cpu()]


@pytest.mark.parametrize("with_row_starts", [False, True], ids=["paged", "ragged-row-starts"])
def test_topk_through_the_torch_backend(sglang: SimpleNamespace, device: str, with_row_starts: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    rows, width, k = 5, 300, 16
    score = torch.randn(rows, width, generator=gen).to(device)
    lengths = torch.tensor([0, 9, 16, 17, 200], dtype=torch.int32, device=device)
    starts = torch.tensor([0, 5, 100, 283, 99], dtype=torch.int32, device=device) if with_row_starts else None
    backend = sglang.topk.DSATopKBackend.TORCH
    got = backend.topk_func(score, lengths, k, row_starts=starts)
    assert got.dtype == torch.int32 and got.shape == (rows, k)

    original = sglang.topk._topk_unfused.__wrapped__  # sglang's torch.topk path, before our hook
    upstream = original(score, lengths, k, row_starts=starts, topk_op=torch.topk, topk_op_kwargs={"dim": -1})
    assert _as_sets(got) == _as_sets(upstream)
    shifted = score if starts is None else torch.stack([score[r].roll(-int(starts[r])) for r in range(rows)])
    assert _as_sets(got) == _as_sets(naive_topk_indices(shifted, lengths, k))


def test_topk_leaves_other_top_k_ops_to_sglang(sglang: SimpleNamespace) -> None:
    calls = []

    def other_topk(x: Any, k: int, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return torch.topk(x, k, dim=-1)

    score = torch.randn(2, 8)
    lengths = torch.tensor([8, 3], dtype=torch.int32)
    sglang.topk._topk_unfused(score, lengths, 4, topk_op=other_topk, topk_op_kwargs={"sorted": False})
    assert calls == [{"sorted": False}]


def _mla_inputs(device: str, gen: torch.Generator) -> tuple[Any, ...]:
    tokens, heads, slots_total, topk = 3, 16, 100, 32
    cache = torch.zeros(slots_total, 656, dtype=torch.uint8)
    naive_write_mla_kv(
        cache,
        torch.randn(slots_total, 512, generator=gen).to(torch.bfloat16),
        torch.randn(slots_total, 64, generator=gen).to(torch.bfloat16),
        torch.arange(slots_total),
    )
    slots = torch.full((tokens, topk), -1, dtype=torch.int32)
    for t, n in enumerate([32, 5, 0]):  # a full row, a short row, a row with nothing selected
        slots[t, :n] = torch.randperm(slots_total, generator=gen)[:n].to(torch.int32)
    q_nope = (torch.randn(tokens, heads, 512, generator=gen) * 0.3).to(torch.bfloat16)
    q_rope = (torch.randn(tokens, heads, 64, generator=gen) * 0.3).to(torch.bfloat16)
    # The pool's per-layer buffer: [slots, 1, 656] of one-byte elements (float8 view of the uint8 rows).
    kv = cache.view(FP8).view(slots_total, 1, 656)
    return q_nope.to(device), q_rope.to(device), kv.to(device), slots.to(device)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_sparse_mla_over_the_656_byte_rows(sglang: SimpleNamespace, device: str, phase: str) -> None:
    q_nope, q_rope, kv, slots = _mla_inputs(device, torch.Generator().manual_seed(5))
    scale = 0.0625
    if phase == "prefill":
        fn = sglang.mla_prefill.triton_sparse_mla_fwd
        got = fn(q_nope=q_nope, q_rope=q_rope, kv=kv, indices=slots.unsqueeze(1), sm_scale=scale, d_v=512)
    else:
        fn = sglang.mla_decode.triton_sparse_mla_decode_splitk
        got = fn(q_nope=q_nope, q_rope=q_rope, kv=kv, indices=slots.unsqueeze(1), sm_scale=scale, d_v=512, workspace=[])
    assert got.shape == (1, 3, 16, 512) and got.dtype == torch.bfloat16
    q = torch.cat([q_nope, q_rope], dim=-1)
    expected, _ = naive_sparse_mla(q, kv.view(torch.uint8).reshape(-1, 656), slots, scale)
    assert_close(got.squeeze(0), expected, f"sparse MLA {phase}")


def test_sparse_mla_leaves_other_layouts_to_sglang() -> None:
    from sparsegate.backends.sglang import mla

    calls = []

    def upstream(*args: Any) -> str:
        calls.append(args)
        return "upstream"

    raw = torch.zeros(4, 1, 576, dtype=torch.bfloat16)  # bf16 cache: SGLang's own kernel reads it
    q = torch.zeros(1, 16, 512, dtype=torch.bfloat16)
    assert mla.sparse_mla_prefill(upstream, q, q[..., :64], raw, torch.zeros(1, 1, 4), 0.1) == "upstream"
    assert mla.sparse_mla_decode(upstream, q, q[..., :64], raw, torch.zeros(1, 1, 4), 0.1) == "upstream"
    assert len(calls) == 2
