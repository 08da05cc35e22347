"""Public Triton fallbacks to time beside ours, loaded from released wheels' source files (never committed).

Put the files in `.whl/baselines/` (git-ignored), taken from the released wheels:
- sglang 0.5.23: `sglang/kernels/ops/attention/dsa/triton_sparse_mla.py`, `triton_sparse_mla_decode.py`,
  `triton_sparse_mla_prefill.py`, saved as `sglang_<name>.py`;
- vLLM 0.33.0: `vllm/v1/attention/ops/rocm_aiter_mla_sparse.py`, saved as `vllm_rocm_aiter_mla_sparse.py`.

Only the Triton modules are loaded. sglang's three imports from the rest of sglang are replaced by stubs that
answer as a CUDA machine would; vLLM's Triton paged-logits kernel is lifted out of its module by its AST (the module
imports all of vLLM) and launched exactly as `rocm_fp8_paged_mqa_logits_triton` launches it.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

BASELINES = Path(__file__).resolve().parents[1] / ".whl" / "baselines"


def _stub(name: str, **attrs: Any) -> None:
    module = sys.modules.get(name) or types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_sglang() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType] | None:
    """(triton_sparse_mla, triton_sparse_mla_decode, triton_sparse_mla_prefill) of sglang 0.5.23, or None."""
    files = [
        BASELINES / f"sglang_{n}.py"
        for n in ("triton_sparse_mla", "triton_sparse_mla_decode", "triton_sparse_mla_prefill")
    ]
    if not all(f.exists() for f in files):
        return None
    for package in ("sglang", "sglang.kernels", "sglang.kernels.ops", "sglang.kernels.ops.attention", "sglang.srt"):
        _stub(package, __path__=[])
    _stub("sglang.kernels.ops.attention.dsa", __path__=[])
    _stub("sglang.kernels.ops.quantization", __path__=[])
    _stub("sglang.kernels.ops.attention.metadata", q8kv8_topk_length_from_indices=None)  # gfx950-only path
    _stub("sglang.kernels.ops.quantization.fp8_kernel", is_fp8_fnuz=lambda: False)
    _stub(
        "sglang.srt.utils",
        get_device_core_count=lambda i=0: torch.cuda.get_device_properties(i).multi_processor_count,
        is_gfx95_supported=lambda: False,
    )
    base = "sglang.kernels.ops.attention.dsa."
    fused = _load(base + "triton_sparse_mla", files[0])
    decode = _load(base + "triton_sparse_mla_decode", files[1])
    prefill = _load(base + "triton_sparse_mla_prefill", files[2])
    return fused, decode, prefill


def load_vllm_paged_logits() -> Any | None:
    """A launcher with vLLM 0.33.0's Triton paged-logits kernel and launch parameters, or None."""
    path = BASELINES / "vllm_rocm_aiter_mla_sparse.py"
    if not path.exists():
        return None
    tree = ast.parse(path.read_text())
    kernel_src = next(
        ast.get_source_segment(path.read_text(), node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "_fp8_paged_mqa_logits_decode_kernel"
    )
    assert kernel_src is not None
    decorated = "@triton.jit\n" + kernel_src
    module = types.ModuleType("vllm_paged_logits_baseline")
    module.__dict__.update(triton=triton, tl=tl)
    # triton.jit reads the function's source file; give it a real one.
    file = Path("/tmp/vllm_paged_logits_baseline.py")
    file.write_text("import triton\nimport triton.language as tl\n\n" + decorated + "\n")
    loaded = _load("vllm_paged_logits_baseline", file)
    kernel = loaded._fp8_paged_mqa_logits_decode_kernel

    def launch(
        q: torch.Tensor,
        pages: torch.Tensor,
        weights: torch.Tensor,
        lens: torch.Tensor,
        table: torch.Tensor,
        max_len: int,
        out: torch.Tensor,
    ) -> torch.Tensor:
        batch, next_n, heads, dim = q.shape
        block = 64
        kv_val = pages.view(torch.float8_e4m3fn)
        kv_scale = pages.view(torch.float32)
        rows = batch * next_n
        tiles = (max_len + block - 1) // block
        cu = torch.cuda.get_device_properties(q.device).multi_processor_count
        splits = max(1, min(max(1, cu), tiles, 1024 // rows))
        kernel[(rows, splits)](
            q, kv_val, kv_scale, weights, lens, table, out,
            q.stride(0), q.stride(1), q.stride(2), weights.stride(0),
            kv_val.stride(0), kv_scale.stride(0), (block * dim) // 4, table.stride(0), out.stride(0),
            table.shape[1], max_len,
            NUM_HEADS=heads, HEAD_SIZE=dim, BLOCK_SIZE=block, BLOCK_KV=block, N_SPLITS=splits, NEXT_N=next_n,
            CTX_PER_ROW=False, num_warps=4, num_stages=2,
        )  # fmt: skip
        return out

    return launch


def load_vllm_ragged_torch() -> Any | None:
    """vLLM 0.33.0's ragged logits fallback, `fp8_mqa_logits_torch` (plain torch: the release has no Triton one)."""
    path = BASELINES / "vllm_rocm_aiter_mla_sparse.py"
    if not path.exists():
        return None
    text = path.read_text()
    tree = ast.parse(text)
    src = next(
        ast.get_source_segment(text, node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "fp8_mqa_logits_torch"
    )
    assert src is not None
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(src, str(path), "exec"), namespace)
    return namespace["fp8_mqa_logits_torch"]
