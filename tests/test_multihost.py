"""Separate hosts on one machine: network namespaces joined by veth links, CURVE on the wire.

The controller, the position server and two fill servers (one with the AUM server) each get
a namespace of their own, linked to the controller's by a veth pair with addresses from the
benchmarking range 198.18.0.0/15. One link is cut mid-stream and restored; every fill must
still be allocated exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from helpers import ROOT, Running, expected_shares, journal_fills, wait_for

from common import security
from common.allowlist import PERMISSIONS_FILE

FILLS = 4000
RATE = "400"
HOSTS = ("pos", "f1", "f2")


def namespaces_available() -> str | None:
    """None if this machine lets us create namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"fa-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


WHY_NOT = namespaces_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces: {WHY_NOT}")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Network:
    """A controller namespace plus one namespace per host, each on its own veth link."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.controller = f"fa{self.tag}-ctl"
        self.hosts = {name: f"fa{self.tag}-{name}" for name in HOSTS}
        self.addresses = {}
        self.links = {}
        ip("netns", "add", self.controller)
        ip("-n", self.controller, "link", "set", "lo", "up")
        for n, (name, namespace) in enumerate(self.hosts.items(), start=1):
            ip("netns", "add", namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
            near, far = f"v{self.tag}c{n}", f"v{self.tag}h{n}"
            ip(
                "link",
                "add",
                near,
                "netns",
                self.controller,
                "type",
                "veth",
                "peer",
                "name",
                far,
                "netns",
                namespace,
            )
            ip("-n", self.controller, "addr", "add", f"198.18.{n}.1/24", "dev", near)
            ip("-n", namespace, "addr", "add", f"198.18.{n}.2/24", "dev", far)
            ip("-n", self.controller, "link", "set", near, "up")
            ip("-n", namespace, "link", "set", far, "up")
            self.addresses[name] = f"198.18.{n}.1"  # the controller, as this host sees it
            self.links[name] = near

    def set_link(self, host: str, up: bool) -> None:
        ip("-n", self.controller, "link", "set", self.links[host], "up" if up else "down")

    def run(self, namespace: str, module: str, *args: str) -> Running:
        return Running(
            subprocess.Popen(
                ["ip", "netns", "exec", namespace, sys.executable, "-m", module, *args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
            )
        )

    def remove(self) -> None:
        for namespace in (self.controller, *self.hosts.values()):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@pytest.fixture
def network():
    net = Network()
    yield net
    net.remove()


@pytest.fixture
def keys(tmp_path):
    directory, allowed = tmp_path / "keys", tmp_path / "keys" / "allowed"
    for name in ("controller", "positions", "aumsim", "fillsim-1", "fillsim-2"):
        public, _ = security.generate_keys(directory, name)
        if name != "controller":
            allowed.mkdir(exist_ok=True)
            shutil.copy(public, allowed / public.name)
    # Each key speaks only for its own sources, and only its own kind of message.
    (allowed / PERMISSIONS_FILE).write_text(
        '[aumsim]\nrole = "aum"\nsources = ["aum"]\n'
        '[fillsim-1]\nrole = "fill"\nsources = ["desk-1"]\n'
        '[fillsim-2]\nrole = "fill"\nsources = ["desk-2"]\n'
        '[positions]\nrole = "positions"\n'
    )
    return directory


@pytest.mark.timeout(300)
def test_positions_flow_across_hosts_and_a_cut_link_loses_nothing(network, keys, tmp_path):
    journal = tmp_path / "journal"

    def client_keys(name):
        return [
            "--curve-secret-key",
            str(keys / f"{name}.key_secret"),
            "--curve-server-key",
            str(keys / "controller.key"),
        ]

    def endpoints(host):
        address = network.addresses[host]
        return ["--controller", f"tcp://{address}:5555", "--acks", f"tcp://{address}:5556"]

    controller = network.run(
        network.controller,
        "controller",
        "--inputs",
        "tcp://0.0.0.0:5555",
        "--publish",
        "tcp://0.0.0.0:5556",
        "--snapshot-interval",
        "0.3",
        "--journal",
        str(journal),
        "--curve-secret-key",
        str(keys / "controller.key_secret"),
        "--curve-allow",
        str(keys / "allowed"),
    )
    viewer = network.run(
        network.hosts["pos"],
        "positions",
        "--controller",
        f"tcp://{network.addresses['pos']}:5556",
        "--format",
        "json",
        "--no-record",
        *client_keys("positions"),
    )
    aumsim = network.run(
        network.hosts["f1"],
        "aumsim",
        *endpoints("f1"),
        "--count",
        "1",
        "--seed",
        "9",
        "--source",
        "aum",
        *client_keys("aumsim"),
    )
    fills = [
        network.run(
            network.hosts[f"f{n}"],
            "fillsim",
            *endpoints(f"f{n}"),
            "--source",
            f"desk-{n}",
            "--seed",
            str(n),
            "--count",
            str(FILLS),
            "--rate",
            RATE,
            "--sell-fraction",
            "0",
            *client_keys(f"fillsim-{n}"),
        )
        for n in (1, 2)
    ]
    processes = [controller, viewer, aumsim, *fills]

    def latest():
        snapshots = [json.loads(line) for line in viewer.out if line.startswith("{")]
        return snapshots[-1] if snapshots else None

    def progress(snapshot, n):
        return next(
            (seq for source, seq in snapshot["sources"].items() if source.startswith(f"desk-{n}@")),
            0,
        )

    try:
        first = wait_for(
            lambda: (s := latest()) and progress(s, 1) > 200 and progress(s, 2) > 200 and s,
            60,
            "fills from both hosts in the position server's snapshots",
        )
        assert first["counts"]["fills"] > 400

        network.set_link("f1", up=False)
        cut_at = progress(latest(), 1)
        # While the link is down, host 2 goes on and host 1 is stuck where it was.
        stalled = wait_for(
            lambda: (s := latest()) and progress(s, 2) > progress(first, 2) + 400 and s,
            60,
            "host 2 to go on while host 1 is cut off",
        )
        assert progress(stalled, 1) <= cut_at + 50  # at most what was already in flight
        network.set_link("f1", up=True)

        for each in fills + [aumsim]:
            assert each.wait(120) == 0, each.stderr[-3000:]
        done = wait_for(
            lambda: (s := latest()) and s["counts"]["fills"] == 2 * FILLS and s,
            30,
            "every fill in a snapshot",
        )
    finally:
        for each in processes:
            if each.process.poll() is None:
                each.process.terminate()
        for each in processes:
            try:
                each.wait(15)
            except subprocess.TimeoutExpired:
                each.stop()

    assert done["totals"]["positions"] == expected_shares([1, 2], FILLS)
    recorded = journal_fills(journal)
    assert len(recorded) == len(set(recorded)) == 2 * FILLS
    assert "CURVE security on" in controller.stderr
    assert done["counts"]["peers_rejected"] == 0
