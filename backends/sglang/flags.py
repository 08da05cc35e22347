"""The SGLang 0.5.23 server flags and environment an Ada (sm_89) DSA worker needs, as data, each with its reason.

Names and choices were read from sglang 0.5.23: `srt/arg_groups/fields/exec_.py` (attention, dsa_*, fp8 GEMM and MoE
runner backends), `fields/model.py` (`--kv-cache-dtype`), `fields/schedule.py` (`--page-size`), `fields/spec.py`
(`--speculative-dsa-topk-backend`), `srt/environ.py` (`SGLANG_PLUGINS`, `SGLANG_DSA_FUSE_TOPK`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PLUGIN_NAME = "sparsegate"  # the entry-point name in the `sglang.srt.plugins` group


@dataclass(frozen=True)
class AdaFlag:
    """One server flag: the value the launcher adds when it is absent, and the values it refuses on Ada."""

    name: str
    value: str
    why: str
    # value -> why it cannot run on Ada (or cannot read the kernels' layout). Values in neither set pass through.
    refused: dict[str, str] = field(default_factory=dict)
    # When set, only these values are accepted; anything else is refused with `why`.
    only: frozenset[str] | None = None


_SM90 = "needs sm_90+ (Hopper/Blackwell): wgmma/TMA or FlashMLA, absent on Ada"
_NOT_CUDA = "not a CUDA backend"
_DSA_ATTENTION_REFUSED = {
    "flashmla_sparse": _SM90,
    "flashmla_sparse_q8": _SM90,
    "flashmla_kv": _SM90,
    "flashmla_auto": _SM90,
    "fa3": _SM90,
    "trtllm": "TensorRT-LLM sparse MLA targets sm_100",
    "flashinfer_sparse_mla": "trtllm-gen sparse MLA targets sm_100",
    # 0.5.23 dsa_backend.py:_validate_triton_sparse_mla_backend raises for sm_major < 9.
    "triton_sparse_mla": "sglang 0.5.23 refuses it below sm_90 (dsa_backend._validate_triton_sparse_mla_backend)",
    "tilelang": "reads a raw 576-byte FP8 row without scales, not the 656-byte row the sparsegate kernels read",
    "aiter": _NOT_CUDA,
    "intel_xpu": _NOT_CUDA,
}

ADA_FLAGS: tuple[AdaFlag, ...] = (
    AdaFlag(
        "--attention-backend",
        "dsa",
        "the DSA backend, re-registered by the sparsegate plugin with the Ada kernels ('nsa' is its old alias)",
        only=frozenset({"dsa", "nsa"}),
    ),
    AdaFlag(
        "--kv-cache-dtype",
        "fp8_e4m3",
        "the FP8 MLA cache: 656 bytes a token (512 e4m3 + 4 f32 scales + 64 bf16 rope), the row sparse_mla reads",
        only=frozenset({"fp8_e4m3"}),
    ),
    AdaFlag(
        "--page-size",
        "64",
        "64-token pages: the index-K page layout (8448 bytes) the indexer kernels read",
        only=frozenset({"64"}),
    ),
    AdaFlag(
        "--dsa-prefill-backend",
        "triton",
        "the 'triton' path hands a page_size=1 slot table over the paged FP8 cache, which the plugin routes to "
        "sparsegate's sparse_mla",
        refused=_DSA_ATTENTION_REFUSED,
        only=frozenset({"triton"}),
    ),
    AdaFlag(
        "--dsa-decode-backend",
        "triton",
        "as prefill: the plugin routes the 'triton' sparse-MLA decode to sparsegate's sparse_mla",
        refused=_DSA_ATTENTION_REFUSED,
        only=frozenset({"triton"}),
    ),
    AdaFlag(
        "--dsa-topk-backend",
        "torch",
        "the unfused top-k path, which the plugin routes to sparsegate's radix-select topk_indices",
        refused={
            "sgl-kernel": "sgl-kernel's fast_topk asks for 128 KB of shared memory; Ada has 99 KiB per block",
            "flashinfer": "not routed to the sparsegate top-k; unverified on sm_89",
        },
        only=frozenset({"torch"}),
    ),
    AdaFlag(
        "--speculative-dsa-topk-backend",
        "torch",
        "the MTP draft worker has its own top-k flag (default sgl-kernel); harmless without speculative decoding",
        refused={
            "sgl-kernel": "sgl-kernel's fast_topk asks for 128 KB of shared memory; Ada has 99 KiB per block",
            "flashinfer": "not routed to the sparsegate top-k; unverified on sm_89",
        },
        only=frozenset({"torch"}),
    ),
    AdaFlag(
        "--fp8-gemm-backend",
        "triton",
        "blockwise FP8 GEMM through Triton, which compiles for sm_89",
        refused={
            "deep_gemm": "DeepGEMM targets sm_90/sm_100",
            "flashinfer_trtllm": "targets sm_100",
            "flashinfer_deepgemm": "Hopper (sm_90) only",
            "flashinfer_cutedsl": "sm_100/sm_103 only",
            "flashinfer_cutlass": "FlashInfer's groupwise FP8 CUTLASS GEMM targets sm_90+",
            "aiter": _NOT_CUDA,
        },
    ),
    AdaFlag(
        "--moe-runner-backend",
        "triton",
        "fused MoE through Triton, which compiles for sm_89",
        refused={
            "deep_gemm": "DeepGEMM targets sm_90/sm_100",
            "flashinfer_trtllm": "targets sm_100",
            "flashinfer_trtllm_routed": "targets sm_100",
            "experimental_sgl_trtllm": "targets sm_100",
            "flashinfer_cutedsl": "sm_100/sm_103 only",
            "flashinfer_megamoe": "targets sm_100",
            "megamoe": "targets sm_100",
            "hpc_ops": "Hopper (sm_90) only",
            "aiter": _NOT_CUDA,
            "intel_xpu": _NOT_CUDA,
        },
    ),
)

# Environment the worker needs. SGLANG_PLUGINS is merged (other allowed plugins stay); the others are set.
ADA_ENV: dict[str, tuple[str, str]] = {
    "SGLANG_PLUGINS": (PLUGIN_NAME, "the allow-list of `sglang.srt.plugins` entry points: loads the sparsegate plugin"),
    "SGLANG_DSA_FUSE_TOPK": ("false", "the torch (sparsegate) top-k runs only on the unfused path"),
}
# Values of those variables the launcher refuses rather than overrides silently.
REFUSED_ENV: dict[str, dict[str, str]] = {
    "SGLANG_DSA_FUSE_TOPK": {
        v: "the fused top-k kernels (sgl-kernel, flashinfer) bypass the sparsegate top-k and need sm_90+ shared memory"
        for v in ("1", "true", "True", "TRUE", "yes")
    },
}
