"""Compile every kernel config the sm_89 path can select, ahead of time, for GPUTarget("cuda", 89, 32).

Run as `python -m tests.kernels.sm89_compile` (no GPU needed; TRITON_INTERPRET must be unset, since the interpreter
replaces `triton.jit`). Prints one JSON object per line: the kernel and config, the shared memory Triton reports,
whether the PTX holds the expected Ada tensor-core and conversion instructions (and no wgmma), and ptxas's
registers and spill bytes for sm_89.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

ADA = ("cuda", 89, 32)
FP8_MMA = "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32"
BF16_MMA = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
FP8_CVT = "cvt.rn.satfinite.e4m3x2.f32"


@dataclass
class Spec:
    kernel: str  # attribute name in its module
    module: str
    types: dict[str, str]  # pointer and float arguments; the rest are i32 or constexpr
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    needs: list[str] = field(default_factory=list)  # PTX substrings that must appear

    @property
    def label(self) -> str:
        knobs = ",".join(
            f"{k}={v}"
            for k, v in self.constexprs.items()
            if k.isupper()
            and k.startswith(
                (
                    "BLOCK",
                    "TILES",
                    "H",
                    "NEXT",
                    "PARTIAL",
                    "ROW",
                    "LONG",
                    "CHUNK",
                    "CANDIDATES",
                    "DEQUANT",
                    "SPLITS",
                    "COLS",
                )
            )
        )
        return f"{self.kernel}[{knobs},w{self.num_warps},s{self.num_stages}]"


def specs() -> list[Spec]:
    """Every (kernel, config) the sm_89 path can select, each at its largest shared-memory shape."""
    import importlib

    from sparsegate.kernels.dsa._configs import allowed_configs
    from sparsegate.kernels.dsa._layout import (
        INDEX_PAGE_BYTES,
        INDEX_SCALE_OFFSET,
        MLA_ROPE_OFFSET,
        MLA_ROW_BYTES,
        MLA_SCALE_OFFSET,
    )

    indexer = importlib.import_module("sparsegate.kernels.dsa.indexer")
    sparse_mla = importlib.import_module("sparsegate.kernels.dsa.sparse_mla")  # the package re-exports the function
    topk = importlib.import_module("sparsegate.kernels.dsa.topk")
    ada = (8, 9)
    mla_row = {"ROW_BYTES": MLA_ROW_BYTES, "SCALE_OFFSET": MLA_SCALE_OFFSET, "ROPE_OFFSET": MLA_ROPE_OFFSET}
    index_page = {"PAGE_BYTES": INDEX_PAGE_BYTES, "SCALE_OFFSET": INDEX_SCALE_OFFSET, "PAGE": 64, "DIM": 128}
    out = [
        Spec(
            "_quantize_blocks_kernel",
            "quantize",
            {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32"},
            {"D": 512, "BLOCK": 128, "ROWS": 16},
            needs=[FP8_CVT],
        ),
        Spec(
            "_write_mla_kv_kernel",
            "quantize",
            {
                "latent_ptr": "*bf16",
                "rope_ptr": "*bf16",
                "slots_ptr": "*i64",
                "row_fp8_ptr": "*fp8e4nv",
                "row_f32_ptr": "*fp32",
                "row_bf16_ptr": "*bf16",
            },
            {**mla_row, "TILES": 4, "TILE": 128, "ROPE": 64},
            needs=[FP8_CVT],
        ),
        Spec(
            "_write_index_k_kernel",
            "quantize",
            {"k_ptr": "*bf16", "slots_ptr": "*i64", "page_fp8_ptr": "*fp8e4nv", "page_f32_ptr": "*fp32"},
            index_page,
            needs=[FP8_CVT],
        ),
    ]
    paged_types = {
        "q_ptr": "*fp8e4nv",
        "k_ptr": "*fp8e4nv",
        "k_scale_ptr": "*fp32",
        "w_ptr": "*fp32",
        "context_lens_ptr": "*i32",
        "table_ptr": "*i32",
        "out_ptr": "*fp32",
    }
    for cfg in allowed_configs(indexer.PAGED_CANDIDATES, ada, indexer.paged_shared_memory):
        for heads, next_n in ((32, 1), (64, indexer.MAX_NEXT_N)):
            shape = {"H": heads, "NEXT_N": next_n, "ROWS": next_n, **index_page, **cfg.kwargs}
            out.append(
                Spec(
                    "_paged_mqa_logits_kernel", "indexer", paged_types, shape, cfg.num_warps, cfg.num_stages, [FP8_MMA]
                )
            )
    ragged_types = {
        "q_ptr": "*fp8e4nv",
        "k_ptr": "*fp8e4nv",
        "k_scale_ptr": "*fp32",
        "w_ptr": "*fp32",
        "ks_ptr": "*i32",
        "ke_ptr": "*i32",
        "out_ptr": "*fp32",
    }
    ragged = allowed_configs(indexer.RAGGED_CANDIDATES, ada, indexer.ragged_shared_memory, indexer.RAGGED_HOPPER_ONLY)
    for cfg in ragged:
        shape = {"H": 64, "DIM": 128, **cfg.kwargs}
        out.append(
            Spec("_ragged_mqa_logits_kernel", "indexer", ragged_types, shape, cfg.num_warps, cfg.num_stages, [FP8_MMA])
        )
    logits_types = {
        "logits_ptr": "*fp32",
        "lengths_ptr": "*i32",
        "out_ptr": "*i32",
        "found_ptr": "*i32",
        "threshold_ptr": "*i32",
        "cand_key_ptr": "*i32",
        "cand_pos_ptr": "*i32",
    }
    sizes = {"K": 2048, "CANDIDATES": topk.CANDIDATES, "SAMPLE": topk.SAMPLE, "SIGMAS": topk.SAMPLE_SIGMAS}
    warps = topk.topk_warps(ada)
    chunked = {"K": 2048, "CANDIDATES": topk.CANDIDATES}
    out += [
        *(
            Spec(
                "_topk_row_kernel",
                "topk",
                logits_types,
                {**sizes, "ROW_BLOCK": topk.ROW_BLOCK, "LONG": long, "STREAM": topk.STREAM},
                topk.row_warps(ada),
            )
            for long in (False, True)
        ),
        Spec("_topk_threshold_kernel", "topk", logits_types, sizes, warps),
        Spec(
            "_topk_compact_kernel",
            "topk",
            logits_types,
            {**chunked, "CHUNK": topk.CHUNK},
            warps,
        ),
        Spec(
            "_topk_select_kernel",
            "topk",
            logits_types,
            {"K": 2048, "CANDIDATES": topk.CANDIDATES, "BLOCK": topk.ROW_BLOCK},
            warps,
        ),
    ]
    out.append(
        Spec(
            "_slots_kernel",
            "topk",
            {"pos_ptr": "*i32", "table_ptr": "*i32", "out_ptr": "*i32"},
            {"PAGE": 64, "BLOCK": 1024},
        )
    )
    mla_types = {
        "q_ptr": "*bf16",
        "row_fp8_ptr": "*fp8e4nv",
        "row_f32_ptr": "*fp32",
        "row_bf16_ptr": "*bf16",
        "idx_ptr": "*i32",
        "out_ptr": "*bf16",
        "lse_ptr": "*fp32",
        "part_ptr": "*fp32",
        "part_lse_ptr": "*fp32",
        "qk_scale": "fp32",
    }
    mla = allowed_configs(
        sparse_mla.SPARSE_MLA_CANDIDATES, ada, sparse_mla.sparse_mla_shared_memory, sparse_mla.SPARSE_MLA_HOPPER_ONLY
    )
    for cfg in mla:
        for partial in (False, True):
            shape = {
                "PARTIAL": partial,
                **mla_row,
                "LATENT": 512,
                "TILES": 4,
                "ROPE": 64,
                **cfg.kwargs,
            }
            out.append(
                Spec("_sparse_mla_kernel", "sparse_mla", mla_types, shape, cfg.num_warps, cfg.num_stages, [BF16_MMA])
            )
    merge = importlib.import_module("sparsegate.kernels.dsa.sparse_mla_merge")
    merge_types = {"part_ptr": "*fp32", "part_lse_ptr": "*fp32", "out_ptr": "*bf16", "lse_ptr": "*fp32"}
    for splits in sparse_mla.SPLIT_CHOICES[1:]:
        block_h, block_d = merge.merge_tile(splits, 128)
        shape = {"SPLITS": splits, "LATENT": 512, "BLOCK_H": block_h, "BLOCK_D": block_d}
        out.append(Spec("_merge_splits_kernel", "sparse_mla_merge", merge_types, shape, merge.MERGE_WARPS))
    two_pass = importlib.import_module("sparsegate.kernels.dsa.sparse_mla_two_pass")
    scores_types = {**{k: v for k, v in mla_types.items() if not k.startswith(("out", "lse", "part"))}}
    scores_types.update({"scores_ptr": "*fp32"})
    scores = allowed_configs(
        two_pass.SCORES_CANDIDATES, ada, two_pass.scores_shared_memory, two_pass.SCORES_HOPPER_ONLY
    )
    for cfg in scores:
        shape = {**mla_row, "LATENT": 512, "TILES": 4, "ROPE": 64, **cfg.kwargs}
        out.append(
            Spec("_mla_scores_kernel", "sparse_mla_two_pass", scores_types, shape, cfg.num_warps, cfg.num_stages,
                 [BF16_MMA])
        )  # fmt: skip
    values_types = {
        "row_fp8_ptr": "*fp8e4nv",
        "row_f32_ptr": "*fp32",
        "idx_ptr": "*i32",
        "scores_ptr": "*fp32",
        "out_ptr": "*bf16",
        "lse_ptr": "*fp32",
        "part_ptr": "*fp32",
        "part_lse_ptr": "*fp32",
    }
    values = allowed_configs(
        two_pass.VALUES_CANDIDATES, ada, two_pass.values_shared_memory, two_pass.VALUES_HOPPER_ONLY
    )
    for cfg in values:
        shape = {**{k: mla_row[k] for k in ("ROW_BYTES", "SCALE_OFFSET")}, "LATENT": 512,
                 "TILE": 128, **cfg.kwargs}  # fmt: skip
        out.append(
            Spec("_mla_values_kernel", "sparse_mla_two_pass", values_types, shape, cfg.num_warps, cfg.num_stages,
                 [BF16_MMA])
        )  # fmt: skip
    return out


def _ptxas_report(ptx: str) -> dict[str, int]:
    import triton

    ptxas = os.environ.get("TRITON_PTXAS_PATH") or os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"
    )
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run(
            [ptxas, "-arch=sm_89", "-v", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    text = run.stderr + run.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {
        "registers": int(regs.group(1)) if regs else -1,
        "spill_stores": int(spills.group(1)) if spills else 0,
        "spill_loads": int(spills.group(2)) if spills else 0,
    }


def compile_one(spec: Spec) -> dict[str, Any]:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    module = importlib.import_module(f"sparsegate.kernels.dsa.{spec.module}")
    fn = getattr(module, spec.kernel)
    while not isinstance(fn, JITFunction):  # an autotuned kernel wraps its JITFunction
        fn = fn.fn
    signature = {n: "constexpr" if n in spec.constexprs else spec.types.get(n, "i32") for n in fn.arg_names}
    pointers = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t.startswith("*")}
    src = ASTSource(fn=fn, signature=signature, constexprs=spec.constexprs, attrs=pointers)
    compiled = triton.compile(
        src, target=GPUTarget(*ADA), options={"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    )
    ptx = compiled.asm["ptx"]
    return {
        "label": spec.label,
        "shared": int(compiled.metadata.shared),
        "missing": [s for s in spec.needs if s not in ptx],
        "wgmma": "wgmma" in ptx,
        **_ptxas_report(ptx),
    }


def main() -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    all_specs = specs()
    with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for result in pool.map(compile_one, all_specs):
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
