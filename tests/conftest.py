"""Suite-wide set-up that must happen before any test module is imported.

Triton picks its backend when a kernel is first decorated, and more than one test package imports Triton
(the kernels, and the SGLang plugin through them). Choosing the CPU interpreter here, once, means collection
order can never leave a kernel bound to a GPU driver that this machine does not have.
"""

from __future__ import annotations

import os
import shutil


def _gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


if not _gpu_visible():
    os.environ["TRITON_INTERPRET"] = "1"
