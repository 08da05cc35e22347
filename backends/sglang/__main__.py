"""`python -m sparsegate.backends.sglang ...` is `python -m sparsegate.backends.sglang.launch ...`."""

from __future__ import annotations

import sys

from sparsegate.backends.sglang.launch import main

sys.exit(main())
