"""`python -m controller keys NAME`: make a CURVE key pair for one process.

Writes NAME.key (public, share it) and NAME.key_secret (mode 0600, keep it on its host)
into --dir; `--allow DIR` also copies the public key into the controller's allow-list.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from common.security import SecurityError, generate_keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="controller keys", description=__doc__)
    parser.add_argument("name", help="key name, e.g. controller, fillsim-1, positions-desk")
    parser.add_argument("--dir", default="keys", help="where to write the pair (default keys/)")
    parser.add_argument("--allow", metavar="DIR", help="also copy the public key into DIR")
    args = parser.parse_args(argv)
    try:
        public, secret = generate_keys(args.dir, args.name)
    except SecurityError as exc:
        print(f"keys: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public}\nsecret key: {secret} (mode 600; never copy it off this host)")
    if args.allow:
        Path(args.allow).mkdir(parents=True, exist_ok=True)
        shutil.copy(public, Path(args.allow) / public.name)
        print(f"allowed:    {Path(args.allow) / public.name}")
    return 0
