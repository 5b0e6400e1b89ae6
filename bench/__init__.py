"""Benchmarks: `python bench/NAME.py [--quick]`; results land in bench/results/."""
