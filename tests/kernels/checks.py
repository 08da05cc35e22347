"""The one tolerance table of the kernel tests, and the comparisons that use it."""

from __future__ import annotations

import torch

# Relative error ||out - ref|| / ||ref|| allowed per output dtype (../shared/DSA.md and the issue): bf16 outputs
# carry one bf16 rounding of P and of the result; float32 logits differ from the twin only in summation order.
TOLERANCE = {torch.bfloat16: 1e-2, torch.float32: 1e-3}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Same shape, no NaN, the same infinities in the same places, and relative error within TOLERANCE."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual32, expected32 = actual.float(), expected.float()
    assert not actual32.isnan().any(), f"{what}: {int(actual32.isnan().sum())} NaN (unwritten or invalid) elements"
    inf_a, inf_e = actual32.isinf(), expected32.isinf()
    assert torch.equal(inf_a, inf_e), f"{what}: {int((inf_a != inf_e).sum())} elements differ in being infinite"
    assert torch.equal(actual32[inf_a], expected32[inf_e]), f"{what}: infinities of different sign"
    finite = ~inf_e
    diff = (actual32[finite] - expected32[finite]).norm()
    scale = expected32[finite].norm().clamp_min(1e-30)
    rel = float(diff / scale)
    tol = TOLERANCE[actual.dtype]
    assert rel <= tol, f"{what}: relative error {rel:.3e} > {tol:.0e}"


def topk_recall(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Fraction of the expected (valid) indices that the actual rows also hold, over all rows."""
    hit = total = 0
    for a, e in zip(actual.tolist(), expected.tolist(), strict=True):
        want = {i for i in e if i >= 0}
        hit += len(want & {i for i in a if i >= 0})
        total += len(want)
    return hit / max(total, 1)


def assert_topk_valid(
    actual: torch.Tensor, expected: torch.Tensor, logits: torch.Tensor, lengths: torch.Tensor
) -> None:
    """Each row: distinct positions inside its length, -1 only as padding, and the same multiset of selected
    values as the twin (the check that holds whichever way ties resolve)."""
    for r in range(actual.shape[0]):
        row, want = actual[r], expected[r]
        valid = row[row >= 0].long()
        assert int((row < 0).sum()) == int((want < 0).sum()), f"row {r}: wrong amount of -1 padding"
        assert torch.all(row[: valid.numel()] >= 0), f"row {r}: -1 before a valid index"
        assert valid.unique().numel() == valid.numel(), f"row {r}: repeated positions"
        assert bool((valid < int(lengths[r])).all()), f"row {r}: a position past the row's length"
        got = logits[r, valid].sort().values
        ref = logits[r, want[want >= 0].long()].sort().values
        assert torch.equal(got, ref), f"row {r}: selected values differ from the twin's"
