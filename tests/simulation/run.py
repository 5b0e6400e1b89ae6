"""Run the simulator: `python tests/simulation/run.py --seeds N --minutes M` (soak), or
`--seed S` to replay one seed exactly (same seed and commit: the same run, event for event).

Prints each seed with the options it derived, then what it covered; at the end, simulated
hours per real minute and events per second. Exits 1 on the first violation, printing the
seed and step that replay it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for `simulation`

from simulation.kernel import Violation  # noqa: E402
from simulation.plants import PLANTS, planted  # noqa: E402
from simulation.world import run_seed  # noqa: E402

log = logging.getLogger("simulation")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, help="run (replay) this one seed")
    p.add_argument("--seeds", type=int, default=10, help="how many seeds to run")
    p.add_argument("--first", type=int, default=0, help="the first seed of --seeds")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="simulated minutes of faults per seed (then a quiet phase)")
    p.add_argument("--budget", type=float, default=None,
                   help="stop starting new seeds after this many real minutes")
    p.add_argument("--plant", choices=sorted(PLANTS), help="run with one planted bug")
    p.add_argument("--keep-going", action="store_true", help="do not stop at a violation")
    p.add_argument("--verbose", "-v", action="store_true", help="log the production code")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL + 1,
        format="%(levelname)s %(name)s: %(message)s",
    )
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    started = time.perf_counter()
    simulated = events = 0.0
    failures = 0
    for seed in seeds:
        if args.budget is not None and time.perf_counter() - started > args.budget * 60:
            break
        try:
            with planted(args.plant):
                outcome = run_seed(seed, args.minutes, announce=print)
        except Violation as exc:
            failures += 1
            print(f"VIOLATION {exc}", flush=True)
            if not args.keep_going:
                break
            continue
        simulated += outcome.simulated
        events += outcome.events
        print(outcome.summary(), flush=True)
    real = time.perf_counter() - started
    print(
        f"covered {simulated / 3600:.2f} simulated hours in {real:.1f} s real: "
        f"{simulated / 3600 / (real / 60):.1f} simulated hours per real minute, "
        f"{events / real:,.0f} events per second; {failures} violation(s)"
        + (f" with plant {args.plant}" if args.plant else "")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
