"""The optional compiled modules, and the exact rule through the C kernel when it is built.

`pip install -e .` builds controller._allocc (the allocation kernel, controller/_native/
alloc_core.h) and controller._hotpath when a C compiler is there (setup.py); without them,
or with FILLALLOC_NATIVE=0 in the environment, every name here still works and the pure
Python engine runs. controller.allocator stays the reference: `buy_integral` and
`sell_integral` take exactly its arguments and return exactly its results, and hand any call
the kernel cannot do exactly (a number outside int64, past the int128 bound) to it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from types import ModuleType

from controller import allocator

#: Set to "0" to run without any compiled module (CI runs the suite once so).
ENV_SWITCH = "FILLALLOC_NATIVE"

#: Why a compiled module is not loaded, by module name (absent when it is).
unavailable: dict[str, str] = {}


def _load(name: str) -> ModuleType | None:
    """controller.<name>, or None (with the reason in `unavailable`) when it is disabled or
    not built."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        unavailable[name] = f"disabled by {ENV_SWITCH}=0"
        return None
    try:
        return importlib.import_module(f"controller.{name}")
    except ImportError as error:  # not built, or built for another interpreter
        unavailable[name] = f"not importable: {error}"
        return None


#: The allocation kernel (buy/sell on int64 sequences), or None.
allocc = _load("_allocc")
#: The compiled hot path of the engine, or None.
hotpath = _load("_hotpath")


def available() -> bool:
    """True when the C allocation kernel is loaded."""
    return allocc is not None


def buy_integral(
    accounts: Sequence[str],
    values: Sequence[int],
    weights: Sequence[int],
    price: int,
    quantity: int,
    ranks: Sequence[int] | None = None,
) -> list[int]:
    """allocator.allocate_integral, through the C kernel when it can give the exact answer."""
    if allocc is not None:
        if ranks is None:
            ranks = allocator.name_ranks(accounts)
        shares: list[int] | None = allocc.buy(values, weights, ranks, price, quantity)
        if shares is not None:
            return shares
    return allocator.allocate_integral(accounts, values, weights, price, quantity, ranks)


def sell_integral(
    accounts: Sequence[str],
    values: Sequence[int],
    weights: Sequence[int],
    price: int,
    quantity: int,
    holdings: Sequence[int],
    ranks: Sequence[int] | None = None,
) -> list[int]:
    """allocator.allocate_sell_integral, through the C kernel when it can give the exact
    answer; a quantity outside 1..sum(holdings) goes to the reference, which raises."""
    if allocc is not None:
        if ranks is None:
            ranks = allocator.name_ranks(accounts)
        shares: list[int] | None = allocc.sell(values, weights, ranks, price, quantity, holdings)
        if shares is not None:
            return shares
    return allocator.allocate_sell_integral(
        accounts, values, weights, price, quantity, holdings, ranks
    )
