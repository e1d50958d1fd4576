"""The bench's entry point: `python bench/bench.py [--case flood|pages] [--no-mqtt] ...` (see bench/cli.py).

Also what the baseline relays run (`bench.py --relay <exchange>`). The harness and the cases are the
`bench` package beside this file.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0], where `import bench` would find this file rather than the
# package: the repository root goes first (it is also where `app` and `pylib` are imported from).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
