"""The plugin as sglang 0.5.23 loads it: entry point, SGLANG_PLUGINS, registry, hooks, draft factory, Ada checks."""

from __future__ import annotations

import importlib.metadata
import re
from types import SimpleNamespace
from typing import Any

import pytest

from tests.backends.sglang_support import load_sparsegate_plugin

GROUP = "sglang.srt.plugins"


@pytest.fixture(scope="module")
def sglang() -> SimpleNamespace:
    return load_sparsegate_plugin()


def test_entry_point_is_discoverable() -> None:
    (ep,) = [ep for ep in importlib.metadata.entry_points(group=GROUP) if ep.name == "sparsegate"]
    assert ep.value == "sparsegate.backends.sglang.plugin:register"
    from sparsegate.backends.sglang import plugin

    assert ep.load() is plugin.register


def test_sglang_plugins_allow_list_filters_it(sglang: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_PLUGINS", "someone-else")
    assert "sparsegate" not in sglang.plugins.load_plugins_by_group(sglang.plugins.GENERAL_PLUGINS_GROUP)
    monkeypatch.setenv("SGLANG_PLUGINS", "someone-else, sparsegate")
    found = sglang.plugins.load_plugins_by_group(sglang.plugins.GENERAL_PLUGINS_GROUP)
    assert found["sparsegate"][1] == "sparsegate"  # (callable, distribution name)


def test_registry_resolves_dsa_and_nsa_to_the_ada_backend(sglang: SimpleNamespace) -> None:
    from sparsegate.backends.sglang.backend import AdaSparseAttnBackend, create_backend

    for name in ("dsa", "nsa"):
        assert sglang.registry.ATTENTION_BACKENDS[name] is create_backend
    assert issubclass(AdaSparseAttnBackend, sglang.backend.DeepseekSparseAttnBackend)


def test_register_is_idempotent(sglang: SimpleNamespace) -> None:
    from sparsegate.backends.sglang import plugin

    before = {target: len(h) for target, h in sglang.hooks.HookRegistry._hooks.items()}
    plugin.register()
    plugin.register()
    assert {target: len(h) for target, h in sglang.hooks.HookRegistry._hooks.items()} == before
    for target, _, _ in plugin.HOOKS:
        assert before[target] == 1, target
        assert target in sglang.hooks.HookRegistry._patched, target


def test_indexer_resolvers_are_ours_where_the_indexer_reads_them(sglang: SimpleNamespace) -> None:
    from sparsegate.backends.sglang import indexer

    # dsa_indexer and dsa_backend bound the resolvers with `from ... import`; apply_hooks must have rebound them.
    for module in (sglang.utils, sglang.indexer):
        assert module.resolve_fp8_paged_mqa_logits_fn() is indexer.fp8_paged_mqa_logits
        assert module.resolve_fp8_mqa_logits_fn() is indexer.fp8_mqa_logits
    for module in (sglang.utils, sglang.indexer, sglang.backend):
        assert module.resolve_num_sms() >= 1  # no deep_gemm import
    assert sglang.backend.resolve_paged_mqa_logits_metadata_fn() is indexer.paged_mqa_logits_metadata


def test_draft_factory_builds_ada_backends(sglang: SimpleNamespace) -> None:
    from sparsegate.backends.sglang.backend import AdaSparseAttnMultiStepBackend

    # One speculative step builds no per-step backend, so no model runner is needed to see the wiring.
    factory = SimpleNamespace(draft_model_runner=None, topk=1, speculative_num_steps=1)
    factory.seed_dsa_topk_from_draft_extend = False
    stamp, backend = sglang.draft.DraftBackendFactory._create_dsa_decode_backend(factory)
    assert stamp == "dsa"
    assert isinstance(backend, AdaSparseAttnMultiStepBackend)
    assert isinstance(backend, sglang.backend.DeepseekSparseAttnMultiStepBackend)
    assert backend.attn_backends == []


def _initialised(sglang: SimpleNamespace, **overrides: Any) -> dict[str, Any]:
    attrs = {
        "dsa_kv_cache_store_fp8": True,
        "kv_cache_dim": 656,
        "dsa_index_kpool": 1,
        "dsa_prefill_impl": "triton",
        "dsa_decode_impl": "triton",
        "dsa_topk_backend": sglang.topk.DSATopKBackend.TORCH,
        "use_fused_topk": False,
    }
    return {**attrs, **overrides}


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({}, None),
        ({"kv_cache_dim": 576, "dsa_kv_cache_store_fp8": False}, "--kv-cache-dtype fp8_e4m3"),
        ({"dsa_decode_impl": "flashmla_sparse"}, "--dsa-decode-backend triton"),
        ({"dsa_prefill_impl": "tilelang"}, "--dsa-prefill-backend triton"),
        ({"dsa_topk_backend": "SGL_KERNEL"}, "--dsa-topk-backend torch"),
        ({"use_fused_topk": True}, "SGLANG_DSA_FUSE_TOPK=false"),
        ({"dsa_index_kpool": 4}, "index_kpool=4"),
    ],
    ids=["ada", "bf16-cache", "flashmla-decode", "tilelang-prefill", "sgl-kernel-topk", "fused-topk", "kpool"],
)
def test_backend_refuses_settings_that_bypass_the_kernels(
    sglang: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, override: dict[str, Any], complaint: str | None
) -> None:
    from sparsegate.backends.sglang.backend import AdaConfigError, create_backend

    if override.get("dsa_topk_backend") == "SGL_KERNEL":
        override = {**override, "dsa_topk_backend": sglang.topk.DSATopKBackend.SGL_KERNEL}
    attrs = _initialised(sglang, **override)
    seen = []

    def upstream_init(self: Any, runner: Any, *args: Any, **kwargs: Any) -> None:
        # Stands in for the GPU-allocating upstream constructor; sets what 0.5.23's __init__ sets.
        seen.append(runner)
        for name, value in attrs.items():
            setattr(self, name, value)

    monkeypatch.setattr(sglang.backend.DeepseekSparseAttnBackend, "__init__", upstream_init)
    runner = object()
    if complaint is None:
        assert isinstance(create_backend(runner), sglang.backend.DeepseekSparseAttnBackend)
    else:
        with pytest.raises(AdaConfigError, match=re.escape(complaint)):
            create_backend(runner)
    assert seen == [runner]
