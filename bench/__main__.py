"""`python -m bench`: the same as `python bench/bench.py`."""

from __future__ import annotations

import sys

from bench.cli import main

sys.exit(main())
