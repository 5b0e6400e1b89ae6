"""A deterministic simulator: the production controller, its journal and the senders'
delivery logic on a simulated clock, network and disk, with faults drawn from one seed.

`world.run_seed(seed)` runs one seed and raises `Violation` (naming the seed and the step)
when an invariant breaks; `run.py` is the command line (`--seeds N --minutes M`). See
docs/architecture.md, "The simulator".
"""
