"""`python -m common.health`: is the process this container runs doing its job?

The image's HEALTHCHECK (Dockerfile) runs this inside the container. It reads what the
container runs from PID 1's command line, resolves that process's settings exactly as the
process did (its own parser and defaults, then the --config file, then flags), and checks
what means something for it:

- the controller: both its sockets are bound, i.e. recovery finished and it serves. The
  check reads the kernel's listening sockets (/proc/net/tcp*) rather than connecting, so
  it sends nothing a CURVE server would log as a refused peer, and needs no keys;
- the position server with a web view: `/api/snapshot` answers 200, i.e. it has a
  snapshot from the controller to show (503 before the first one);
- anything else (the simulators, a tool, the position server without a web view): nothing
  to check, healthy.

Exit code 0 is healthy, 1 unhealthy (what Docker expects); one line says why.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common import config, logs

log = logging.getLogger("health")

HEALTHY = 0
UNHEALTHY = 1
PID1_CMDLINE = Path("/proc/1/cmdline")
PROC_NET_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
TCP_LISTEN = "0A"  # the kernel's state code for a listening socket in /proc/net/tcp
HTTP_TIMEOUT = 3.0  # seconds; Docker's own timeout (Dockerfile) is longer
#: Processes whose settings this check resolves: the module holding their parser and DEFAULTS.
SERVERS = {"controller": "controller.cli", "positions": "positions.cli"}
#: Every process the image runs, to tell one from the interpreter or an unrelated script.
PROCESSES = ("controller", "positions", "fillsim", "aumsim", "launcher")
#: Bind-all addresses, checked (positions) on the loopback address of the same family.
ANY_ADDRESS = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def process_of(argv: list[str]) -> tuple[str, list[str]] | None:
    """(process name, its arguments) from a command line such as
    `python3 /opt/fillalloc/bin/controller --config F` or `python -m positions --http ...`;
    None when it runs none of the project's processes."""
    for index, word in enumerate(argv):
        if word == "-m" and index + 1 < len(argv) and argv[index + 1] in PROCESSES:
            return argv[index + 1], argv[index + 2 :]
        if Path(word).name in PROCESSES:
            return Path(word).name, argv[index + 1 :]
    return None


def read_cmdline(path: Path = PID1_CMDLINE) -> list[str]:
    """A process's command line as its words (they are NUL-separated in /proc)."""
    return [w for w in path.read_bytes().decode(errors="replace").split("\0") if w]


def resolve_settings(name: str, args: list[str]) -> argparse.Namespace | None:
    """The settings the server `name` runs with, resolved by its own parser and defaults;
    None for a tool (`controller audit ...`) or a process with nothing to check."""
    module_name = SERVERS.get(name)
    if module_name is None:
        return None
    module: Any = importlib.import_module(module_name)
    if args and args[0] in getattr(module, "TOOLS", {}):
        return None
    settings = module.parser().parse_args(args)
    config.resolve(settings, module.DEFAULTS, name)
    return settings


def tcp_port(endpoint: str) -> int | None:
    """The port of a tcp:// endpoint (None for ipc:// and inproc://)."""
    transport, _, rest = endpoint.partition("://")
    if transport != "tcp":
        return None
    return int(rest.rsplit(":", 1)[1])


def listening_ports(tables: Iterable[Path] = PROC_NET_TCP) -> set[int]:
    """TCP ports with a listening socket in this network namespace."""
    ports: set[int] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def check_controller(settings: argparse.Namespace, ports: set[int]) -> str | None:
    """Why the controller is unhealthy (an endpoint not bound), or None when both are."""
    for name in ("inputs", "publish"):
        endpoint = getattr(settings, name)
        port = tcp_port(endpoint)
        if port is None:
            path = endpoint.partition("://")[2]
            if endpoint.startswith("ipc://") and not Path(path).exists():
                return f"{name} {endpoint} is not bound"
        elif port not in ports:
            return f"{name} {endpoint}: nothing listens on port {port}"
    return None


def web_url(http: str) -> str:
    """The /api/snapshot URL of a position server's --http HOST:PORT, seen from inside."""
    host, _, port = http.rpartition(":")
    host = host.strip("[]")
    host = ANY_ADDRESS.get(host, host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{int(port)}/api/snapshot"


def check_positions(settings: argparse.Namespace) -> str | None:
    """Why the position server is unhealthy (its web view has no snapshot or does not
    answer), or None; healthy without a web view (nothing to ask)."""
    if not settings.http:
        return None
    url = web_url(settings.http)
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return f"{url} does not answer: {exc}"
    return None if status == 200 else f"{url} answered {status} (no snapshot yet?)"


def problem(argv: list[str]) -> tuple[str, str | None]:
    """(what was checked, why it is unhealthy or None) for a process's command line."""
    found = process_of(argv)
    if found is None:
        return "not a fillalloc process", None
    name, args = found
    settings = resolve_settings(name, args)
    if settings is None:
        return f"{name}: nothing to check", None
    if name == "controller":
        return name, check_controller(settings, listening_ports())
    return name, check_positions(settings)


def main(argv: list[str] | None = None) -> int:
    """Check PID 1 (or the command line given after `--`, for trying it by hand)."""
    logs.setup("health", "INFO")
    words = sys.argv[1:] if argv is None else argv
    target = words[1:] if words[:1] == ["--"] else read_cmdline()
    try:
        what, why = problem(target)
    except (config.ConfigError, SystemExit, ValueError) as exc:
        log.error("cannot resolve the settings of %s: %s", " ".join(target), exc)
        return UNHEALTHY
    if why is not None:
        log.error("%s: unhealthy: %s", what, why)
        return UNHEALTHY
    log.info("%s: healthy", what)
    return HEALTHY


if __name__ == "__main__":
    sys.exit(main())
