"""The DSA attention backend for Ada: sglang 0.5.23's `DeepseekSparseAttnBackend`, checked for the Ada layout.

The kernels are swapped below the backend (indexer resolvers, unfused top-k, Triton sparse MLA; see plugin.py), so
this subclass adds no compute path of its own. It exists so that a worker whose settings would bypass those hooks
fails at start with the fix, instead of running DeepGEMM / sgl-kernel / FlashMLA code paths that cannot run on
sm_89, and so that the MTP draft backends, which `DraftBackendFactory` builds without the registry, are the same
class.

Read from sglang 0.5.23: `srt/layers/attention/dsa_backend.py` (`DeepseekSparseAttnBackend.__init__` sets
`dsa_kv_cache_store_fp8`, `kv_cache_dim`, `dsa_index_kpool`, `dsa_prefill_impl`, `dsa_decode_impl`,
`dsa_topk_backend`, `use_fused_topk`; `DeepseekSparseAttnMultiStepBackend.__init__` sets `topk`,
`speculative_num_steps`, `_sink_pad_cache`, `attn_backends`) and `srt/speculative/draft_utils.py`
(`DraftBackendFactory._create_dsa_decode_backend` / `_create_dsa_prefill_backend` return `("dsa", backend)` and read
`draft_model_runner`, `topk`, `speculative_num_steps`, `seed_dsa_topk_from_draft_extend`).
"""

from __future__ import annotations

import logging
from typing import Any

from sglang.srt.layers.attention.dsa_backend import (
    DeepseekSparseAttnBackend,
    DeepseekSparseAttnMultiStepBackend,
)

from sparsegate.backends.sglang.mla import MLA_ROW_BYTES

logger = logging.getLogger(__name__)

ADA_IMPL = "triton"


class AdaConfigError(RuntimeError):
    """The worker's settings would run a DSA path the sparsegate plugin does not route to its Ada kernels."""


def ada_config_problems(backend: Any) -> list[str]:
    """What in an initialised DeepseekSparseAttnBackend keeps it off the sparsegate kernels; each with its fix."""
    problems = []
    if not backend.dsa_kv_cache_store_fp8 or backend.kv_cache_dim != MLA_ROW_BYTES:
        problems.append(
            f"the MLA cache is not the {MLA_ROW_BYTES}-byte FP8 row (kv_cache_dim={backend.kv_cache_dim}): "
            "use --kv-cache-dtype fp8_e4m3 with the triton DSA backends"
        )
    if backend.dsa_index_kpool != 1:
        problems.append(f"index_kpool={backend.dsa_index_kpool}: the pooled indexer calls DeepGEMM directly")
    for phase, impl in (("prefill", backend.dsa_prefill_impl), ("decode", backend.dsa_decode_impl)):
        if impl != ADA_IMPL:
            problems.append(f"--dsa-{phase}-backend {impl}: use --dsa-{phase}-backend {ADA_IMPL}")
    if not backend.dsa_topk_backend.is_torch():
        problems.append(
            f"top-k backend {backend.dsa_topk_backend.value}: use --dsa-topk-backend torch "
            "(--speculative-dsa-topk-backend torch for the draft worker)"
        )
    if backend.use_fused_topk:
        problems.append("the fused top-k is on: set SGLANG_DSA_FUSE_TOPK=false")
    return problems


class AdaSparseAttnBackend(DeepseekSparseAttnBackend):  # type: ignore[misc]
    """`DeepseekSparseAttnBackend` that refuses, at construction, settings that bypass the sparsegate kernels."""

    def __init__(self, model_runner: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model_runner, *args, **kwargs)
        problems = ada_config_problems(self)
        if problems:
            raise AdaConfigError(
                "sparsegate DSA backend: " + "; ".join(problems) + ". (To run without sparsegate, leave it out of "
                "SGLANG_PLUGINS.)"
            )


class AdaSparseAttnMultiStepBackend(DeepseekSparseAttnMultiStepBackend):  # type: ignore[misc]
    """The MTP draft-decode container, with one AdaSparseAttnBackend per draft step."""

    def __init__(
        self,
        model_runner: Any,
        topk: int,
        speculative_num_steps: int,
        seed_dsa_topk_from_draft_extend: bool = False,
    ) -> None:
        # Not super().__init__(): it would build (and allocate buffers for) upstream backends by name first.
        self.topk = topk
        self.speculative_num_steps = speculative_num_steps
        self._sink_pad_cache: dict[tuple[int, int], Any] = {}
        self.attn_backends = [
            AdaSparseAttnBackend(
                model_runner,
                speculative_step_id=step,
                topk=topk,
                speculative_num_steps=speculative_num_steps,
                seed_dsa_topk_from_draft_extend=seed_dsa_topk_from_draft_extend,
            )
            for step in range(speculative_num_steps - 1)
        ]


def create_backend(runner: Any) -> AdaSparseAttnBackend:
    """The attention-registry factory for "dsa" and "nsa" (`register_attention_backend(name)(fn)`, fn(runner))."""
    return AdaSparseAttnBackend(runner)


def create_draft_decode_backend(factory: Any) -> tuple[str, AdaSparseAttnMultiStepBackend]:
    """REPLACE for `DraftBackendFactory._create_dsa_decode_backend`."""
    return (
        "dsa",
        AdaSparseAttnMultiStepBackend(
            factory.draft_model_runner,
            factory.topk,
            factory.speculative_num_steps,
            seed_dsa_topk_from_draft_extend=factory.seed_dsa_topk_from_draft_extend,
        ),
    )


def create_draft_extend_backend(factory: Any) -> tuple[str, AdaSparseAttnBackend]:
    """REPLACE for `DraftBackendFactory._create_dsa_prefill_backend`."""
    return (
        "dsa",
        AdaSparseAttnBackend(
            factory.draft_model_runner,
            skip_prefill=False,
            seed_dsa_topk_from_draft_extend=factory.seed_dsa_topk_from_draft_extend,
        ),
    )
