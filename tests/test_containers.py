"""The system in containers (Dockerfile, compose.yaml) and the image's health check.

The health check's parts run everywhere. The system test needs a Docker engine and a
compose client (`docker compose` or `docker-compose`): it builds the image from the base
made with debootstrap (.ci/docker-base, cached on the machine), brings compose.yaml up under
a project name of its own with fast intervals, waits for snapshots with fills allocated,
kills the controller's main process with SIGKILL (a crash: the restart policy must bring it
back), checks that nothing acknowledged was lost (the snapshot after the restart and
`controller audit --verify` on the volume's journal), and brings everything down leaving
no container or volume behind. .ci/run installs and starts dockerd where it runs as root;
elsewhere the test skips and says why.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.server
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common import config, health

ROOT = Path(__file__).resolve().parent.parent
BASE_SCRIPT = ROOT / ".ci" / "docker-base"
COMPOSE_TOML = ROOT / "examples" / "compose.toml"
COMPOSE_CURVE_TOML = ROOT / "examples" / "compose-curve.toml"
IMAGE = "fillalloc-test:latest"
BASE_IMAGE = "fillalloc-base:bookworm"  # what .ci/docker-base makes
CONFIG_IN_CONTAINER = "/etc/fillalloc/config.toml"
JOURNAL_IN_CONTAINER = "data/controller.journal"
FILLS_BEFORE_KILL = 30  # allocated fills to see before the controller is killed
FILLS_AFTER_RESTART = 10  # more fills to see allocated by the restarted controller
UP_DEADLINE = 180.0  # seconds for the first snapshot with fills (includes container start)
RESTART_DEADLINE = 120.0
PROBE_TIMEOUT = 60  # seconds for `docker info` and the like
COMMAND_TIMEOUT = 900  # seconds for one docker command (a cold build installs from PyPI)
POLL = 0.5
#: The controller's start-up line saying what it recovered (controller/cli.py).
RECOVERED = re.compile(r"recovered \S+ in [0-9.]+ s: (\d+) fills allocated")

log = logging.getLogger(__name__)

#: What compose.yaml runs, by service: the process each container's PID 1 is.
SERVICES = {
    "controller": "controller",
    "positions": "positions",
    "aumsim": "aumsim",
    "fillsim-1": "fillsim",
    "fillsim-2": "fillsim",
}


# --- the health check, everywhere ---------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["/opt/fillalloc/bin/python3", "/opt/fillalloc/bin/controller", "--config", "F"],
         ("controller", ["--config", "F"])),
        (["python", "-m", "positions", "--http", "0.0.0.0:8080"],
         ("positions", ["--http", "0.0.0.0:8080"])),
        (["python3", "/opt/fillalloc/bin/fillsim", "--source", "feed-1"],
         ("fillsim", ["--source", "feed-1"])),
        (["python3", "-c", "print(1)"], None),
        (["/bin/sh"], None),
    ],
)
def test_health_names_the_process_pid1_runs(argv: list[str], expected: Any) -> None:
    assert health.process_of(argv) == expected


def test_health_reads_a_nul_separated_command_line(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"python3\0/opt/fillalloc/bin/aumsim\0--config\0/etc/x.toml\0")
    assert health.read_cmdline(cmdline) == [
        "python3", "/opt/fillalloc/bin/aumsim", "--config", "/etc/x.toml"
    ]


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:15B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000 10001 0 1 1
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000 10001 0 2 1
   2: 0100007F:15B4 0100007F:9C40 01 00000000:00000000 00:00000000 00000000 10001 0 3 1
"""


def test_health_lists_only_listening_ports(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(PROC_NET_TCP)
    # 0x15B3 = 5555 and 0x1F90 = 8080 listen; 0x15B4 = 5556 is an established connection.
    assert health.listening_ports([table, tmp_path / "absent"]) == {5555, 8080}


def controller_settings(inputs: str, publish: str) -> argparse.Namespace:
    return argparse.Namespace(inputs=inputs, publish=publish)


def test_health_controller_is_healthy_only_with_both_sockets_bound() -> None:
    settings = controller_settings("tcp://0.0.0.0:5555", "tcp://0.0.0.0:5556")
    assert health.check_controller(settings, {5555, 5556, 8080}) is None
    why = health.check_controller(settings, {5555})
    assert why == "publish tcp://0.0.0.0:5556: nothing listens on port 5556"


def test_health_controller_on_ipc_checks_the_socket_file(tmp_path: Path) -> None:
    bound = tmp_path / "in.sock"
    bound.touch()
    settings = controller_settings(f"ipc://{bound}", f"ipc://{tmp_path / 'pub.sock'}")
    assert health.check_controller(settings, set()) == (
        f"publish ipc://{tmp_path / 'pub.sock'} is not bound"
    )


def test_health_resolves_the_controllers_own_settings(tmp_path: Path) -> None:
    """The endpoints come from the process's config file and flags, as the process has them."""
    conf = tmp_path / "c.toml"
    conf.write_text('[controller]\ninputs = "tcp://0.0.0.0:7001"\n')
    settings = health.resolve_settings(
        "controller", ["--config", str(conf), "--publish", "tcp://0.0.0.0:7002"]
    )
    assert settings is not None
    assert (settings.inputs, settings.publish) == ("tcp://0.0.0.0:7001", "tcp://0.0.0.0:7002")
    assert health.resolve_settings("controller", ["audit", "--journal", "j"]) is None
    assert health.resolve_settings("fillsim", ["--source", "feed-1"]) is None


@pytest.mark.parametrize(
    ("http", "url"),
    [
        ("0.0.0.0:8080", "http://127.0.0.1:8080/api/snapshot"),
        ("127.0.0.1:9000", "http://127.0.0.1:9000/api/snapshot"),
        ("[::]:8080", "http://[::1]:8080/api/snapshot"),
    ],
)
def test_health_asks_the_web_view_from_inside(http: str, url: str) -> None:
    assert health.web_url(http) == url


class _Snapshot(http.server.BaseHTTPRequestHandler):
    """/api/snapshot answering the status the test sets on the server."""

    def do_GET(self) -> None:
        status = self.server.status  # type: ignore[attr-defined]
        self.send_response(status if self.path == "/api/snapshot" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on the check's answer, not on the access log."""


@pytest.fixture
def web_view() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Snapshot)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_health_positions_needs_a_snapshot_to_show(web_view: http.server.HTTPServer) -> None:
    port = web_view.server_address[1]
    settings = argparse.Namespace(http=f"0.0.0.0:{port}")
    web_view.status = 503  # type: ignore[attr-defined]
    assert health.check_positions(settings) == (
        f"http://127.0.0.1:{port}/api/snapshot answered 503 (no snapshot yet?)"
    )
    web_view.status = 200  # type: ignore[attr-defined]
    assert health.check_positions(settings) is None
    assert health.check_positions(argparse.Namespace(http="")) is None


def test_health_positions_not_answering_is_unhealthy() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    why = health.check_positions(argparse.Namespace(http=f"127.0.0.1:{port}"))
    assert why is not None and why.startswith(f"http://127.0.0.1:{port}/api/snapshot does not")


def test_health_exit_codes_for_a_command_line(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[positions]\nhttp = ""\n[fillsim]\nbogus = 1\n')
    assert health.main(["--", "python3", "-m", "positions", "--config", str(conf)]) == 0
    assert health.main(["--", "python3", "-m", "aumsim"]) == 0
    assert health.main(["--", "python3", "-m", "controller", "--config", str(conf)]) == 1
    missing = str(tmp_path / "missing.toml")
    assert health.main(["--", "python3", "-m", "controller", "--config", missing]) == 1


@pytest.mark.parametrize("path", [COMPOSE_TOML, COMPOSE_CURVE_TOML], ids=lambda p: p.name)
def test_compose_configurations_resolve_for_every_process(path: Path) -> None:
    """Every process of compose.yaml accepts its table (an unknown key would stop it)."""
    import importlib

    for process in sorted(set(SERVICES.values())):
        module: Any = importlib.import_module(f"{process}.cli")
        args = module.parser().parse_args(["--config", str(path)])
        config.resolve(args, module.DEFAULTS, process)
        if hasattr(args, "controller") and process != "controller":
            assert "controller:" in args.controller, (process, args.controller)


# --- the system in containers ---------------------------------------------------------------


def run(argv: list[str], env: dict[str, str] | None = None, check: bool = True,
        timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """A command's result; on failure, an assertion showing its output."""
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {done.returncode}\n{done.stdout[-4000:]}\n"
            f"{done.stderr[-4000:]}"
        )
    return done


def compose_command() -> list[str] | None:
    """`docker compose` (v2) if the engine's client has it, else `docker-compose` (v1)."""
    probe = ["docker", "compose", "version"]
    if subprocess.run(probe, capture_output=True, timeout=PROBE_TIMEOUT).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def docker_missing() -> str | None:
    """Why the system test cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker client (.ci/run installs Debian's docker.io as root)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=PROBE_TIMEOUT).returncode:
        return "no Docker engine answers (.ci/run starts dockerd as root)"
    if compose_command() is None:
        return "no compose client (docker compose or docker-compose)"
    return None


def base_image() -> str:
    """The local base: $FILLALLOC_BASE if set, else the one .ci/docker-base makes (cached)."""
    if os.environ.get("FILLALLOC_BASE"):
        return os.environ["FILLALLOC_BASE"]
    exists = subprocess.run(
        ["docker", "image", "inspect", BASE_IMAGE], capture_output=True, timeout=PROBE_TIMEOUT
    )
    if exists.returncode != 0 and (os.geteuid() != 0 or shutil.which("debootstrap") is None):
        pytest.skip("no base image and cannot make one (.ci/docker-base needs root and "
                    "debootstrap)")
    return run([str(BASE_SCRIPT)]).stdout.strip()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def fast_config(path: Path) -> Path:
    """examples/compose.toml with intervals short enough for a test (same endpoints)."""
    text = COMPOSE_TOML.read_text()
    for old, new in [
        ("snapshot_interval = 10", "snapshot_interval = 1\ncheckpoint_interval = 5"),
        ("interval = 0.5", "interval = 0.05"),
        ("interval = 30", "interval = 3"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    path.chmod(0o644)  # read by the containers' unprivileged user
    return path


class Stack:
    """One compose project of the system, under a name of its own."""

    def __init__(self, compose: list[str], project: str, env: dict[str, str], port: int) -> None:
        self.compose = compose
        self.project = project
        self.env = env
        self.port = port

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, "-p", self.project, *args], env=self.env, check=check)

    def snapshot(self) -> dict[str, Any] | None:
        """The position server's newest snapshot (None until it answers with one)."""
        url = f"http://127.0.0.1:{self.port}/api/snapshot"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                document: dict[str, Any] = json.load(response)
                return document
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def container(self, service: str) -> str:
        return self("ps", "-q", service).stdout.strip()

    def inspect(self, container: str, template: str) -> str:
        return run(["docker", "inspect", "-f", template, container]).stdout.strip()

    def leftovers(self) -> list[str]:
        """Containers and volumes of this project still on the engine."""
        label = f"label=com.docker.compose.project={self.project}"
        containers = run(["docker", "ps", "-aq", "--filter", label]).stdout.split()
        volumes = run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split()
        return containers + volumes


def wait_for(what: str, found: Callable[[], Any], deadline: float, stack: Stack) -> Any:
    """Poll `found` until it returns something true; on the deadline fail with the logs."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = found()
        if value:
            return value
        time.sleep(POLL)
    logs = stack("logs", "--no-color", "--tail", "40", check=False).stdout
    pytest.fail(f"no {what} within {deadline:.0f} s; last logs:\n{logs[-6000:]}")


def fill_sources(snapshot: dict[str, Any]) -> dict[str, int]:
    """Acknowledged seq per fill source (the simulators' `feed-N@session`)."""
    return {s: n for s, n in snapshot["sources"].items() if s.startswith("feed-")}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str]]:
    """The compose command and environment, once the image is built on the local base."""
    missing = docker_missing()
    if missing:
        pytest.skip(missing)
    compose = compose_command()
    assert compose is not None
    base = base_image()
    env = {
        **os.environ,
        "FILLALLOC_BASE": base,
        "FILLALLOC_IMAGE": IMAGE,
        "FILLALLOC_CONFIG": str(fast_config(tmp_path_factory.mktemp("compose") / "c.toml")),
    }
    started = time.monotonic()
    run([*compose, "build", "controller"], env=env)  # one image for every service
    log.warning("image %s built FROM %s in %.1f s", IMAGE, base, time.monotonic() - started)
    return compose, env


@contextlib.contextmanager
def system_up(
    built: tuple[list[str], dict[str, str]], name: str, *files: str, **env: str
) -> Iterator[Stack]:
    """The system up under the project `name` (compose.yaml, then `files`), then down with
    its volumes, whatever happened."""
    compose, base_env = built
    port = free_port()
    files_args = [arg for f in ("compose.yaml", *files) for arg in ("-f", f)] if files else []
    system = Stack(
        [*compose, *files_args],
        f"fillalloc-{name}-{os.getpid()}",
        {**base_env, **env, "FILLALLOC_HTTP_PORT": str(port)},
        port,
    )
    try:
        system("up", "-d")
        yield system
    finally:
        system("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)


@pytest.fixture(scope="module")
def stack(built: tuple[list[str], dict[str, str]]) -> Iterator[Stack]:
    """The system up from compose.yaml with fast intervals; down and gone afterwards."""
    with system_up(built, "test") as system:
        yield system


@pytest.mark.timeout(COMMAND_TIMEOUT + UP_DEADLINE + RESTART_DEADLINE)
def test_compose_survives_a_controller_crash_with_nothing_acknowledged_lost(
    stack: Stack,
) -> None:
    first = wait_for(
        f"snapshot with {FILLS_BEFORE_KILL} fills allocated",
        lambda: (s := stack.snapshot()) and s["counts"]["fills"] >= FILLS_BEFORE_KILL and s,
        UP_DEADLINE,
        stack,
    )
    # Let the snapshot right before the crash be the reference: its counts were journaled.
    before = stack.snapshot()
    assert before is not None and before["split"] is not None
    assert len(fill_sources(before)) == 2, before["sources"]
    controller = stack.container("controller")
    assert stack.inspect(controller, "{{.State.Health.Status}}") in ("healthy", "starting")
    pid = int(stack.inspect(controller, "{{.State.Pid}}"))
    # A crash, not a stop: `docker kill` counts as stopping it by hand, and Docker's restart
    # policy leaves a container stopped by hand alone.
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    log.warning(
        "killed the controller (instance %s) at %d fills allocated, acknowledged %s",
        before["instance"], before["counts"]["fills"], fill_sources(before),
    )

    def recovered() -> dict[str, Any] | None:
        now = stack.snapshot()
        if now is None or now["instance"] == before["instance"]:
            return None
        return now if now["counts"]["fills"] >= before["counts"]["fills"] else None

    after = wait_for("snapshot from a restarted controller", recovered, RESTART_DEADLINE, stack)
    back_after = time.monotonic() - killed
    # What the restarted controller recovered from the journal on the volume.
    logs = stack("logs", "--no-color", "controller").stdout
    recoveries = [int(n) for n in RECOVERED.findall(logs)]
    assert len(recoveries) >= 2, logs[-4000:]
    assert recoveries[-1] >= before["counts"]["fills"], (recoveries, before["counts"])
    # Nothing acknowledged is lost: every source's acknowledged seq is at least what it was.
    for source, seq in fill_sources(before).items():
        assert after["sources"].get(source, 0) >= seq, (source, seq, after["sources"])
    assert int(stack.inspect(controller, "{{.RestartCount}}")) >= 1
    later = wait_for(
        "fills allocated after the restart",
        lambda: (s := stack.snapshot()) and s["counts"]["fills"] >= after["counts"]["fills"]
        + FILLS_AFTER_RESTART and s,
        RESTART_DEADLINE,
        stack,
    )
    log.warning(
        "restarted as %s, its first snapshot %.1f s after the kill: %d fills recovered from "
        "the journal, %d allocated at that snapshot, %d later (first seen: %d)",
        after["instance"], back_after, recoveries[-1], after["counts"]["fills"],
        later["counts"]["fills"], first["counts"]["fills"],
    )

    stack("stop", "--timeout", "10")
    verify = stack(
        "run", "--rm", "--no-deps", "-T", "controller",
        "controller", "audit", "--journal", JOURNAL_IN_CONTAINER, "--verify",
    )
    assert "audit verify: OK" in verify.stdout, verify.stdout + verify.stderr
    blotter = stack(
        "run", "--rm", "--no-deps", "-T", "controller",
        "controller", "audit", "--journal", JOURNAL_IN_CONTAINER, "--csv",
    )
    journaled = {row["AllocID"] for row in csv.DictReader(io.StringIO(blotter.stdout))}
    assert len(journaled) >= later["counts"]["fills"]
    log.warning("audit --verify: %s; %d fills in the journal",
                verify.stdout.strip(), len(journaled))


def test_compose_down_leaves_nothing_behind(stack: Stack) -> None:
    stack("down", "--volumes", "--remove-orphans", "--timeout", "10")
    assert stack.leftovers() == []


@pytest.mark.timeout(COMMAND_TIMEOUT + UP_DEADLINE)
def test_compose_with_curve_keys_allocates_with_no_peer_refused(
    built: tuple[list[str], dict[str, str]], tmp_path: Path
) -> None:
    """compose.curve.yaml on keys made by examples/compose-keys.sh: every client gets in
    with its own key and sends only what its grant allows."""
    keys = tmp_path / "keys"
    run(["sh", str(ROOT / "examples" / "compose-keys.sh")],
        env={**built[1], "FILLALLOC_KEYS": str(keys)})
    assert (keys / "controller.key_secret").stat().st_mode & 0o077 == 0
    # The file's own (slower) intervals: its first snapshot comes within 10 s.
    env = {"FILLALLOC_KEYS": str(keys)}
    with system_up(built, "curve", "compose.curve.yaml", **env) as system:
        shown = wait_for(
            "snapshot with fills allocated over CURVE",
            lambda: (s := system.snapshot()) and s["counts"]["fills"] > 0
            and len(fill_sources(s)) == 2 and s,
            UP_DEADLINE,
            system,
        )
        assert shown["counts"]["refused"] == 0 and shown["counts"]["peers_rejected"] == 0
        assert "CURVE security on" in system("logs", "--no-color", "controller").stdout
        assert system.leftovers() != []
    assert system.leftovers() == []
