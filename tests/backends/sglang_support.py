"""Import sglang 0.5.23's real modules on a CPU-only machine, and run the kernels under Triton's interpreter.

sglang is installed without its dependencies (see the Makefile's test stamp). One import cannot be satisfied on a
CPU torch: `sglang.srt.configs` (reached by the attention registry) imports `nano_nemotron_vl`, which imports
`sglang.srt.multimodal.internvl_utils`, which imports `torchvision.transforms` for a vision model we never load.
The only torchvision for torch 2.13 on the package index is the CUDA build, whose `_C.so` needs libtorch_cuda. When
torchvision is missing, a stand-in module answers those imports; it holds `InterpolationMode` (transformers builds
a table from it at import) and placeholders that raise if anything is ever called.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings
from types import SimpleNamespace
from typing import Any

import pytest

import tests.kernels.conftest  # noqa: F401  (TRITON_INTERPRET without a GPU, and the interpreter repairs)

SGLANG_VERSION = "0.5.23"
INSTALL_HINT = (
    "sglang 0.5.23 is not importable: install it as the Makefile's test stamp does "
    "(pip install --no-deps sglang==0.5.23 plus its pure-Python imports)"
)


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _Unavailable:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("torchvision stand-in: the CPU test environment has no torchvision")


def _install_torchvision_stand_in() -> None:
    names = [
        "torchvision",
        "torchvision.io",
        "torchvision.ops",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.transforms.v2",
        "torchvision.transforms.v2.functional",
    ]
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = []
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__version__ = "0.28.0"  # type: ignore[attr-defined]
        module.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]

        def unavailable(attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)
            return _Unavailable

        module.__getattr__ = unavailable  # type: ignore[method-assign]
        sys.modules[name] = module
    for name in names[1:]:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, sys.modules[name])


def import_sglang(*modules: str) -> list[Any]:
    """The named sglang modules; fails (never skips) when sglang 0.5.23 cannot be imported."""
    if importlib.util.find_spec("sglang") is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    if importlib.util.find_spec("torchvision") is None and "torchvision" not in sys.modules:
        _install_torchvision_stand_in()
    with warnings.catch_warnings():
        # Import-time notices of a CPU machine: "Only CUDA ... support AWQ/GGUF", deprecations in dependencies.
        warnings.simplefilter("ignore")
        loaded = [importlib.import_module(m) for m in modules]
    version = importlib.import_module("sglang.version").__version__
    assert version == SGLANG_VERSION, f"the hooks were read from sglang {SGLANG_VERSION}, this is {version}"
    return loaded


def load_sparsegate_plugin() -> SimpleNamespace:
    """sglang's own `load_plugins()` with SGLANG_PLUGINS=sparsegate, as every worker process runs it (once)."""
    plugins, registry, hooks, utils, indexer, backend, topk, draft, mla_prefill, mla_decode = import_sglang(
        "sglang.srt.plugins",
        "sglang.srt.layers.attention.attention_registry",
        "sglang.srt.plugins.hook_registry",
        "sglang.srt.layers.attention.dsa.utils",
        "sglang.srt.layers.attention.dsa.dsa_indexer",
        "sglang.srt.layers.attention.dsa_backend",
        "sglang.srt.layers.attention.dsa.dsa_topk_backend",
        "sglang.srt.speculative.draft_utils",
        "sglang.kernels.ops.attention.dsa.triton_sparse_mla",
        "sglang.kernels.ops.attention.dsa.triton_sparse_mla_decode",
    )
    import_sglang("sglang.srt.layers.attention.dsv4.indexer")  # the torch fallbacks' lazy import; warns once
    saved = os.environ.get("SGLANG_PLUGINS")
    os.environ["SGLANG_PLUGINS"] = "sparsegate"
    try:
        plugins.load_plugins()
    finally:
        if saved is None:
            del os.environ["SGLANG_PLUGINS"]
        else:
            os.environ["SGLANG_PLUGINS"] = saved
    return SimpleNamespace(
        plugins=plugins,
        registry=registry,
        hooks=hooks,
        utils=utils,
        indexer=indexer,
        backend=backend,
        topk=topk,
        draft=draft,
        mla_prefill=mla_prefill,
        mla_decode=mla_decode,
    )
