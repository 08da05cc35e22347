"""`python -m sparsegate.backends.sim --port P --model NAME --max-context N ...`"""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
