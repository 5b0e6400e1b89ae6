"""Allocator: calls per second and microseconds per call of `allocate` (the public API, float
inputs) and `allocate_integral` (the engine's integer path in Python), for 10 to 10,000
accounts and quantities 1 to 10**9; then the same for sells, `allocate_sell` and
`allocate_sell_integral`, from a book holding twice the largest quantity. Beside them, when
it is built, the C kernel (controller._allocc, through controller.native): called on the
same Python lists of ints (what the book's Python path pays: the lists are converted and a
list of shares built on every call), and on int64 arrays read in place with the shares
written into an int64 array ("kernel": the kernel itself plus one call, what the compiled
hot path pays); "integral/C" is the Python integer path's time over the C kernel's on
lists, measured in the same run. Every C result is checked equal to the Python
one before it is timed. The time should not depend on the quantity.

    python bench/allocator.py [--quick] [--accounts ...] [--quantities ...] [--repeat R]
        [--cpu] [--no-buys] [--no-sells] [--no-native]

Each figure is the best of R repeats of a timeit loop long enough to take --min-seconds, on
the wall clock, or with --cpu on the process's CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import _paths  # noqa: F401  (first: puts the project root, not bench/, on sys.path)

# isort: split
import random
import sys
import time
import timeit
from array import array
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any

from bench.common import SPLIT_SOURCE, Run, console, make_split, parser, print_table, resolve
from common.protocol import build_split
from controller import native
from controller.allocator import (
    allocate,
    allocate_integral,
    allocate_sell,
    allocate_sell_integral,
    name_ranks,
)

PRICE_CENTS = 12_345  # $123.45


def book(accounts: int, seed: int = 3) -> dict[str, Any]:
    """A book near its targets ($1bn, each account within 1% of its split), in both forms:
    floats for `allocate`, and for `allocate_integral` the integers the engine keeps (split
    weights from build_split, micro-dollar values, name ranks)."""
    percents = make_split(accounts)
    split = build_split(SPLIT_SOURCE, 1, percents)
    names = list(split.accounts)
    rng = random.Random(seed)
    cents = {a: round(percents[a] * 10**7 * (1 + rng.uniform(-0.01, 0.01))) for a in names}
    return {
        "names": names,
        "values": {a: cents[a] / 100 for a in names},  # dollars
        "weights": {a: percents[a] / 100 for a in names},  # fractions
        "price": PRICE_CENTS / 100,
        "values_units": [cents[a] * 10_000 for a in names],  # micro-dollars
        "weights_units": list(split.weights),
        "ranks": name_ranks(names),
        "price_units": PRICE_CENTS * 10_000,
    }


def best_per_call(
    call: Callable[[], object], repeat: int, min_seconds: float, cpu: bool = False
) -> float:
    """Seconds per call: the best of `repeat` timeit loops of at least `min_seconds`, on the
    wall clock or (cpu) on this process's CPU time, which other load on the machine barely
    touches."""
    timer = timeit.Timer(call, timer=time.process_time if cpu else timeit.default_timer)
    number = 1
    while (elapsed := timer.timeit(number)) < min_seconds:
        number = max(number * 2, int(number * min_seconds / max(elapsed, 1e-9) * 1.1))
    return min(timer.repeat(repeat=repeat, number=number)) / number


def spread_of(times: list[float | None]) -> float | None:
    known = [t for t in times if t is not None]
    return max(known) / min(known) if known else None


def int64_arrays(*lists: list[int]) -> list[array]:
    """The lists as int64 arrays, which the C kernel reads in place."""
    return [array("q", values) for values in lists]


def kernel_or_none(args: Any) -> ModuleType | None:
    """The C kernel, unless --no-native or it is not built (said once, with the reason)."""
    if args.no_native:
        return None
    if native.allocc is None:
        reason = native.unavailable.get("_allocc", "not loaded")
        console.print(f"[yellow]the C kernel is {reason}: its columns are left empty")
    return native.allocc


def time_kernel(
    name: str,
    python_shares: list[int],
    on_lists: Callable[[], list[int] | None],
    on_arrays: Callable[[], object],
    args: Any,
) -> tuple[float | None, float | None]:
    """Seconds per call of the C kernel on lists and on arrays, each checked equal to the
    Python result first (a None there means the kernel declined: not timed)."""
    for call in (on_lists, on_arrays):
        shares = call()
        if isinstance(shares, array):
            shares = shares.tolist()
        if shares is None:
            console.print(f"[yellow]{name}: the C kernel declined (past its int128 bound)")
            return None, None
        if shares != python_shares:
            raise RuntimeError(f"{name}: the C kernel differs from the Python reference")
    return (
        best_per_call(on_lists, args.repeat, args.min_seconds, args.cpu),
        best_per_call(on_arrays, args.repeat, args.min_seconds, args.cpu),
    )


def us(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6


def per_s(seconds: float | None) -> float | None:
    return None if seconds is None else 1 / seconds


def ratio(slow: float, fast: float | None) -> float | None:
    return None if fast is None else slow / fast


def sell_book(accounts: int, held: int, seed: int = 5) -> dict[str, Any]:
    """`book(accounts)` holding about `held` shares of one ticker in all, each account close
    to its weight of them (within 1%), valued near that holding at the price (within 1%)."""
    b = book(accounts)
    rng = random.Random(seed)
    names, weights = b["names"], b["weights"]
    holdings = [max(1, round(weights[a] * held * (1 + rng.uniform(-0.01, 0.01)))) for a in names]
    cents = [round(h * PRICE_CENTS * (1 + rng.uniform(-0.01, 0.01))) for h in holdings]
    return {
        **b,
        "values": {a: c / 100 for a, c in zip(names, cents, strict=True)},
        "values_units": [c * 10_000 for c in cents],
        "holdings": holdings,
        "holdings_map": dict(zip(names, holdings, strict=True)),
    }


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, nargs="+", default=[10, 100, 1_000, 10_000])
    p.add_argument("--quantities", type=int, nargs="+", default=[1, 10**3, 10**6, 10**9])
    p.add_argument("--repeat", type=int, help="repeats, best taken (7; quick 3)")
    p.add_argument("--min-seconds", type=float, help="per timeit loop (0.2; quick 0.01)")
    p.add_argument("--cpu", action="store_true", help="time on process CPU time, not wall")
    p.add_argument("--no-buys", action="store_true", help="time sells only")
    p.add_argument("--no-sells", action="store_true", help="time buys only")
    p.add_argument("--no-native", action="store_true", help="leave out the C kernel")
    args = resolve(p.parse_args(), repeat=(3, 7), min_seconds=(0.01, 0.2))
    run = Run("allocator", args)
    results: dict[str, Any] = {"runs": [], "sell_runs": []}
    if not args.no_buys:
        buys(args, results)
    if not args.no_sells:
        sells(args, results)
    run.finish(results)
    return 0


def buys(args: Any, results: dict[str, Any]) -> None:
    kernel = kernel_or_none(args)
    rows, summary = [], []
    for accounts in args.accounts:
        b = book(accounts)
        lists = (b["values_units"], b["weights_units"], b["ranks"])
        arrays = int64_arrays(*lists)
        out = array("q", bytes(8 * accounts))  # the kernel's shares, written in place
        per_q = []
        for q in args.quantities:
            public_call = partial(allocate, b["values"], b["weights"], b["price"], q)
            integral_call = partial(
                allocate_integral,
                b["names"],
                b["values_units"],
                b["weights_units"],
                b["price_units"],
                q,
                b["ranks"],
            )
            shares, exact = public_call(), integral_call()
            if sum(shares.values()) != q or exact != [shares[a] for a in b["names"]]:
                raise RuntimeError(f"allocations of {q} shares differ or do not add up")
            public = best_per_call(public_call, args.repeat, args.min_seconds, args.cpu)
            integral = best_per_call(integral_call, args.repeat, args.min_seconds, args.cpu)
            c_lists = c_kernel = None
            if kernel is not None:
                c_lists, c_kernel = time_kernel(
                    f"a buy of {q:,} over {accounts:,} accounts",
                    exact,
                    partial(kernel.buy, *lists, b["price_units"], q),
                    partial(kernel.buy, *arrays, b["price_units"], q, out),
                    args,
                )
            given = sum(1 for x in exact if x)
            per_q.append((public, integral, given == accounts, c_lists, c_kernel))
            results["runs"].append(
                {
                    "accounts": accounts,
                    "quantity": q,
                    "accounts_given_shares": given,
                    "allocate_us": public * 1e6,
                    "allocate_per_s": 1 / public,
                    "allocate_integral_us": integral * 1e6,
                    "allocate_integral_per_s": 1 / integral,
                    "c_lists_us": us(c_lists),
                    "c_lists_per_s": per_s(c_lists),
                    "c_kernel_us": us(c_kernel),
                    "integral_over_c": ratio(integral, c_lists),
                }
            )
            rows.append(
                [
                    accounts,
                    q,
                    public * 1e6,
                    1 / public,
                    integral * 1e6,
                    1 / integral,
                    us(c_lists),
                    per_s(c_lists),
                    us(c_kernel),
                    ratio(integral, c_lists),
                    given,
                ]
            )
        console.print(f"  {accounts:,} accounts: done")
        spread = {
            "accounts": accounts,
            "allocate": spread_of([t[0] for t in per_q]),
            "allocate_integral": spread_of([t[1] for t in per_q]),
            "allocate_all_given": spread_of([t[0] for t in per_q if t[2]]),
            "allocate_integral_all_given": spread_of([t[1] for t in per_q if t[2]]),
            "c_lists": spread_of([t[3] for t in per_q]),
            "c_kernel": spread_of([t[4] for t in per_q]),
        }
        results.setdefault("q_spread", []).append(spread)
        summary.append([accounts, *list(spread.values())[1:]])
    print_table(
        f"Allocator: microseconds per call and calls per second (best of {args.repeat}, gc off"
        f"{', CPU time' if args.cpu else ''})",
        [
            "accounts",
            "q",
            "allocate us",
            "allocate /s",
            "integral us",
            "integral /s",
            "C us",
            "C /s",
            "kernel us",
            "integral/C",
            "accts given shares",
        ],
        rows,
        caption="q = 1 touches only the accounts furthest below target; from q ~ accounts on, "
        "every account gets shares and the time stops changing with q. C: the kernel on the "
        "same lists of ints (converted, and a list of shares built, per call); kernel: on "
        "int64 arrays, the shares written into one",
    )
    print_table(
        "Does the time depend on q?  max/min over q = "
        + ", ".join(f"{q:,}" for q in args.quantities),
        [
            "accounts",
            "allocate max/min",
            "integral max/min",
            "allocate, all given",
            "integral, all given",
            "C max/min",
            "kernel max/min",
        ],
        summary,
        caption="all given: only the q for which every account gets shares",
    )


def sells(args: Any, results: dict[str, Any]) -> None:
    """Sells of each quantity, and of everything held but one share per account (most
    accounts sold out: the bounds bind and the breakpoints are sorted)."""
    kernel = kernel_or_none(args)
    held = 2 * max(args.quantities)
    rows, summary = [], []
    for accounts in args.accounts:
        b = sell_book(accounts, held)
        total = sum(b["holdings"])
        lists = (b["values_units"], b["weights_units"], b["ranks"])
        arrays = int64_arrays(*lists)
        holdings_array = array("q", b["holdings"])
        out = array("q", bytes(8 * accounts))
        per_q = []
        for q in [*args.quantities, total - accounts]:
            public_call = partial(
                allocate_sell, b["values"], b["weights"], b["price"], q, b["holdings_map"]
            )
            integral_call = partial(
                allocate_sell_integral,
                b["names"],
                b["values_units"],
                b["weights_units"],
                b["price_units"],
                q,
                b["holdings"],
                b["ranks"],
            )
            shares, exact = public_call(), integral_call()
            if sum(shares.values()) != q or exact != [shares[a] for a in b["names"]]:
                raise RuntimeError(f"sells of {q} shares differ or do not add up")
            if any(not 0 <= x <= h for x, h in zip(exact, b["holdings"], strict=True)):
                raise RuntimeError(f"a sell of {q} shares takes more than an account holds")
            public = best_per_call(public_call, args.repeat, args.min_seconds, args.cpu)
            integral = best_per_call(integral_call, args.repeat, args.min_seconds, args.cpu)
            c_lists = c_kernel = None
            if kernel is not None:
                c_lists, c_kernel = time_kernel(
                    f"a sell of {q:,} over {accounts:,} accounts",
                    exact,
                    partial(kernel.sell, *lists, b["price_units"], q, b["holdings"]),
                    partial(kernel.sell, *arrays, b["price_units"], q, holdings_array, out),
                    args,
                )
            sellers = sum(1 for x in exact if x)
            sold_out = sum(1 for x, h in zip(exact, b["holdings"], strict=True) if x == h)
            if q in args.quantities:
                per_q.append((public, integral, c_lists, c_kernel))
            results["sell_runs"].append(
                {
                    "accounts": accounts,
                    "quantity": q,
                    "held": total,
                    "accounts_selling": sellers,
                    "accounts_sold_out": sold_out,
                    "allocate_sell_us": public * 1e6,
                    "allocate_sell_per_s": 1 / public,
                    "allocate_sell_integral_us": integral * 1e6,
                    "allocate_sell_integral_per_s": 1 / integral,
                    "c_lists_us": us(c_lists),
                    "c_lists_per_s": per_s(c_lists),
                    "c_kernel_us": us(c_kernel),
                    "integral_over_c": ratio(integral, c_lists),
                }
            )
            rows.append(
                [accounts, q, public * 1e6, 1 / public, integral * 1e6, 1 / integral]
                + [us(c_lists), per_s(c_lists), us(c_kernel), ratio(integral, c_lists)]
                + [sellers, sold_out]
            )
        console.print(f"  {accounts:,} accounts, sells: done")
        spread = {
            "accounts": accounts,
            "allocate_sell": spread_of([t[0] for t in per_q]),
            "allocate_sell_integral": spread_of([t[1] for t in per_q]),
            "c_lists": spread_of([t[2] for t in per_q]),
            "c_kernel": spread_of([t[3] for t in per_q]),
        }
        results.setdefault("sell_q_spread", []).append(spread)
        summary.append([accounts, *list(spread.values())[1:]])
    print_table(
        f"Sells: microseconds per call and calls per second (best of {args.repeat}, gc off"
        f"{', CPU time' if args.cpu else ''}), "
        f"about {held:,} shares held",
        [
            "accounts",
            "q",
            "sell us",
            "sell /s",
            "integral us",
            "integral /s",
            "C us",
            "C /s",
            "kernel us",
            "integral/C",
            "accts selling",
            "sold out",
        ],
        rows,
        caption="the last q of each account count is everything held but one share per "
        "account (most accounts sold out: the sweep meets every breakpoint); a small q sorts "
        "the starts and stops early; when every holder sells some and none all, nothing is "
        "sorted. C: the kernel on the same lists (converted per call); kernel: on int64 "
        "arrays in and out; it sorts only when a holding binds",
    )
    print_table(
        "Do sells depend on q?  max/min over q = " + ", ".join(f"{q:,}" for q in args.quantities),
        ["accounts", "sell max/min", "integral max/min", "C max/min", "kernel max/min"],
        summary,
    )


if __name__ == "__main__":
    sys.exit(main())
