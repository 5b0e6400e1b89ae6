"""Who may talk to the controller: ZeroMQ CURVE keys, an allow-list, and loopback rules.

With keys configured the controller's sockets are CURVE servers and a ZAP authenticator
(zmq.auth) admits only clients whose public keys are in the allow-list directory; clients
take their own key pair and the controller's public key. Every connection admitted carries
its key's z85 public key as ZAP User-Id, so each message received can be checked against
what that key may send (`ServerSecurity.check`, rules in common.allowlist). Without keys
everything stays on loopback (or ipc/inproc); a non-loopback endpoint without keys is
refused unless the configuration says `insecure = true`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from common.allowlist import (
    PUBLIC_SUFFIX,
    SECRET_SUFFIX,
    AllowList,
    Permissions,
    SecurityError,
    check_key_name,
    read_public_key,
    refuse_writable_by_others,
)

__all__ = ["PUBLIC_SUFFIX", "SECRET_SUFFIX", "Permissions", "SecurityError"]

log = logging.getLogger(__name__)

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
USER_ID = "User-Id"  # the ZAP property a received frame carries its sender's identity in
REFUSALS_LOGGED_IN_FULL = 5  # refused peers logged one by one before the log summarises
REFUSAL_SUMMARY_INTERVAL = 60.0  # seconds between summary lines while refusals go on
ALLOW_LIST_REFRESH = 5.0  # seconds between checks of the allow-list for edits (revocations)
MONITOR_POLL_MS = 100


Configure = Callable[[zmq.Socket], None]


def is_local(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if ";" in host:  # tcp://source;destination: the destination decides
        host = host.split(";", 1)[1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname, an interface name or "*": reachable from outside


def generate_keys(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Create NAME.key (public) and NAME.key_secret (mode 0600) in `directory`."""
    check_key_name(name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for path in (directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"):
        if path.exists():
            raise SecurityError(f"{path} already exists; refusing to overwrite a key")
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_umask)
    os.chmod(secret, SECRET_MODE)
    os.chmod(public, PUBLIC_MODE)
    return Path(public), Path(secret)


def load_key_pair(secret_file: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from a secret key file, refusing one that others can read."""
    path = Path(secret_file)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SecurityError(f"secret key file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecurityError(
            f"secret key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"run: chmod 600 {path}"
        )
    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise SecurityError(f"{path} holds no secret key (is it the public .key file?)")
    return public, secret


def load_public_key(public_file: str | os.PathLike) -> bytes:
    """The controller's public key for a client, refusing a file others could replace
    (whoever swaps it can stand in for the controller)."""
    path = Path(public_file)
    if not path.exists():
        raise SecurityError(f"public key file {path} does not exist")
    refuse_writable_by_others(path, path.stat().st_mode)
    return read_public_key(path).encode("ascii")


def require_safe(endpoints: Iterable[str], keyed: bool, insecure: bool, role: str) -> None:
    """Refuse plain TCP beyond loopback unless explicitly allowed; log the mode."""
    exposed = [e for e in endpoints if not is_local(e)]
    if keyed:
        log.info("%s: CURVE security on", role)
    elif not exposed:
        log.info("%s: no CURVE keys configured; plain TCP, loopback only", role)
    elif insecure:
        log.warning("%s: INSECURE: plain TCP on %s (insecure = true)", role, ", ".join(exposed))
    else:
        raise SecurityError(
            f"{role}: {', '.join(exposed)} is not loopback and no CURVE keys are configured; "
            "configure keys (see README, Deployment) or set insecure = true"
        )


def client_configure(
    secret_file: str | os.PathLike, server_public_file: str | os.PathLike
) -> Configure:
    """A socket setup that makes a socket a CURVE client of the controller."""
    public, secret = load_key_pair(secret_file)
    server_key = load_public_key(server_public_file)

    def configure(sock: zmq.Socket) -> None:
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_serverkey = server_key

    return configure


class RefusalLog:
    """Logs refused peers without letting a flood of them flood the log.

    The first `in_full` refusals are logged one by one; after that at most one line per
    `interval` seconds (of the injected clock) says how many more there were and shows the
    latest. After a whole interval without refusals it logs in full again. Thread-safe: the
    ZAP thread and the handshake watchers share one. Wire data (addresses, keys) only ever
    goes in the arguments, never in the format.
    """

    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        in_full: int = REFUSALS_LOGGED_IN_FULL,
        interval: float = REFUSAL_SUMMARY_INTERVAL,
    ) -> None:
        self.logger = logger
        self.clock = clock
        self.in_full = in_full
        self.interval = interval
        self._lock = threading.Lock()
        self._logged = 0  # in full since the last quiet interval
        self._held: int = 0  # refusals not logged since the last line
        self._last_line = 0.0
        self._last_refusal: float | None = None

    def refused(self, fmt: str, *args: Any) -> None:
        """Record one refusal described by the %-format `fmt` (ours) and `args` (any data)."""
        with self._lock:
            now = self.clock()
            if self._last_refusal is not None and now - self._last_refusal >= self.interval:
                self._flush(now)
                self._logged = 0
            self._last_refusal = now
            if self._logged < self.in_full:
                self._logged += 1
                self._last_line = now
                self.logger.warning(fmt, *args)
                return
            self._held += 1
            if now - self._last_line >= self.interval:
                self.logger.warning(
                    "%d refusals in the last %.0f s (not logged one by one); latest: " + fmt,
                    self._held,
                    now - self._last_line,
                    *args,
                )
                self._held, self._last_line = 0, now

    def flush(self) -> None:
        """Log the count of refusals not logged yet, if any (at shutdown)."""
        with self._lock:
            self._flush(self.clock())

    def _flush(self, now: float) -> None:
        if self._held:
            self.logger.warning(
                "%d more refusals in %.0f s (not logged one by one)",
                self._held,
                now - self._last_line,
            )
        self._held, self._last_line = 0, now


def sender_user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of the peer a frame came from (received with copy=False), or None
    when the socket has no ZAP authentication (CURVE off)."""
    try:
        user_id = frame.get(USER_ID)
    except zmq.ZMQError:
        return None
    return user_id if isinstance(user_id, str) else None


class AllowListAuthenticator(ThreadAuthenticator):
    """ZAP handler admitting only allow-listed public keys; logs and counts every refusal.

    The allow-list directory is re-read when an unknown key shows up, so adding a client's
    public key there takes effect without a restart. The User-Id given to an admitted
    connection is its key's z85 public key (see `curve_user_id`).
    """

    def __init__(self, ctx: zmq.Context, allow_list: AllowList, refusals: RefusalLog) -> None:
        super().__init__(ctx, log=logging.getLogger("zmq.auth"))
        self.allow_list = allow_list
        self.refusals = refusals
        self.rejected = 0
        self._address = ""
        self.configure_curve_callback("*", self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) > 3:
            self._address = msg[3].decode(errors="replace")
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP credentials check (called by zmq.auth with the client's z85 public key)."""
        if self.allow_list.permissions.admits(key):
            return True
        self.allow_list.reload()
        if self.allow_list.permissions.admits(key):
            return True
        self.rejected += 1
        self.refusals.refused(
            "rejected peer %s: public key %s is not in %s (%d rejected so far)",
            self._address,
            key.decode(errors="replace"),
            self.allow_list.directory,
            self.rejected,
        )
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The User-Id of an admitted connection: its z85 public key, looked up per message
        in the allow-list in force then (so a key removed since it connected is refused)."""
        return z85.encode(client_public_key).decode("ascii")


class ServerSecurity:
    """CURVE for the controller's bound sockets, a watch on failed handshakes, and the
    per-message permission check.

    The allow-list is read at construction (SecurityError if unsafe or malformed), re-read
    when an unknown key knocks and every `refresh_interval` seconds (so an edit, e.g. a
    revocation, takes effect without a restart). `clock` times the refusal log's summaries.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        secret_file: str | os.PathLike,
        allow_dir: str | os.PathLike,
        clock: Callable[[], float] = time.monotonic,
        refresh_interval: float | None = ALLOW_LIST_REFRESH,
    ):
        self.public, self.secret = load_key_pair(secret_file)
        self.ctx = ctx
        self.allow_list = AllowList(allow_dir)
        self.refusals = RefusalLog(log, clock)
        self.authenticator = AllowListAuthenticator(ctx, self.allow_list, self.refusals)
        self.authenticator.start()
        self.handshake_failures = 0
        self._watchers: list[threading.Thread] = []
        self._stopping = threading.Event()
        if refresh_interval is not None:
            self._start(self._refresh, refresh_interval)

    @property
    def rejected(self) -> int:
        return self.authenticator.rejected + self.handshake_failures

    @property
    def permissions(self) -> Permissions:
        """The permissions in force now (a reload swaps in a new object)."""
        return self.allow_list.permissions

    def check(self, user_id: str | None, kind: str, source: str) -> str | None:
        """None if the sender with this ZAP User-Id may send a `kind` message as `source`,
        else the reason it may not (a plain sentence). Call it per message, after decoding."""
        return self.allow_list.permissions.check(user_id, kind, source)

    def key_name(self, user_id: str | None) -> str | None:
        """The allow-list name of the key behind a User-Id (for logs), if it is allowed."""
        return self.allow_list.permissions.key_name(user_id)

    def configure(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server (call before bind) and watch its handshakes."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        address = f"inproc://security-monitor-{uuid.uuid4().hex}"
        sock.monitor(
            address, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        self._start(self._watch, address)

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        watcher = threading.Thread(target=target, args=args, daemon=True)
        watcher.start()
        self._watchers.append(watcher)

    def _refresh(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            self.allow_list.reload()

    def _watch(self, address: str) -> None:
        pair = self.ctx.socket(zmq.PAIR)
        pair.connect(address)
        try:
            while not self._stopping.is_set():
                if not pair.poll(MONITOR_POLL_MS):
                    continue
                event = recv_monitor_message(pair)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    break
                self.handshake_failures += 1
                self.refusals.refused(
                    "rejected peer on %s: CURVE handshake failed (no or wrong security) "
                    "(%d so far)",
                    event["endpoint"].decode(errors="replace"),
                    self.handshake_failures,
                )
        finally:
            pair.close(linger=0)

    def stop(self) -> None:
        self._stopping.set()
        for watcher in self._watchers:
            watcher.join(1)
        self.authenticator.stop()
        self.refusals.flush()

# -- settings ------------------------------------------------------------------------------
SERVER_DEFAULTS = {"curve_secret_key": None, "curve_allow": None, "insecure": False}
CLIENT_DEFAULTS = {"curve_secret_key": None, "curve_server_key": None, "insecure": False}


def add_flags(parser, server: bool) -> None:
    """The security flags of a process (all may come from the config file instead)."""
    parser.add_argument("--curve-secret-key", metavar="FILE", help="this process's secret key file")
    if server:
        parser.add_argument(
            "--curve-allow", metavar="DIR", help="directory of allowed client public keys"
        )
    else:
        parser.add_argument(
            "--curve-server-key", metavar="FILE", help="the controller's public key file"
        )
    parser.add_argument(
        "--insecure", action="store_const", const=True, help="allow plain TCP beyond loopback"
    )


def server_security(
    ctx: zmq.Context, args, endpoints: list[str], role: str
) -> ServerSecurity | None:
    """CURVE for a server when keys are configured; None (after the loopback check) otherwise."""
    keyed = args.curve_secret_key is not None or args.curve_allow is not None
    if keyed and (args.curve_secret_key is None or args.curve_allow is None):
        raise SecurityError(f"{role}: CURVE needs both curve_secret_key and curve_allow")
    require_safe(endpoints, keyed, bool(args.insecure), role)
    return ServerSecurity(ctx, args.curve_secret_key, args.curve_allow) if keyed else None


def client_security(args, endpoints: list[str], role: str) -> Configure | None:
    """A CURVE client setup when keys are configured; None (after the loopback check) otherwise."""
    keyed = args.curve_secret_key is not None or args.curve_server_key is not None
    if keyed and (args.curve_secret_key is None or args.curve_server_key is None):
        raise SecurityError(f"{role}: CURVE needs both curve_secret_key and curve_server_key")
    require_safe(endpoints, keyed, bool(args.insecure), role)
    return client_configure(args.curve_secret_key, args.curve_server_key) if keyed else None
