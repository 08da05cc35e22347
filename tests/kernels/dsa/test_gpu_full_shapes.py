"""The kernels at full GLM-5 shapes on a GPU, and the decode path inside a CUDA graph.

GLM-5: 64 heads (8 per rank at TP=8), 32 index heads (DeepSeek-V3.2: 64), top-k 2048, contexts up to 128K, pages of
64 tokens. Skipped without CUDA; run on the device machine (see docs/kernels.md).
"""

from __future__ import annotations

import pytest
import torch

from sparsegate.kernels.dsa import (
    paged_mqa_logits,
    ragged_mqa_logits,
    slots_from_positions,
    sparse_mla,
    topk_indices,
    write_index_k,
    write_mla_kv,
)
from sparsegate.kernels.dsa._layout import INDEX_PAGE_BYTES, MLA_ROW_BYTES, PAGE_SIZE
from sparsegate.kernels.dsa.naive import (
    naive_paged_mqa_logits,
    naive_ragged_mqa_logits,
    naive_slots_from_positions,
    naive_sparse_mla,
    naive_topk_indices,
    naive_write_index_k,
    naive_write_mla_kv,
)
from tests.kernels.checks import assert_close, assert_topk_valid, topk_recall
from tests.kernels.dsa_inputs import (
    block_table,
    head_weights,
    index_pages,
    index_queries,
    mla_cache,
    mla_queries,
    slot_indices,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SM_SCALE = 256**-0.5
TOPK = 2048
MAX_CONTEXT = 131072


def _lengths(batch: int, max_context: int, gen: torch.Generator) -> torch.Tensor:
    lens = torch.randint(1, max_context + 1, (batch,), generator=gen, device="cuda", dtype=torch.int32)
    lens[0], lens[-1] = max_context, 1  # the longest context and a one-token one
    lens[1] = 2048  # exactly top-k long
    return lens


@pytest.mark.parametrize(
    ("batch", "next_n", "heads", "max_context"),
    [(32, 1, 32, MAX_CONTEXT), (8, 2, 64, 32768), (4, 3, 32, 8192)],
    ids=["B32-N1-H32-ctx128K", "B8-N2-H64-ctx32K", "B4-N3-H32-ctx8K"],
)
def test_indexer_then_topk_at_full_shape(batch, next_n, heads, max_context, poisoned) -> None:
    gen = torch.Generator(device="cuda").manual_seed(100)
    pages_per_request = max_context // PAGE_SIZE
    pages = index_pages(batch * pages_per_request, "cuda", gen)
    table = block_table(batch, pages_per_request, pages.shape[0], "cuda", gen)
    q = index_queries((batch, next_n, heads), "cuda", gen)
    weights = head_weights(batch * next_n, heads, "cuda", gen)
    lens = _lengths(batch, max_context, gen)
    lens = torch.maximum(lens, torch.tensor(next_n, device="cuda", dtype=torch.int32))
    logits = paged_mqa_logits(q, pages, weights, lens, table, max_context)
    expected = naive_paged_mqa_logits(q, pages, weights, lens, table, max_context)
    assert_close(logits, expected, "paged logits")

    rows = torch.arange(batch * next_n, device="cuda")
    row_lens = (lens[rows // next_n] - next_n + 1 + rows % next_n).to(torch.int32)
    got = topk_indices(logits, row_lens, TOPK)
    want = naive_topk_indices(logits, row_lens, TOPK)
    assert_topk_valid(got, want, logits, row_lens)
    assert topk_recall(got, want) >= 0.99


def test_ragged_indexer_prefill_at_full_shape(poisoned) -> None:
    gen = torch.Generator(device="cuda").manual_seed(101)
    rows, keys, heads = 4096, 8192, 32  # two prompts of 4096 tokens, causal inside each
    q = index_queries((rows, heads), "cuda", gen)
    k = index_queries((keys,), "cuda", gen)
    k_scale = torch.rand(keys, generator=gen, device="cuda") + 0.5
    weights = head_weights(rows, heads, "cuda", gen)
    t = torch.arange(rows, device="cuda", dtype=torch.int32)
    ks = torch.where(t < rows // 2, 0, keys // 2).to(torch.int32)
    ke = (ks + (t % (rows // 2)) * 2 + 1).to(torch.int32)
    logits = ragged_mqa_logits(q, k, k_scale, weights, ks, ke)
    expected = naive_ragged_mqa_logits(q, k, k_scale, weights, ks, ke)
    assert_close(logits, expected, "ragged logits")
    # Rows 1024..2047 of the first prompt see keys [0, ke) with ke > 2048: a real top-k over a causal row.
    picked, lens = logits[1024:2048], ke[1024:2048]
    got = topk_indices(picked, lens, TOPK)
    want = naive_topk_indices(picked, lens, TOPK)
    assert_topk_valid(got, want, picked, lens)
    assert topk_recall(got, want) >= 0.99


@pytest.mark.parametrize(
    ("tokens", "heads"),
    [(32, 64), (32, 8), (1, 128), (3, 16), (2048, 64)],
    ids=["T32-H64-topk2048", "T32-H8-topk2048", "T1-H128-topk2048", "T3-H16-topk2048", "T2048-H64-topk2048"],
)
def test_sparse_mla_at_full_shape(tokens, heads, poisoned) -> None:
    gen = torch.Generator(device="cuda").manual_seed(102)
    num_slots = 1 << 20
    kv = mla_cache(num_slots, "cuda", gen)
    q = mla_queries(tokens, heads, "cuda", gen)
    indices = (
        slot_indices(tokens, TOPK, num_slots, "cuda", gen) if tokens < 64 else _random_slots(tokens, num_slots, gen)
    )
    indices[0, 1000:] = -1
    if tokens > 2:
        indices[1] = -1
    out, lse = sparse_mla(q, kv, indices, SM_SCALE)
    out_ref, lse_ref = naive_sparse_mla(q, kv, indices, SM_SCALE)
    assert_close(out, out_ref, "sparse MLA output")
    assert_close(lse, lse_ref, "sparse MLA lse")


def _random_slots(tokens: int, num_slots: int, gen: torch.Generator) -> torch.Tensor:
    # Distinct per row without a [T, S] argsort: a random offset plus a random permutation of a 4096-slot window.
    window = torch.rand(tokens, 4096, generator=gen, device="cuda").argsort(dim=1)[:, :TOPK]
    base = torch.randint(0, num_slots - 4096, (tokens, 1), generator=gen, device="cuda")
    return (base + window).to(torch.int32)


def test_cache_writers_at_prefill_size(poisoned) -> None:
    gen = torch.Generator(device="cuda").manual_seed(103)
    tokens = 16384
    cache = torch.full((tokens + 100, MLA_ROW_BYTES), 0xFF, dtype=torch.uint8, device="cuda")
    expected = cache.clone()
    latent = torch.randn(tokens, 512, generator=gen, device="cuda").to(torch.bfloat16)
    rope = torch.randn(tokens, 64, generator=gen, device="cuda").to(torch.bfloat16)
    slots = torch.randperm(tokens + 100, generator=gen, device="cuda")[:tokens]
    write_mla_kv(cache, latent, rope, slots)
    naive_write_mla_kv(expected, latent, rope, slots)
    assert torch.equal(cache, expected)
    pages = torch.full((tokens // PAGE_SIZE + 2, INDEX_PAGE_BYTES), 0xFF, dtype=torch.uint8, device="cuda")
    expected_pages = pages.clone()
    k = torch.randn(tokens, 128, generator=gen, device="cuda").to(torch.bfloat16)
    write_index_k(pages, k, slots.to(torch.int32))
    naive_write_index_k(expected_pages, k, slots.to(torch.int32))
    assert torch.equal(pages, expected_pages)


class DecodeStep:
    """Static buffers and one decode step (indexer -> top-k -> slots -> sparse MLA), as a captured graph replays."""

    def __init__(self, batch: int, heads: int, max_context: int, gen: torch.Generator) -> None:
        self.max_context = max_context
        pages_per_request = max_context // PAGE_SIZE
        self.pages = index_pages(batch * pages_per_request, "cuda", gen)
        self.kv = mla_cache(self.pages.shape[0] * PAGE_SIZE, "cuda", gen)  # same slots as the index pages
        self.table = block_table(batch, pages_per_request, self.pages.shape[0], "cuda", gen)
        self.q_index = index_queries((batch, 1, 32), "cuda", gen)
        self.weights = head_weights(batch, 32, "cuda", gen)
        self.q = mla_queries(batch, heads, "cuda", gen)
        self.lens = torch.ones(batch, dtype=torch.int32, device="cuda")

    def run(self) -> tuple[torch.Tensor, ...]:
        logits = paged_mqa_logits(self.q_index, self.pages, self.weights, self.lens, self.table, self.max_context)
        positions = topk_indices(logits, self.lens, TOPK)
        slots = slots_from_positions(positions, self.table)
        out, lse = sparse_mla(self.q, self.kv, slots, SM_SCALE)
        return logits, positions, slots, out, lse

    def check(self, logits, positions, slots, out, lse) -> None:
        want_logits = naive_paged_mqa_logits(
            self.q_index, self.pages, self.weights, self.lens, self.table, self.max_context
        )
        assert_close(logits, want_logits, "graph: logits")
        want_positions = naive_topk_indices(logits, self.lens, TOPK)  # the twin's top-k of the same logits
        assert_topk_valid(positions, want_positions, logits, self.lens)
        assert topk_recall(positions, want_positions) >= 0.99
        assert torch.equal(slots, naive_slots_from_positions(positions, self.table))
        want_out, want_lse = naive_sparse_mla(self.q, self.kv, slots, SM_SCALE)
        assert_close(out, want_out, "graph: sparse MLA output")
        assert_close(lse, want_lse, "graph: sparse MLA lse")


@pytest.mark.parametrize("heads", [64, 8], ids=["H64", "H8"])
def test_decode_path_replays_in_a_cuda_graph_with_new_lengths(heads) -> None:
    gen = torch.Generator(device="cuda").manual_seed(104)
    step = DecodeStep(batch=8, heads=heads, max_context=16384, gen=gen)
    step.lens.copy_(torch.tensor([16384, 1, 2048, 2049, 5000, 63, 9999, 12345], dtype=torch.int32))
    step.run()  # compile and autotune outside the capture
    torch.cuda.synchronize()

    torch.cuda.set_sync_debug_mode("error")  # any host synchronization inside the ops now raises
    try:
        step.run()
    finally:
        torch.cuda.set_sync_debug_mode("default")

    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step.run()  # warm the graph pool's allocator on the side stream
        with torch.cuda.graph(graph, stream=stream):
            captured = step.run()
    torch.cuda.current_stream().wait_stream(stream)

    for lens in ([3000, 16384, 1, 64, 2047, 8000, 100, 15000], [1, 2, 3, 4, 5, 6, 7, 16384]):
        step.lens.copy_(torch.tensor(lens, dtype=torch.int32))
        step.q.copy_(mla_queries(step.q.shape[0], heads, "cuda", gen))
        step.q_index.copy_(index_queries(tuple(step.q_index.shape[:3]), "cuda", gen))
        graph.replay()
        torch.cuda.synchronize()
        step.check(*captured)
