"""topk_indices and slots_from_positions against their twins."""

from __future__ import annotations

import pytest
import torch

from sparsegate.kernels.dsa import slots_from_positions, topk_indices
from sparsegate.kernels.dsa import topk as topk_module
from sparsegate.kernels.dsa.naive import naive_slots_from_positions, naive_topk_indices
from tests.kernels.checks import assert_topk_valid, topk_recall

TOPK_CASES = [
    # (k, row lengths, row width, sizes): "small" shrinks the buffers so short rows take the long-row paths
    (2048, [10, 2048, 2049, 3000, 5000], 5000, "full"),
    (64, [1, 63, 64, 65, 700, 1111], 1200, "full"),
    (64, [1, 63, 64, 65, 700, 1111], 1200, "small"),
    (16, [17, 255, 256, 257, 1000], 1000, "small"),
]
SMALL_SIZES = {"CANDIDATES": 256, "ROW_BLOCK": 256, "CHUNK": 256, "SAMPLE": 128, "STREAM": 64}


@pytest.fixture(params=["row", "split"])
def topk_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force one program per row (as for prefill) or rows split over chunks (as for decode)."""
    monkeypatch.setattr(topk_module, "sm_count", lambda _: 1 if request.param == "row" else 1 << 20)
    return str(request.param)


@pytest.fixture(params=["sampled", "fallback"])
def topk_threshold(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sampled threshold as shipped, or one set far too high, so that too few keys pass it and every long row
    is solved by bisection over the whole row (the path a bad sample or heavy ties take)."""
    if request.param == "fallback":
        monkeypatch.setattr(topk_module, "SAMPLE_SIGMAS", -1000.0)
    return str(request.param)


def shrink(monkeypatch: pytest.MonkeyPatch, sizes: str) -> None:
    if sizes == "small":
        for name, value in SMALL_SIZES.items():
            monkeypatch.setattr(topk_module, name, value)


@pytest.mark.parametrize(
    ("k", "lengths", "width", "sizes"),
    TOPK_CASES,
    ids=[f"topk{c[0]}-R{len(c[1])}-len{'+'.join(map(str, c[1]))}-{c[3]}" for c in TOPK_CASES],
)
def test_topk_is_exact_without_ties(
    k, lengths, width, sizes, topk_path, topk_threshold, monkeypatch, device, poisoned
) -> None:
    shrink(monkeypatch, sizes)
    gen = torch.Generator(device=device).manual_seed(20)
    logits = torch.randn(len(lengths), width, generator=gen, device=device)
    logits[1] = -logits[1].abs()  # a row of negative logits exercises the sign handling of the keys
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    got = topk_indices(logits, lens, k)
    want = naive_topk_indices(logits, lens, k)
    assert got.dtype == torch.int32 and got.shape == (len(lengths), k)
    assert_topk_valid(got, want, logits, lens)
    for r in range(len(lengths)):
        assert set(got[r].tolist()) == set(want[r].tolist()), f"row {r} differs from the twin's set"


@pytest.mark.parametrize(("k", "sizes"), [(2048, "full"), (64, "small")], ids=["topk2048-full", "topk64-small"])
def test_topk_with_heavy_ties_selects_the_same_values(k, sizes, topk_path, monkeypatch, device, poisoned) -> None:
    shrink(monkeypatch, sizes)
    gen = torch.Generator(device=device).manual_seed(21)
    logits = torch.randint(0, 40, (4, 3000), generator=gen, device=device).float() / 8
    logits[3] = 1.5  # every key tied: more candidates than the buffer holds with the small sizes
    lens = torch.tensor([3000, 2500, 2100, 3000], dtype=torch.int32, device=device)
    got = topk_indices(logits, lens, k)
    want = naive_topk_indices(logits, lens, k)
    assert_topk_valid(got, want, logits, lens)


def test_topk_leaves_its_candidate_counters_at_zero(device) -> None:
    """The split path's per-row counters persist across calls (no memset in a captured graph): each call must
    hand them back zeroed, or the next call would compact into the wrong places."""
    gen = torch.Generator(device=device).manual_seed(24)
    logits = torch.randn(2, 9000, generator=gen, device=device)
    lens = torch.tensor([9000, 5000], dtype=torch.int32, device=device)
    for _ in range(2):
        got = topk_indices(logits, lens, 2048)
        assert_topk_valid(got, naive_topk_indices(logits, lens, 2048), logits, lens)
    counters = topk_module.persistent_zeros(logits.device, "topk_found", 1)
    assert int(counters.abs().sum()) == 0


def test_topk_reads_only_the_visible_prefix_with_infinities_after_it(device, poisoned) -> None:
    gen = torch.Generator(device=device).manual_seed(22)
    logits = torch.randn(2, 4000, generator=gen, device=device)
    logits[:, 3000:] = float("inf")  # beyond the length: must be ignored however large
    lens = torch.tensor([3000, 2999], dtype=torch.int32, device=device)
    got = topk_indices(logits, lens, 2048)
    want = naive_topk_indices(logits, lens, 2048)
    assert_topk_valid(got, want, logits, lens)
    assert topk_recall(got, want) == 1.0


def test_slots_from_positions_matches_twin(device, poisoned) -> None:
    gen = torch.Generator(device=device).manual_seed(23)
    rows, k, max_pages = 3, 100, 7
    positions = torch.randint(0, max_pages * 64, (rows, k), generator=gen, device=device, dtype=torch.int32)
    positions[:, 90:] = -1
    table = torch.randint(0, 1000, (rows, max_pages), generator=gen, device=device, dtype=torch.int32)
    got = slots_from_positions(positions, table)
    assert torch.equal(got, naive_slots_from_positions(positions, table))
    assert bool((got[:, 90:] == -1).all())
