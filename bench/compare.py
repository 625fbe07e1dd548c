"""Side-by-side serving benchmark: the command line of the `serving` package beside this file.

    .venv/bin/python bench/compare.py [--concurrency 1,16,64,256] [--window 10] [--quick]

See `bench/serving/__init__.py` for what it runs and how.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
