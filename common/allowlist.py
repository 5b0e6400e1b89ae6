"""The controller's allow-list: which CURVE keys may connect, and what each may send.

The allow-list is a directory. Each `NAME.key` in it is a client's public key (as made by
`python -m controller keys NAME`); `permissions.toml` beside them gives each key, by NAME,
a role and the source names it may send under:

    [fillsim-1]
    role = "fill"              # fill: fills only
    sources = ["feed-1"]       # as feed-1@<session>, never as feed-12@...

    [aumsim]
    role = "aum"               # aum: splits only
    sources = ["aum"]

    [positions]
    role = "positions"         # reads snapshots and acks, sends nothing

A key with no entry (a bare `.key`, as in allow-lists made before permissions existed) may
connect and read, but send nothing: a key only ever gets the rights written down for it.

The permissions live in one file owned by the controller's operator, not in the key files,
because a key file is written on its client's host: a client must not be able to grant
itself rights, and one file is one place to review who may do what.

Because whoever can write to the allow-list can let any key in with any rights, a directory
or file in it that its group or others may write is refused.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.auth
from zmq.utils import z85

from common.protocol import FILL, MAX_NAME_LENGTH, SPLIT

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
PERMISSIONS_FILE = "permissions.toml"
SESSION_SEPARATOR = "@"  # senders send as NAME@<session> (common.sender.session_source)
SESSION_SUFFIX_LENGTH = 9  # "@" and 8 hex digits
Z85_KEY_LENGTH = 40  # a 32-byte CURVE key in z85
CHECK_CACHE_MAX = 65_536  # (user_id, kind, source) answers kept before the cache starts over

ROLE_FILL = "fill"
ROLE_AUM = "aum"
ROLE_POSITIONS = "positions"
ROLE_KINDS: Mapping[str, frozenset[str]] = {
    ROLE_FILL: frozenset({FILL}),
    ROLE_AUM: frozenset({SPLIT}),
    ROLE_POSITIONS: frozenset(),
}
KIND_NOUNS = {FILL: "fills", SPLIT: "splits"}
ENTRY_FIELDS = frozenset({"role", "sources"})

KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


class SecurityError(RuntimeError):
    """The security settings are unsafe or incomplete; the process must not start."""


@dataclass(frozen=True)
class Grant:
    """One allowed key: its name (the file's stem), public key, role and source names.

    `role` is None for a key without an entry in the permissions file: it may connect and
    read, but not send.
    """

    name: str
    public_key: str  # z85 text, as zmq.auth reports it in the User-Id
    role: str | None
    sources: frozenset[str]


def check_key_name(name: str) -> str:
    """`name` if it can name a key file (letters, digits, '.', '_', '-'); SecurityError if not."""
    if not KEY_NAME.fullmatch(name):
        raise SecurityError(
            f"key name {name!r} must be 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_source_name(name: Any, where: str) -> str:
    """A source name a key may be granted: printable, no spaces, no '@' (the session part)."""
    longest = MAX_NAME_LENGTH - SESSION_SUFFIX_LENGTH
    if not isinstance(name, str) or not name:
        raise SecurityError(f"{where}: source names must be non-empty strings, got {name!r}")
    if SESSION_SEPARATOR in name:
        raise SecurityError(
            f"{where}: source name {name!r} contains '@'; give the name only "
            "(senders add '@' and their session themselves)"
        )
    if not name.isprintable() or any(c.isspace() for c in name) or len(name) > longest:
        raise SecurityError(
            f"{where}: source name {name!r} must be printable, without spaces, "
            f"and at most {longest} characters"
        )
    return name


def refuse_writable_by_others(path: Path, mode: int) -> None:
    """SecurityError naming `path` if its group or others may write it."""
    if mode & WRITABLE_BY_OTHERS:
        who = "others" if mode & stat.S_IWOTH else "its group"
        raise SecurityError(
            f"{path} is writable by {who} (mode {stat.S_IMODE(mode):o}), so anyone there "
            f"could let any key in; run: chmod go-w {path}"
        )


def parse_permissions(text: str, origin: str) -> dict[str, tuple[str, frozenset[str]]]:
    """{key name: (role, source names)} from the permissions file's text; SecurityError
    saying what is wrong (and where) if it is not exactly the documented format."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SecurityError(f"{origin} is not valid TOML: {exc}") from None
    entries = {}
    for name, entry in document.items():
        entries[name] = _parse_entry(name, entry, origin)
    return entries


def _parse_entry(name: str, entry: Any, origin: str) -> tuple[str, frozenset[str]]:
    where = f"{origin} [{name}]"
    try:
        check_key_name(name)
    except SecurityError as exc:
        raise SecurityError(f"{origin}: {exc}") from None
    if not isinstance(entry, dict):
        raise SecurityError(f"{origin}: {name!r} must be a table ([{name}] with a role)")
    unknown = sorted(set(entry) - ENTRY_FIELDS)
    if unknown:
        known = ", ".join(sorted(ENTRY_FIELDS))
        raise SecurityError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {known})")
    role = entry.get("role")
    if not isinstance(role, str) or role not in ROLE_KINDS:
        raise SecurityError(f"{where}: role must be one of {', '.join(ROLE_KINDS)}, got {role!r}")
    sources = entry.get("sources", [])
    if not isinstance(sources, list):
        raise SecurityError(f"{where}: sources must be a list of names, got {sources!r}")
    names = frozenset(check_source_name(source, where) for source in sources)
    if ROLE_KINDS[role] and not names:
        raise SecurityError(f"{where}: role {role} needs sources = [...], the names it sends as")
    if not ROLE_KINDS[role] and names:
        raise SecurityError(f"{where}: role {role} sends nothing; remove its sources")
    return role, names


class Permissions:
    """What each allowed key may send; immutable, so a reload swaps in a new one.

    The controller asks `check(user_id, kind, source)` for every message it receives over
    CURVE; answers are cached per (user_id, kind, source), and the cache belongs to this
    object, so a reload starts with an empty one.
    """

    def __init__(self, grants: Iterable[Grant], origin: str) -> None:
        self.origin = origin
        self.grants: dict[str, Grant] = {grant.public_key: grant for grant in grants}
        self.public_keys = frozenset(key.encode("ascii") for key in self.grants)
        self._answers: dict[tuple[str | None, str, str], str | None] = {}

    def admits(self, z85_key: bytes) -> bool:
        """Whether a client with this public key (z85, as ZAP passes it) may connect."""
        return z85_key in self.public_keys

    def key_name(self, user_id: str | None) -> str | None:
        """The allow-list name of the key behind a message's ZAP User-Id, if it is allowed."""
        grant = self.grants.get(user_id) if user_id is not None else None
        return grant.name if grant is not None else None

    def check(self, user_id: str | None, kind: str, source: str) -> str | None:
        """None if the key with this User-Id may send a `kind` message as `source`; otherwise
        the reason it may not, as a plain sentence (source is quoted with repr, as data)."""
        if not isinstance(kind, str) or not isinstance(source, str):
            return "a message's type and source must be text"
        key = (user_id, kind, source)
        try:
            return self._answers[key]
        except KeyError:
            pass
        if len(self._answers) >= CHECK_CACHE_MAX:
            self._answers.clear()
        answer = self._answers[key] = self._decide(user_id, kind, source)
        return answer

    def _decide(self, user_id: str | None, kind: str, source: str) -> str | None:
        if user_id is None:
            return "the message came without a CURVE key identity (User-Id)"
        grant = self.grants.get(user_id)
        if grant is None:
            return f"the sender's key {user_id} is no longer in the allow-list {self.origin}"
        noun = KIND_NOUNS.get(kind, f"{kind!r} messages")
        if grant.role is None:
            return (
                f"key {grant.name!r} may not send {noun}: it has no entry in "
                f"{self.origin}/{PERMISSIONS_FILE}"
            )
        if kind not in ROLE_KINDS[grant.role]:
            return f"key {grant.name!r} may not send {noun}"
        if source.partition(SESSION_SEPARATOR)[0] not in grant.sources:
            return f"key {grant.name!r} may not send as source {source!r}"
        return None

    def describe(self) -> str:
        """One line saying who may do what, for the log."""
        parts = []
        for grant in sorted(self.grants.values(), key=lambda g: g.name):
            if grant.role is None:
                parts.append(f"{grant.name} (no entry: reads only)")
            elif grant.sources:
                parts.append(f"{grant.name} ({grant.role}: {', '.join(sorted(grant.sources))})")
            else:
                parts.append(f"{grant.name} ({grant.role})")
        return "; ".join(parts) or "no keys"


@dataclass(frozen=True)
class _Files:
    """The allow-list as read from disk: the directory's mode and each file's mode and bytes.

    Two reads are the same allow-list exactly when these compare equal, so a reload only
    parses (and logs) when something changed."""

    directory_mode: int
    files: tuple[tuple[str, int, bytes], ...]


def _read_files(directory: Path) -> _Files:
    try:
        directory_mode = directory.stat().st_mode
    except FileNotFoundError:
        raise SecurityError(f"allow-list directory {directory} does not exist") from None
    if not stat.S_ISDIR(directory_mode):
        raise SecurityError(f"allow-list {directory} is not a directory")
    refuse_writable_by_others(directory, directory_mode)
    files = []
    for path in sorted(directory.iterdir()):
        if path.name.endswith(SECRET_SUFFIX):
            raise SecurityError(
                f"{path} is a secret key: only public {PUBLIC_SUFFIX} files belong in the "
                "allow-list; delete it here and keep it on its own host"
            )
        if not (path.name.endswith(PUBLIC_SUFFIX) or path.name == PERMISSIONS_FILE):
            continue
        try:
            mode = path.stat().st_mode
            refuse_writable_by_others(path, mode)
            files.append((path.name, mode, path.read_bytes()))
        except OSError as exc:
            raise SecurityError(f"cannot read {path}: {exc.strerror or exc}") from None
    return _Files(directory_mode, tuple(files))


def read_public_key(path: Path) -> str:
    """The z85 public key in a public key file; SecurityError if it holds anything else."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise SecurityError(f"cannot read public key file {path}: {exc}") from None
    except ValueError as exc:
        raise SecurityError(f"{path} is not a public key file: {exc}") from None
    if secret:
        raise SecurityError(
            f"{path} holds a secret key: copy only the public {PUBLIC_SUFFIX} file into the "
            "allow-list"
        )
    try:
        valid = len(public) == Z85_KEY_LENGTH and len(z85.decode(public)) == 32
    except (ValueError, KeyError):
        valid = False
    if not valid:
        raise SecurityError(f"{path} does not hold a valid CURVE public key")
    return public.decode("ascii")


def _build(directory: Path, files: _Files) -> Permissions:
    """Parse what `_read_files` read into Permissions; SecurityError if anything is wrong."""
    entries: dict[str, tuple[str, frozenset[str]]] = {}
    names = {}
    for filename, _, content in files.files:
        if filename == PERMISSIONS_FILE:
            origin = str(directory / PERMISSIONS_FILE)
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError:
                raise SecurityError(f"{origin} is not UTF-8 text") from None
            entries = parse_permissions(text, origin)
            continue
        name = filename[: -len(PUBLIC_SUFFIX)]
        try:
            check_key_name(name)
        except SecurityError as exc:
            raise SecurityError(f"{directory / filename}: {exc}") from None
        names[name] = read_public_key(directory / filename)
    _refuse_shared_keys(directory, names)
    for name in sorted(set(entries) - set(names)):
        log.warning(
            "%s/%s: [%s] has no %s%s in the allow-list; the entry is ignored",
            directory,
            PERMISSIONS_FILE,
            name,
            name,
            PUBLIC_SUFFIX,
        )
    grants = []
    for name, public in names.items():
        role, sources = entries.get(name, (None, frozenset()))
        grants.append(Grant(name, public, role, sources))
    return Permissions(grants, str(directory))


def _refuse_shared_keys(directory: Path, names: dict[str, str]) -> None:
    """Two files with one public key would make the key's name (and rights) ambiguous."""
    owners: dict[str, str] = {}
    for name, public in sorted(names.items()):
        if public in owners:
            raise SecurityError(
                f"{directory}: {owners[public]}{PUBLIC_SUFFIX} and {name}{PUBLIC_SUFFIX} hold "
                "the same public key; keep one"
            )
        owners[public] = name


def load_permissions(directory: str | os.PathLike) -> Permissions:
    """The allow-list in `directory` as Permissions; SecurityError if unsafe or malformed."""
    path = Path(directory)
    return _build(path, _read_files(path))


class AllowList:
    """The live allow-list of a controller: loaded at start-up (SecurityError if unsafe or
    malformed), reloaded when asked, e.g. when an unknown key knocks.

    A reload that finds the directory unchanged does nothing; one that finds it unsafe or
    malformed keeps the permissions in force and logs why (once per such state), so an edit
    in progress never opens the door nor stops the controller.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._files = _read_files(self.directory)
        self.permissions = _build(self.directory, self._files)
        self._last_error: str | None = None
        self._log_loaded("allow-list")

    def reload(self) -> bool:
        """Re-read the directory; True if new permissions are now in force."""
        with self._lock:
            try:
                files = _read_files(self.directory)
                if files == self._files:
                    return False
                self._files = files
                self.permissions = _build(self.directory, files)
            except (SecurityError, OSError) as exc:
                if str(exc) != self._last_error:
                    log.error("allow-list not reloaded, the previous one stays in force: %s", exc)
                self._last_error = str(exc)
                return False
            self._last_error = None
            self._log_loaded("allow-list reloaded")
            return True

    def _log_loaded(self, what: str) -> None:
        log.info("%s %s: %s", what, self.directory, self.permissions.describe())
        bare = sorted(g.name for g in self.permissions.grants.values() if g.role is None)
        if bare:
            log.warning(
                "keys without an entry in %s/%s may connect and read but not send: %s",
                self.directory,
                PERMISSIONS_FILE,
                ", ".join(bare),
            )
