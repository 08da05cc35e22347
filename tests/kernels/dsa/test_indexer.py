"""paged_mqa_logits and ragged_mqa_logits against their twins."""

from __future__ import annotations

import pytest
import torch

from sparsegate.kernels.dsa import paged_mqa_logits, ragged_mqa_logits
from sparsegate.kernels.dsa._layout import PAGE_SIZE
from sparsegate.kernels.dsa.naive import naive_paged_mqa_logits, naive_ragged_mqa_logits, read_index_k
from tests.kernels.checks import assert_close
from tests.kernels.dsa_inputs import block_table, head_weights, index_pages, index_queries

PAGED_CASES = [
    # (next_n, heads, context lengths, max_context)
    (1, 32, [63, 200], 256),
    (2, 64, [1, 64, 130], 320),
    (3, 32, [257], 300),
    (4, 32, [5, 100], 128),
]


@pytest.mark.parametrize(
    ("next_n", "heads", "lengths", "max_context"),
    PAGED_CASES,
    ids=[f"B{len(c[2])}-N{c[0]}-H{c[1]}-len{'+'.join(map(str, c[2]))}-max{c[3]}" for c in PAGED_CASES],
)
def test_paged_mqa_logits_matches_twin(next_n, heads, lengths, max_context, device, poisoned) -> None:
    gen = torch.Generator(device=device).manual_seed(10)
    batch = len(lengths)
    pages_per_request = -(-max_context // PAGE_SIZE)
    pages = index_pages(batch * pages_per_request + 3, device, gen)
    table = block_table(batch, pages_per_request, pages.shape[0], device, gen)
    q = index_queries((batch, next_n, heads), device, gen)
    weights = head_weights(batch * next_n, heads, device, gen)
    context_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    logits = paged_mqa_logits(q, pages, weights, context_lens, table, max_context)
    expected = naive_paged_mqa_logits(q, pages, weights, context_lens, table, max_context)
    assert_close(logits, expected, "paged logits")


RAGGED_CASES = [(70, 150, 32), (33, 97, 64)]


@pytest.mark.parametrize(("rows", "keys", "heads"), RAGGED_CASES, ids=[f"M{m}-N{n}-H{h}" for m, n, h in RAGGED_CASES])
def test_ragged_mqa_logits_matches_twin(rows, keys, heads, device, poisoned) -> None:
    gen = torch.Generator(device=device).manual_seed(11)
    q = index_queries((rows, heads), device, gen)
    k = index_queries((keys,), device, gen)
    k_scale = torch.rand(keys, generator=gen, device=device) + 0.5
    weights = head_weights(rows, heads, device, gen)
    ks = torch.randint(0, keys // 2, (rows,), generator=gen, device=device, dtype=torch.int32)
    ke = torch.minimum(
        ks + torch.randint(0, keys, (rows,), generator=gen, device=device, dtype=torch.int32),
        torch.tensor(keys, device=device),
    )
    ke[0] = ks[0]  # a row that sees nothing
    logits = ragged_mqa_logits(q, k, k_scale, weights, ks, ke.to(torch.int32))
    expected = naive_ragged_mqa_logits(q, k, k_scale, weights, ks, ke.to(torch.int32))
    assert_close(logits, expected, "ragged logits")


def test_head_weights_are_not_folded_into_q_across_the_relu(device) -> None:
    """sum_h w_h ReLU(q_h . k) is not ReLU-free (sum_h w_h q_h) . k: a kernel that folds must fail this test."""
    gen = torch.Generator(device=device).manual_seed(12)
    heads, length = 32, 130
    pages = index_pages(4, device, gen)
    table = torch.arange(3, dtype=torch.int32, device=device)[None, :]
    q = index_queries((1, 1, heads), device, gen)
    weights = head_weights(1, heads, device, gen)
    lens = torch.tensor([length], dtype=torch.int32, device=device)
    logits = paged_mqa_logits(q, pages, weights, lens, table, 192)[0, :length]

    positions = torch.arange(length, device=device)
    k, k_scale = read_index_k(pages, table[0, positions // PAGE_SIZE].long(), positions % PAGE_SIZE)
    folded = (weights[0] @ q[0, 0].float()) @ k.T * k_scale
    correct = naive_paged_mqa_logits(q, pages, weights, lens, table, 192)[0, :length]
    assert float((folded - correct).norm() / correct.norm()) > 0.1, "inputs too tame to tell folding apart"
    assert_close(logits, correct, "logits with the ReLU inside the head sum")


def test_paged_mqa_logits_says_how_many_heads(device) -> None:
    gen = torch.Generator(device=device).manual_seed(13)
    q = index_queries((1, 1, 16), device, gen)
    with pytest.raises(ValueError, match="32 or 64 index heads"):
        paged_mqa_logits(
            q,
            index_pages(1, device, gen),
            torch.zeros(1, 16, device=device),
            torch.ones(1, dtype=torch.int32, device=device),
            torch.zeros(1, 1, dtype=torch.int32, device=device),
            64,
        )
