"""Only trusted peers get in: CURVE keys, the allow-list, the loopback rule, key files."""

from __future__ import annotations

import os

import pytest
import zmq
from helpers import FakeClock, collect, python_module, wait_for

from common import security
from common.allowlist import PERMISSIONS_FILE
from common.protocol import DEFAULT_TICKERS, TOPIC_POSITIONS, fill_message, pack, split_message
from common.sender import ReliableSender
from controller.book import Book
from controller.engine import Engine
from controller.service import ControllerService

ALLOWED = {"trusted": "fill", "trusted-aum": "aum"}  # each may send as its own name


@pytest.fixture
def keys(tmp_path):
    directory, allowed = tmp_path / "keys", tmp_path / "keys" / "allowed"
    for name in ("controller", *ALLOWED, "stranger"):
        security.generate_keys(directory, name)
    allowed.mkdir()
    os.chmod(allowed, 0o755)
    entries = []
    for name, role in ALLOWED.items():
        (allowed / f"{name}.key").write_bytes((directory / f"{name}.key").read_bytes())
        entries.append(f'[{name}]\nrole = "{role}"\nsources = ["{name}"]\n')
    (allowed / PERMISSIONS_FILE).write_text("\n".join(entries))
    return directory


@pytest.fixture
def secured(ctx, keys):
    guard = security.ServerSecurity(ctx, keys / "controller.key_secret", keys / "allowed")
    service = ControllerService(
        ctx,
        Engine(Book(DEFAULT_TICKERS)),
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:*",
        clock=FakeClock(),
        security=guard,
    )
    yield service
    service.close()
    guard.stop()


def client(keys, name):
    return security.client_configure(keys / f"{name}.key_secret", keys / "controller.key")


def subscriber(ctx, endpoint, configure=None):
    sub = ctx.socket(zmq.SUB)
    if configure is not None:
        configure(sub)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC_POSITIONS)
    sub.connect(endpoint)
    return sub


def test_allowed_client_gets_in_and_strangers_get_nothing(ctx, keys, secured):
    def sender(name):
        configure = client(keys, name)
        return ReliableSender(ctx, name, secured.inputs, secured.publish, configure=configure)

    aum, trusted, stranger = sender("trusted-aum"), sender("trusted"), sender("stranger")
    plain = ctx.socket(zmq.PUSH)
    plain.connect(secured.inputs)
    stranger_sub = subscriber(ctx, secured.publish, client(keys, "stranger"))
    plain_sub = subscriber(ctx, secured.publish)
    trusted_sub = subscriber(ctx, secured.publish, client(keys, "trusted"))

    aum.send(split_message(aum.source, 0, {"A": 100}))
    stranger.send(split_message(stranger.source, 0, {"EVIL": 100}))
    stranger.send(fill_message(stranger.source, 0, "AAPL", 10.0, 100))
    plain.send(pack(split_message("plain", 1, {"EVIL": 100})), zmq.NOBLOCK)

    def acknowledged(*senders):
        def check():
            secured.step(10)
            secured.publish_snapshot()
            for each in (aum, trusted, stranger):
                each.pump(0)
            return all(each.pending == 0 for each in senders)

        return check

    wait_for(acknowledged(aum), 20, "the split acknowledged")
    trusted.send(fill_message(trusted.source, 0, "AAPL", 10.0, 100))
    wait_for(acknowledged(trusted), 20, "the fill acknowledged")
    wait_for(
        lambda: secured.security.authenticator.rejected >= 2
        and secured.security.handshake_failures >= 2,
        20,
        "the strangers refused",
    )
    book = secured.engine.book
    assert book.accounts == ["A"] and book.total_shares()["AAPL"] == 100
    assert set(secured.engine.sequencer.last_seq) == {"trusted", "trusted-aum"}
    assert stranger.pending == 2  # never acknowledged
    assert collect(trusted_sub, 100), "the trusted subscriber reads snapshots"
    assert collect(stranger_sub, 100) == [] and collect(plain_sub, 100) == []
    secured.publish_snapshot()
    latest = [body for _, body in collect(trusted_sub, 100)][-1]
    assert latest["counts"]["peers_rejected"] >= 4
    for each in (aum, trusted, stranger):
        each.close()
    for sock in (plain, stranger_sub, plain_sub, trusted_sub):
        sock.close(linger=0)


def test_secret_key_readable_by_others_is_refused(keys):
    secret = keys / "trusted.key_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    os.chmod(secret, 0o644)
    with pytest.raises(security.SecurityError, match="readable by others.*chmod 600"):
        security.load_key_pair(secret)


def test_public_key_is_not_a_secret_key(keys):
    os.chmod(keys / "trusted.key", 0o600)
    with pytest.raises(security.SecurityError, match="holds no secret key"):
        security.load_key_pair(keys / "trusted.key")


def test_keys_are_never_overwritten(keys):
    with pytest.raises(security.SecurityError, match="already exists"):
        security.generate_keys(keys, "trusted")


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.8.9.10:1", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/x", True),
        ("inproc://x", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://10.1.2.3:5555", False),
        ("tcp://controller.example:5555", False),
        ("tcp://eth0:5555", False),
    ],
)
def test_loopback_rule(endpoint, local):
    assert security.is_local(endpoint) is local


def test_plain_tcp_beyond_loopback_needs_insecure():
    with pytest.raises(security.SecurityError, match="not loopback and no CURVE keys"):
        security.require_safe(["tcp://0.0.0.0:5555"], keyed=False, insecure=False, role="x")
    security.require_safe(["tcp://0.0.0.0:5555"], keyed=False, insecure=True, role="x")
    security.require_safe(["tcp://0.0.0.0:5555"], keyed=True, insecure=False, role="x")


def test_controller_process_refuses_exposed_plain_endpoint(tmp_path):
    controller = python_module(
        "controller",
        "--inputs",
        "tcp://0.0.0.0:0",
        "--publish",
        f"ipc://{tmp_path}/pub",
        "--journal",
        str(tmp_path / "journal"),
    )
    _, err = controller.communicate(timeout=30)
    assert controller.returncode == 2
    assert b"not loopback and no CURVE keys are configured" in err


def test_fillsim_process_refuses_a_world_readable_secret(tmp_path, keys):
    os.chmod(keys / "trusted.key_secret", 0o640)
    fillsim = python_module(
        "fillsim",
        "--controller",
        f"ipc://{tmp_path}/in",
        "--acks",
        f"ipc://{tmp_path}/pub",
        "--curve-secret-key",
        str(keys / "trusted.key_secret"),
        "--curve-server-key",
        str(keys / "controller.key"),
        "--count",
        "1",
    )
    _, err = fillsim.communicate(timeout=30)
    assert fillsim.returncode == 2
    assert b"is readable by others (mode 640)" in err


def test_keys_tool_writes_a_private_pair_and_allows_it(tmp_path):
    tool = python_module(
        "controller",
        "keys",
        "desk-a",
        "--dir",
        str(tmp_path / "k"),
        "--allow",
        str(tmp_path / "allowed"),
    )
    out, err = tool.communicate(timeout=30)
    assert tool.returncode == 0, err
    assert (tmp_path / "k" / "desk-a.key_secret").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "allowed" / "desk-a.key").read_bytes() == (
        tmp_path / "k" / "desk-a.key"
    ).read_bytes()
    wait_for(lambda: security.load_key_pair(tmp_path / "k" / "desk-a.key_secret"), 1)


def test_config_values_of_the_wrong_type_are_refused(tmp_path):
    settings = tmp_path / "bad.toml"
    settings.write_text('[controller]\nsnapshot_interval = "10"\n')
    controller = python_module("controller", "--config", str(settings))
    _, err = controller.communicate(timeout=30)
    assert controller.returncode == 2
    assert b"[controller] snapshot_interval must be a number, got '10'" in err


def test_a_key_cannot_speak_for_another_source_or_kind(ctx, keys, secured):
    """The fill server's key sends splits and fills as the AUM server: every one is refused,
    counted and dead-letter-worthy, and the AUM server's own sequence is untouched."""
    configure = client(keys, "trusted")
    impostor = ctx.socket(zmq.PUSH)
    configure(impostor)
    impostor.connect(secured.inputs)
    aum = ReliableSender(
        ctx, "trusted-aum", secured.inputs, secured.publish, configure=client(keys, "trusted-aum")
    )
    watcher = subscriber(ctx, secured.publish, client(keys, "trusted"))
    watcher.setsockopt(zmq.SUBSCRIBE, b"rejected")
    forged = [
        split_message(aum.source, seq, {"EVIL": 100}) for seq in range(1, 4)
    ] + [fill_message(aum.source, seq, "AAPL", 10.0, 5) for seq in range(4, 6)]
    forged.append(split_message("trusted", 1, {"EVIL": 100}))  # its own name, wrong kind

    def watcher_joined() -> bool:  # the slow joiner: know it is subscribed before relying
        secured.publish_snapshot()
        return any(topic == TOPIC_POSITIONS for topic, _ in collect(watcher, 20))

    wait_for(watcher_joined, 20, "the watcher to receive a snapshot")

    def refused_all() -> bool:
        secured.step(10)
        return secured.engine.refused >= len(forged)

    for message in forged:
        impostor.send(pack(message))
    wait_for(refused_all, 20, "every forged message refused")
    assert secured.engine.sequencer.last_seq == {}
    aum.send(split_message(aum.source, 0, {"A": 100}))

    def acknowledged() -> bool:
        secured.step(10)
        secured.publish_snapshot()
        aum.pump(0)
        return aum.pending == 0

    wait_for(acknowledged, 20, "the real split acknowledged as seq 1")
    assert secured.engine.book.accounts == ["A"]
    assert aum.rejected == 0
    events = collect(watcher, 100)
    reasons = [body["reason"] for topic, body in events if topic == b"rejected"]
    assert any("may not" in reason for reason in reasons)
    assert all("source" not in body for topic, body in events if topic == b"rejected")
    snapshots = [body for topic, body in events if topic == TOPIC_POSITIONS]
    assert snapshots[-1]["counts"]["refused"] == len(forged)
    aum.close()
    for sock in (impostor, watcher):
        sock.close(linger=0)
