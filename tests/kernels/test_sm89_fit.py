"""Every kernel config the sm_89 path can select compiles for Ada ahead of time and fits it.

No GPU is needed: Triton compiles for GPUTarget("cuda", 89, 32) and ptxas (shipped with Triton) assembles for sm_89.
The compile runs in a subprocess because this test session runs the interpreter, which replaces `triton.jit`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsegate.kernels.dsa._configs import ADA_SHARED_MEMORY_BYTES

REPO = Path(__file__).resolve().parents[2]
KERNELS = {
    "_quantize_blocks_kernel",
    "_write_mla_kv_kernel",
    "_write_index_k_kernel",
    "_paged_mqa_logits_kernel",
    "_ragged_mqa_logits_kernel",
    "_topk_row_kernel",
    "_topk_threshold_kernel",
    "_topk_compact_kernel",
    "_topk_select_kernel",
    "_slots_kernel",
    "_sparse_mla_kernel",
    "_merge_splits_kernel",
    "_mla_scores_kernel",
    "_mla_values_kernel",
}


@pytest.fixture(scope="module")
def ada_builds() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.kernels.sm89_compile"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_has_an_ada_build(ada_builds) -> None:
    assert {b["label"].split("[")[0] for b in ada_builds} == KERNELS


def test_every_ada_config_fits_99_kib_of_shared_memory(ada_builds) -> None:
    too_big = [(b["label"], b["shared"]) for b in ada_builds if b["shared"] > ADA_SHARED_MEMORY_BYTES]
    assert not too_big, f"over {ADA_SHARED_MEMORY_BYTES} bytes on sm_89: {too_big}"


def test_fp8_dots_and_conversions_are_ada_instructions(ada_builds) -> None:
    wrong = [(b["label"], b["missing"]) for b in ada_builds if b["missing"] or b["wgmma"]]
    assert not wrong, f"expected Ada mma.sync / cvt instructions (and no wgmma) missing: {wrong}"


def test_no_ada_config_spills_registers(ada_builds) -> None:
    spills = [(b["label"], b["spill_stores"]) for b in ada_builds if b["spill_stores"] or b["spill_loads"]]
    assert not spills, f"ptxas reports spills for sm_89: {spills}"
