"""The sglang plugin: entry point `sparsegate` in the group `sglang.srt.plugins` (pyproject.toml).

How sglang 0.5.23 loads it (`srt/plugins/__init__.py`): every process (engine, scheduler, detokenizer, DP
controller) calls `load_plugins()` once. It lists `importlib.metadata.entry_points(group="sglang.srt.plugins")`,
keeps the names in the comma-separated `SGLANG_PLUGINS` allow-list (all of them when it is empty), calls each
loaded function with no arguments, then `HookRegistry.apply_hooks()` (`srt/plugins/hook_registry.py`), which
patches each target and rebinds every `from X import name` copy already imported.

`register()` does two things, once per process:
- maps "dsa" and its alias "nsa" in `srt/layers/attention/attention_registry.py:ATTENTION_BACKENDS` to
  AdaSparseAttnBackend (`register_attention_backend(name)(factory)`, factory(runner));
- registers the hooks of `HOOKS`: the indexer resolvers, the unfused top-k, SGLang's Triton sparse MLA and the MTP
  draft-backend factory, which builds its backends without the registry.
Called outside `load_plugins()`, follow it with `HookRegistry.apply_hooks()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("dsa", "nsa")

_DSA = "sglang.srt.layers.attention.dsa"
_TRITON_MLA = "sglang.kernels.ops.attention.dsa"
# (sglang 0.5.23 target, HookType name, sparsegate hook as "module:attribute")
HOOKS: tuple[tuple[str, str, str], ...] = (
    (f"{_DSA}.utils.resolve_fp8_paged_mqa_logits_fn", "REPLACE", "indexer:resolve_fp8_paged_mqa_logits_fn"),
    (f"{_DSA}.utils.resolve_fp8_mqa_logits_fn", "REPLACE", "indexer:resolve_fp8_mqa_logits_fn"),
    (f"{_DSA}.utils.resolve_paged_mqa_logits_metadata_fn", "REPLACE", "indexer:resolve_paged_mqa_logits_metadata_fn"),
    (f"{_DSA}.utils.resolve_num_sms", "REPLACE", "indexer:device_sm_count"),
    (f"{_DSA}.dsa_topk_backend._topk_unfused", "AROUND", "topk:unfused_topk"),
    (f"{_TRITON_MLA}.triton_sparse_mla.triton_sparse_mla_fwd", "AROUND", "mla:sparse_mla_prefill"),
    (f"{_TRITON_MLA}.triton_sparse_mla_decode.triton_sparse_mla_decode_splitk", "AROUND", "mla:sparse_mla_decode"),
    (
        "sglang.srt.speculative.draft_utils.DraftBackendFactory._create_dsa_decode_backend",
        "REPLACE",
        "backend:create_draft_decode_backend",
    ),
    (
        "sglang.srt.speculative.draft_utils.DraftBackendFactory._create_dsa_prefill_backend",
        "REPLACE",
        "backend:create_draft_extend_backend",
    ),
)

_registered = False


def resolve_hook(spec: str) -> Callable[..., Any]:
    import importlib

    module, _, name = spec.partition(":")
    hook: Callable[..., Any] = getattr(importlib.import_module(f"sparsegate.backends.sglang.{module}"), name)
    return hook


def register() -> None:
    """The `sglang.srt.plugins` entry point. Idempotent."""
    global _registered
    if _registered:
        return
    from sglang.srt.layers.attention.attention_registry import register_attention_backend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sparsegate.backends.sglang.backend import create_backend

    for name in BACKEND_NAMES:
        register_attention_backend(name)(create_backend)
    for target, kind, spec in HOOKS:
        HookRegistry.register(target, resolve_hook(spec), HookType[kind])
    _registered = True
    logger.info("sparsegate: DSA backend %s and %d kernel hooks registered", "/".join(BACKEND_NAMES), len(HOOKS))
