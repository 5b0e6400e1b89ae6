"""Import first in every bench script: fixes sys.path so the project's `common` is found.

`python bench/NAME.py` puts bench/ first on sys.path, where bench/common.py would shadow the
project's `common` package. This puts the project root first instead, so that
`common.protocol` (the project), `bench.common` (the shared bench code) and `tests.helpers`
(the test helpers bench.common reuses; tests/ has no __init__, so it imports as a namespace
package from the root, and tests/ itself never goes on sys.path) all import.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_BENCH = ROOT / "bench"
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH]
