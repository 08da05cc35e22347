"""bench/ holds scripts, not a package: they import their siblings by name, and so do these tests.

bench/ is on sys.path only while the modules under test are imported. Left there, its gateway.py and kernels.py
would shadow other imports of those names for the rest of the session (SGLang depends on a `kernels` package).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[2] / "bench")

sys.path.insert(0, BENCH)
try:
    for name in ("rig", "clients", "targets", "peers_report", "overload"):
        importlib.import_module(name)
finally:
    sys.path.remove(BENCH)
