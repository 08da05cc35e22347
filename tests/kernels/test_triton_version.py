"""The Triton in use is one the `[kernels]` extra allows, and the extra allows no interpreter known to fail.

The CPU suite runs the kernels under Triton's interpreter, whose behaviour differs between releases. The interpreters
of triton 3.7.1, 3.8.0 and 3.9.0 run the whole suite (3.8.0 with torch 2.14.1, what `pip install
'sparsegate[kernels]'` resolves beside sglang 0.5.23); 3.6.0's raises on a `range` bound computed from tensors
(paged_mqa_logits) and on the top-k kernels. So the extra asks for >= 3.7, and this file fails on an interpreter
outside it. A GPU run compiles the kernels instead (the lent H200 carries triton 3.6), so there it is skipped.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
INTERPRETERS_THAT_FAIL = ["3.6.0"]


def kernels_triton_requirement() -> Requirement:
    extra = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["kernels"]
    return next(req for req in map(Requirement, extra) if req.name == "triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU compiles the kernels; the interpreter is not in use")
def test_the_interpreter_in_use_is_one_the_kernels_extra_allows() -> None:
    installed = version("triton")
    required = kernels_triton_requirement()
    assert required.specifier.contains(installed, prereleases=True), (
        f"triton {installed} runs the kernel suite's interpreter, but the [kernels] extra asks for {required}"
    )


def test_the_kernels_extra_excludes_interpreters_known_to_fail() -> None:
    required = kernels_triton_requirement()
    allowed = [v for v in INTERPRETERS_THAT_FAIL if required.specifier.contains(v)]
    assert not allowed, f"the [kernels] extra ({required}) allows triton {allowed}, whose interpreter fails the suite"
