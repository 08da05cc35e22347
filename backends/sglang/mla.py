"""sglang 0.5.23's Triton sparse-MLA calls, routed to `sparsegate.kernels.dsa.sparse_mla` over the 656-byte rows.

With `--dsa-prefill-backend triton` / `--dsa-decode-backend triton` the DSA backend (`dsa_backend.py`) calls
- prefill, `forward_extend`: `sglang.kernels.ops.attention.dsa.triton_sparse_mla.triton_sparse_mla_fwd(q_nope=,
  q_rope=, kv=, indices=page_table_1.unsqueeze(1), sm_scale=, d_v=, topk_length=, max_topk_length=)`;
- decode, `_forward_triton_decode`: `...dsa.triton_sparse_mla_decode.triton_sparse_mla_decode_splitk(q_nope=,
  q_rope=, kv=, indices=page_table_1.unsqueeze(1), sm_scale=, d_v=, workspace=)`.
Both import the function at call time, take q_nope [T, H, 512], q_rope [T, H, 64], the layer's KV buffer and a
page_size=1 slot table [T, 1, topk] (-1 = none), and return [1, T, H, d_v] bf16.

Those kernels read a raw 576-wide row. With `--kv-cache-dtype fp8_e4m3` on CUDA the pool stores the 656-byte
scaled row instead (`kv_cache_configurator.calculate_mla_kv_cache_dim`, `dsa_kv_cache_store_fp8`). The plugin wraps
both functions (HookRegistry AROUND): a 656-byte one-byte-element KV goes to sparse_mla; any other layout is left to
SGLang's kernel, which reads it as designed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sparsegate.backends.sglang.kernels import sparse_mla

Tensor = Any

MLA_ROW_BYTES = 656
LATENT_DIM = 512


def is_scaled_fp8_cache(kv: Tensor) -> bool:
    return bool(kv.shape[-1] == MLA_ROW_BYTES and kv.element_size() == 1)


def sparse_mla_656(q_nope: Tensor, q_rope: Tensor, kv: Tensor, indices: Tensor, sm_scale: float, d_v: int) -> Tensor:
    """[1, T, H, 512] bf16, the shape SGLang's Triton sparse MLA returns."""
    if d_v != LATENT_DIM:
        raise ValueError(f"sparsegate sparse_mla returns the 512-dim latent; the layer asks for d_v={d_v}")
    if not kv.is_contiguous():
        raise ValueError("the FP8 MLA cache must be contiguous to be read as uint8 [S, 656] rows")
    rows = kv.view(torch.uint8).reshape(-1, MLA_ROW_BYTES)
    q = torch.cat([q_nope.to(torch.bfloat16), q_rope.to(torch.bfloat16)], dim=-1)
    slots = indices.reshape(q.shape[0], -1).to(torch.int32)
    out, _lse = sparse_mla(q, rows, slots, float(sm_scale))
    return out.unsqueeze(0)


def sparse_mla_prefill(
    original: Callable[..., Tensor],
    q_nope: Tensor,
    q_rope: Tensor,
    kv: Tensor,
    indices: Tensor,
    sm_scale: float,
    d_v: int = LATENT_DIM,
    topk_length: Tensor | None = None,
    max_topk_length: int | None = None,
) -> Tensor:
    """AROUND hook for `triton_sparse_mla_fwd`. `topk_length` is a bound SGLang uses to skip -1 tails; sparse_mla
    skips them by itself."""
    if not is_scaled_fp8_cache(kv):
        return original(q_nope, q_rope, kv, indices, sm_scale, d_v, topk_length, max_topk_length)
    return sparse_mla_656(q_nope, q_rope, kv, indices, sm_scale, d_v)


def sparse_mla_decode(
    original: Callable[..., Tensor],
    q_nope: Tensor,
    q_rope: Tensor,
    kv: Tensor,
    indices: Tensor,
    sm_scale: float,
    d_v: int = LATENT_DIM,
    kv_splits: int | None = None,
    workspace: Any = None,
) -> Tensor:
    """AROUND hook for `triton_sparse_mla_decode_splitk`; sparse_mla picks its own split count from shapes."""
    if not is_scaled_fp8_cache(kv):
        return original(q_nope, q_rope, kv, indices, sm_scale, d_v, kv_splits, workspace)
    return sparse_mla_656(q_nope, q_rope, kv, indices, sm_scale, d_v)
