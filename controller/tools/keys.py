"""`python -m controller keys NAME`: make a CURVE key pair for one process, and allow it.

Writes NAME.key (public, share it) and NAME.key_secret (mode 0600, keep it on its host)
into --dir. `--allow DIR` also copies the public key into the controller's allow-list and,
with --role, writes what the key may send into DIR/permissions.toml:

    python -m controller keys fillsim-1 --allow keys/allowed --role fill --sources feed-1
    python -m controller keys aumsim --allow keys/allowed --role aum --sources aum
    python -m controller keys positions --allow keys/allowed --role positions

`--public FILE` allows a public key made on another host instead of making a pair here;
given an already allowed key, it changes that key's rights (only its entry is replaced).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import tomlkit

from common.allowlist import (
    PERMISSIONS_FILE,
    PUBLIC_SUFFIX,
    ROLE_KINDS,
    SecurityError,
    check_key_name,
    check_source_name,
    parse_permissions,
    read_public_key,
    refuse_writable_by_others,
)
from common.security import PUBLIC_MODE, generate_keys

ALLOW_DIR_MODE = 0o755
PERMISSIONS_HEADER = """\
What each key in this directory may send (see README, Deployment).
role: fill (sends fills), aum (sends splits) or positions (reads only).
sources: the names it sends as; "feed-1" covers feed-1@<session>, not feed-12@...
A key without an entry here may connect and read, but not send.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="controller keys",
        allow_abbrev=False,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="key name, e.g. controller, fillsim-1, positions-desk")
    parser.add_argument("--dir", default="keys", help="where to write the pair (default keys/)")
    parser.add_argument(
        "--public", metavar="FILE", help="allow this existing public key instead of making a pair"
    )
    parser.add_argument("--allow", metavar="DIR", help="also allow the key: copy it into DIR")
    parser.add_argument(
        "--role", choices=sorted(ROLE_KINDS), help="what the key may send (with --allow)"
    )
    parser.add_argument(
        "--sources", metavar="A,B", help="source names it may send as (roles fill and aum)"
    )
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SecurityError as exc:
        print(f"keys: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """Check everything first, so a refused request leaves no half-made key behind."""
    name = check_key_name(args.name)
    sources = parse_sources(args.role, args.sources)
    if args.allow is None:
        if args.role is not None or args.public is not None:
            raise SecurityError("--role and --public need --allow DIR, the allow-list")
        make_pair(args.dir, name)
        return 0
    allow_dir = Path(args.allow)
    document = read_permissions(allow_dir)
    target = allow_dir / f"{name}{PUBLIC_SUFFIX}"
    if args.public is not None:
        public = Path(args.public)
        refuse_other_key(target, read_public_key(public))
    else:
        refuse_other_key(target, None)
        public = make_pair(args.dir, name)
    ensure_allow_dir(allow_dir)
    replaced = name in document
    if args.role is not None:  # rights first: the key never shows up without them
        write_permissions(allow_dir, document, name, args.role, sources)
    write_atomically(target, public.read_bytes())
    print(f"allowed:    {target}")
    if args.role is not None:
        what = f"{args.role}" + (f" as {', '.join(sources)}" if sources else "")
        verb = "replaced" if replaced else "added"
        print(f"rights:     {verb} [{name}] in {allow_dir / PERMISSIONS_FILE}: {what}")
    elif name not in document:
        print(f"no --role: {name} may connect and read, but not send")
    return 0


def make_pair(directory: str, name: str) -> Path:
    """A new key pair in `directory`; the public file's path."""
    public, secret = generate_keys(directory, name)
    print(f"public key: {public}\nsecret key: {secret} (mode 600; never copy it off this host)")
    return public


def parse_sources(role: str | None, text: str | None) -> list[str]:
    """The --sources names, checked against the role (fill and aum need some, positions none)."""
    names = [part.strip() for part in text.split(",")] if text else []
    names = list(dict.fromkeys(check_source_name(n, "--sources") for n in names if n))
    if role is None:
        if names:
            raise SecurityError("--sources needs --role (fill or aum)")
        return names
    if ROLE_KINDS[role] and not names:
        raise SecurityError(f"role {role} needs --sources: the names this key sends as")
    if not ROLE_KINDS[role] and names:
        raise SecurityError(f"role {role} sends nothing: leave out --sources")
    return names


def read_permissions(allow_dir: Path) -> tomlkit.TOMLDocument:
    """The allow-list's permissions file (a new one if there is none), refusing an unsafe
    directory or a file the controller would refuse."""
    if allow_dir.exists():
        refuse_writable_by_others(allow_dir, allow_dir.stat().st_mode)
    path = allow_dir / PERMISSIONS_FILE
    if not path.exists():
        document = tomlkit.document()
        for line in PERMISSIONS_HEADER.splitlines():
            document.add(tomlkit.comment(line))
        return document
    refuse_writable_by_others(path, path.stat().st_mode)
    text = path.read_text(encoding="utf-8")
    parse_permissions(text, str(path))
    return tomlkit.parse(text)


def ensure_allow_dir(allow_dir: Path) -> None:
    """Create the allow-list directory, writable by its owner only whatever the umask."""
    if not allow_dir.exists():
        allow_dir.mkdir(parents=True)
        os.chmod(allow_dir, ALLOW_DIR_MODE)


def refuse_other_key(target: Path, key: str | None) -> None:
    """Never replace a different key allowed under the same name (None: a key yet to be
    made, which differs from any there)."""
    if target.exists() and (key is None or read_public_key(target) != key):
        raise SecurityError(
            f"{target} already holds a different key; remove it first to replace the key"
        )


def write_permissions(
    allow_dir: Path, document: tomlkit.TOMLDocument, name: str, role: str, sources: list[str]
) -> None:
    """Set [name] in the permissions file, keeping everything else (comments too)."""
    entry = tomlkit.table()
    entry["role"] = role
    if sources:
        entry["sources"] = sources
    document[name] = entry
    text = tomlkit.dumps(document).rstrip("\n") + "\n"
    path = allow_dir / PERMISSIONS_FILE
    parse_permissions(text, str(path))  # never write what the controller would refuse
    write_atomically(path, text.encode("utf-8"))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (mode 0644) so the controller never reads half a file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, PUBLIC_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
