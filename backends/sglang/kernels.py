"""The `sparsegate.kernels.dsa` ops the adapters call (shared/DSA.md §4), looked up by name at import.

By name, so that `mypy --strict -p sparsegate.backends` does not follow into the Triton kernel modules, which are
untyped by nature (`@triton.jit`). A missing op fails this import, never a request: the plugin has no fallback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

_dsa = importlib.import_module("sparsegate.kernels.dsa")

paged_mqa_logits: Callable[..., Any] = _dsa.paged_mqa_logits
ragged_mqa_logits: Callable[..., Any] = _dsa.ragged_mqa_logits
topk_indices: Callable[..., Any] = _dsa.topk_indices
sparse_mla: Callable[..., Any] = _dsa.sparse_mla
