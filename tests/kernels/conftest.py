"""Kernel tests run natively on a CUDA machine and under Triton's CPU interpreter everywhere else.

The interpreter must be chosen before any kernel is decorated, so this file sets TRITON_INTERPRET=1 when no GPU
is visible, then repairs two interpreter defects (../shared/DSA.md §5) in the interpreter itself, never in the
tolerances:

- a `tl.dot` with a bfloat16 operand multiplies the raw 16-bit patterns: the patched dot decodes bf16 to float32;
  bf16 elementwise `+`, `-`, `*` do the same to the patterns: the patched ones compute in float32 and round back to
  bf16 (nearest even), as the GPU's bf16 instructions do;
- float32 -> float8 e4m3 conversion rounds ~2 % of values wrongly (a carry out of the mantissa is OR-ed into the
  exponent instead of added, and ties round up): the patched conversion uses torch's round-to-nearest-even, clamped
  to +-448 as the GPU's `cvt.rn.satfinite` does.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

GPU = torch.cuda.is_available()
if not GPU:
    os.environ["TRITON_INTERPRET"] = "1"
# Triton 3.9 warns once that its FP-fusion default will change; keep today's behaviour and silence it.
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import numpy as np  # noqa: E402
import triton.language as tl  # noqa: E402


def _install_interpreter_workarounds() -> None:
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder, "_sparsegate_patched", False):
        return
    original_dot = builder.create_dot
    original_convert = interpreter._convert_float

    def as_float32(handle: Any) -> Any:
        if handle.dtype.scalar == tl.bfloat16:
            data = (handle.data.astype(np.uint32) << 16).view(np.float32)
            return interpreter.TensorHandle(data, tl.float32)
        return handle

    def create_dot(self: Any, a: Any, b: Any, d: Any, *args: Any) -> Any:
        return original_dot(self, as_float32(a), as_float32(b), d, *args)

    def bf16_arithmetic(original: Any) -> Any:
        def create(self: Any, lhs: Any, rhs: Any) -> Any:
            if lhs.dtype.scalar != tl.bfloat16:
                return original(self, lhs, rhs)
            result = original(self, as_float32(lhs), as_float32(rhs)).data.astype(np.float32)
            bits = torch.from_numpy(np.ascontiguousarray(result)).to(torch.bfloat16).view(torch.int16).numpy()
            return interpreter.TensorHandle(bits.view(np.uint16), tl.bfloat16)

        return create

    def convert_float(data: Any, input_dtype: Any, output_dtype: Any, rounding_mode: Any) -> Any:
        if input_dtype == tl.float32 and output_dtype == tl.float8e4nv:
            values = torch.from_numpy(np.ascontiguousarray(data).view(np.float32).copy()).clamp(-448.0, 448.0)
            return values.to(torch.float8_e4m3fn).view(torch.uint8).numpy()
        return original_convert(data, input_dtype, output_dtype, rounding_mode)

    builder.create_dot = create_dot
    for name in ("create_fadd", "create_fsub", "create_fmul"):
        setattr(builder, name, bf16_arithmetic(getattr(builder, name)))
    interpreter._convert_float = convert_float
    builder._sparsegate_patched = True


if not GPU:
    _install_interpreter_workarounds()


@pytest.fixture
def device() -> str:
    return "cuda" if GPU else "cpu"


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.dtype.is_floating_point and t.element_size() > 1:
        t.fill_(float("nan"))
    elif t.element_size() == 1:
        t.view(torch.uint8).fill_(0xFF)  # also a NaN for float8 e4m3
    else:
        t.fill_(torch.iinfo(t.dtype).max)  # an index no row has
    return t


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tensor the launchers allocate starts as NaN (or an impossible index), so unwritten elements fail."""
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(real_empty_like(*a, **k)))
