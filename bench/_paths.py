"""Import first in every bench script: fixes sys.path so the project's `common` is found.

`python bench/NAME.py` puts bench/ first on sys.path, where bench/common.py would shadow the
project's `common` package. This puts the project root first instead, so that both
`common.protocol` (the project) and `bench.common` (the shared bench code) import.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_BENCH = ROOT / "bench"
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
