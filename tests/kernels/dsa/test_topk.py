"""topk_indices and slots_from_positions against their twins."""

from __future__ import annotations

import pytest
import torch

from sparsegate.kernels.dsa import slots_from_positions, topk_indices
from sparsegate.kernels.dsa import topk as topk_module
from sparsegate.kernels.dsa.naive import naive_slots_from_positions, naive_topk_indices
from tests.kernels.checks import assert_topk_valid, topk_recall

TOPK_CASES = [
    # (k, row lengths, row width)
    (2048, [10, 2048, 2049, 3000, 5000], 5000),
    (64, [1, 63, 64, 65, 700, 1111], 1200),
]


@pytest.fixture(params=["row", "split"])
def topk_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Force one program per row (as for prefill) or rows split over chunks (as for decode)."""
    monkeypatch.setattr(topk_module, "sm_count", lambda _: 1 if request.param == "row" else 1 << 20)
    return str(request.param)


@pytest.fixture(params=[5, 8], ids=["radix5", "radix8"])
def radix_bits(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Digits of 5 bits (7 passes, the last overlapping) or of 8 bits (4 passes)."""
    monkeypatch.setattr(topk_module, "RADIX_BITS", request.param)
    monkeypatch.setattr(topk_module, "ROW_RADIX_BITS", request.param)
    return int(request.param)


@pytest.mark.parametrize(
    ("k", "lengths", "width"),
    TOPK_CASES,
    ids=[f"topk{c[0]}-R{len(c[1])}-len{'+'.join(map(str, c[1]))}" for c in TOPK_CASES],
)
def test_topk_is_exact_without_ties(k, lengths, width, topk_path, radix_bits, device, poisoned) -> None:
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


def test_topk_with_heavy_ties_selects_the_same_values(topk_path, radix_bits, device, poisoned) -> None:
    gen = torch.Generator(device=device).manual_seed(21)
    logits = torch.randint(0, 40, (3, 3000), generator=gen, device=device).float() / 8
    lens = torch.tensor([3000, 2500, 2100], dtype=torch.int32, device=device)
    got = topk_indices(logits, lens, 2048)
    want = naive_topk_indices(logits, lens, 2048)
    assert_topk_valid(got, want, logits, lens)
    assert topk_recall(got, want) > 0.5  # ties may resolve either way; the value check above is the real one


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
