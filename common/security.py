"""Who may talk to the controller: ZeroMQ CURVE keys, an allow-list, and loopback rules.

With keys configured the controller's sockets are CURVE servers and a ZAP authenticator
(zmq.auth) admits only clients whose public keys are in the allow-list directory; clients
take their own key pair and the controller's public key. Without keys everything stays on
loopback (or ipc/inproc); a non-loopback endpoint without keys is refused unless the
configuration says `insecure = true`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"
SECRET_MODE = 0o600


class SecurityError(RuntimeError):
    """The security settings are unsafe or incomplete; the process must not start."""


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
    os.chmod(public, 0o644)
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
    path = Path(public_file)
    if not path.exists():
        raise SecurityError(f"public key file {path} does not exist")
    public, _ = zmq.auth.load_certificate(path)
    return public


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


class AllowListAuthenticator(ThreadAuthenticator):
    """ZAP handler admitting only allow-listed public keys; logs and counts every refusal.

    The allow-list directory is re-read when an unknown key shows up, so adding a client's
    public key there takes effect without a restart.
    """

    def __init__(self, ctx: zmq.Context, allow_dir: str | os.PathLike) -> None:
        super().__init__(ctx, log=logging.getLogger("zmq.auth"))
        self.allow_dir = Path(allow_dir)
        if not self.allow_dir.is_dir():
            raise SecurityError(f"allow-list directory {self.allow_dir} does not exist")
        self.rejected = 0
        self._address = ""
        self._allowed_keys = self._read_allow_list()
        self.configure_curve_callback("*", self)

    def _read_allow_list(self) -> set[bytes]:
        return set(zmq.auth.load_certificates(self.allow_dir))

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        if len(msg) > 3:
            self._address = msg[3].decode(errors="replace")
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP credentials check (called by zmq.auth with the client's z85 public key)."""
        if key in self._allowed_keys:
            return True
        self._allowed_keys = self._read_allow_list()
        if key in self._allowed_keys:
            return True
        self.rejected += 1
        log.warning(
            "rejected peer %s: public key %s is not in %s (%d rejected so far)",
            self._address,
            key.decode(),
            self.allow_dir,
            self.rejected,
        )
        return False


class ServerSecurity:
    """CURVE for the controller's bound sockets, plus a watch on failed handshakes."""

    def __init__(
        self, ctx: zmq.Context, secret_file: str | os.PathLike, allow_dir: str | os.PathLike
    ):
        self.public, self.secret = load_key_pair(secret_file)
        self.ctx = ctx
        self.authenticator = AllowListAuthenticator(ctx, allow_dir)
        self.authenticator.start()
        self.handshake_failures = 0
        self._watchers: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def rejected(self) -> int:
        return self.authenticator.rejected + self.handshake_failures

    def configure(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE server (call before bind) and watch its handshakes."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        address = f"inproc://security-monitor-{uuid.uuid4().hex}"
        sock.monitor(
            address, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        watcher = threading.Thread(target=self._watch, args=(address,), daemon=True)
        watcher.start()
        self._watchers.append(watcher)

    def _watch(self, address: str) -> None:
        pair = self.ctx.socket(zmq.PAIR)
        pair.connect(address)
        try:
            while not self._stopping.is_set():
                if not pair.poll(100):
                    continue
                event = recv_monitor_message(pair)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    break
                self.handshake_failures += 1
                log.warning(
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
