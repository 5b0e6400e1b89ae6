"""Identity bound to keys: each allowed CURVE key may send only its role's messages, only
under its own source names; the allow-list is refused when others could write it."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import zmq
from helpers import FakeClock, python_module

from common import allowlist, security
from common.allowlist import PERMISSIONS_FILE, AllowList, SecurityError, load_permissions
from common.protocol import FILL, SPLIT
from controller.tools import keys as keys_tool

PERMISSIONS = """\
# who may send what
[desk-a]
role = "fill"
sources = ["desk-a", "desk-b"]

[aumsim]
role = "aum"
sources = ["aum"]

[positions]
role = "positions"
"""
NAMES = ("desk-a", "aumsim", "positions", "legacy", "stranger")
RECEIVE_TIMEOUT_MS = 10_000


@pytest.fixture
def keys(tmp_path) -> Path:
    """Key pairs for every name in keys/, and an allow-list keys/allowed with all but the
    stranger, `legacy` being a bare key without an entry (as in an old allow-list)."""
    directory, allowed = tmp_path / "keys", tmp_path / "keys" / "allowed"
    for name in ("controller", *NAMES):
        security.generate_keys(directory, name)
    allowed.mkdir()
    os.chmod(allowed, 0o755)
    for name in NAMES[:-1]:
        shutil.copy(directory / f"{name}.key", allowed / f"{name}.key")
    (allowed / PERMISSIONS_FILE).write_text(PERMISSIONS)
    return directory


def user_id(keys: Path, name: str) -> str:
    """The ZAP User-Id of `name`'s connections: its z85 public key."""
    return allowlist.read_public_key(keys / f"{name}.key")


# -- the permissions file and the check --------------------------------------------------


def test_each_key_gets_its_role_and_sources_and_bare_keys_only_read(keys):
    permissions = load_permissions(keys / "allowed")
    grants = {grant.name: grant for grant in permissions.grants.values()}
    assert set(grants) == {"desk-a", "aumsim", "positions", "legacy"}
    assert (grants["desk-a"].role, grants["desk-a"].sources) == ("fill", {"desk-a", "desk-b"})
    assert (grants["aumsim"].role, grants["aumsim"].sources) == ("aum", {"aum"})
    assert (grants["positions"].role, grants["positions"].sources) == ("positions", set())
    assert grants["legacy"].role is None
    assert permissions.key_name(user_id(keys, "desk-a")) == "desk-a"
    assert permissions.key_name(user_id(keys, "stranger")) is None
    assert permissions.admits(user_id(keys, "legacy").encode())
    assert not permissions.admits(user_id(keys, "stranger").encode())


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("desk-a@1234abcd", True),
        ("desk-b@00000000", True),
        ("desk-a", True),  # the bare name is the name
        ("desk-ab@1234abcd", False),  # a longer name is another name
        ("desk-@1234abcd", False),
        ("desk@1234abcd", False),
        ("desk-a-2@1234abcd", False),
        ("DESK-A@1234abcd", False),
        ("@desk-a", False),
        ("aum@1234abcd", False),
        ("", False),
    ],
)
def test_a_name_covers_its_sessions_and_nothing_else(keys, source, allowed):
    reason = load_permissions(keys / "allowed").check(user_id(keys, "desk-a"), FILL, source)
    if allowed:
        assert reason is None
    else:
        assert reason == f"key 'desk-a' may not send as source {source!r}"


def test_roles_decide_what_a_key_may_send(keys):
    permissions = load_permissions(keys / "allowed")
    desk, aum = user_id(keys, "desk-a"), user_id(keys, "aumsim")
    positions, legacy = user_id(keys, "positions"), user_id(keys, "legacy")
    assert permissions.check(desk, FILL, "desk-a@1234abcd") is None
    assert permissions.check(aum, SPLIT, "aum@1234abcd") is None
    assert permissions.check(desk, SPLIT, "desk-a@1234abcd") == "key 'desk-a' may not send splits"
    assert permissions.check(aum, FILL, "aum@1234abcd") == "key 'aumsim' may not send fills"
    assert permissions.check(aum, SPLIT, "desk-a@1234abcd") == (
        "key 'aumsim' may not send as source 'desk-a@1234abcd'"
    )
    for kind, noun in ((FILL, "fills"), (SPLIT, "splits")):
        assert permissions.check(positions, kind, "positions") == (
            f"key 'positions' may not send {noun}"
        )
        assert permissions.check(legacy, kind, "legacy") == (
            f"key 'legacy' may not send {noun}: it has no entry in "
            f"{keys / 'allowed'}/{PERMISSIONS_FILE}"
        )
    assert permissions.check(None, FILL, "desk-a@1") == (
        "the message came without a CURVE key identity (User-Id)"
    )
    stranger = user_id(keys, "stranger")
    assert permissions.check(stranger, FILL, "desk-a@1") == (
        f"the sender's key {stranger} is no longer in the allow-list {keys / 'allowed'}"
    )
    assert (
        permissions.check(desk, "audit", "desk-a@1") == "key 'desk-a' may not send 'audit' messages"
    )
    assert permissions.check(desk, FILL, ["desk-a"]) == "a message's type and source must be text"  # type: ignore[arg-type]


def test_answers_are_cached_per_identity_kind_and_source(keys, monkeypatch):
    permissions = load_permissions(keys / "allowed")
    decided = []
    decide = permissions._decide

    def counting(*args):
        decided.append(args)
        return decide(*args)

    monkeypatch.setattr(permissions, "_decide", counting)
    desk = user_id(keys, "desk-a")
    for _ in range(3):
        assert permissions.check(desk, FILL, "desk-a@1234abcd") is None
        assert permissions.check(desk, FILL, "aum@1234abcd") is not None
    assert len(decided) == 2
    monkeypatch.setattr(allowlist, "CHECK_CACHE_MAX", 2)
    assert permissions.check(desk, FILL, "desk-b@1") is None  # full: starts over
    assert len(permissions._answers) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[desk-a\nrole = 1", "is not valid TOML"),
        ('[desk-a]\nrole = "admin"', r"\[desk-a\]: role must be one of fill, aum, positions"),
        ("[desk-a]\nsources = ['x']", r"\[desk-a\]: role must be one of"),
        ('[desk-a]\nrole = "fill"\nsource = ["x"]', r"unknown field\(s\) source"),
        ('[desk-a]\nrole = "fill"', "role fill needs sources"),
        ('[desk-a]\nrole = "fill"\nsources = []', "role fill needs sources"),
        ('[desk-a]\nrole = "fill"\nsources = "desk-a"', "sources must be a list"),
        ('[desk-a]\nrole = "fill"\nsources = ["desk-a@1"]', "contains '@'"),
        ('[desk-a]\nrole = "fill"\nsources = ["desk a"]', "without spaces"),
        ('[desk-a]\nrole = "fill"\nsources = [1]', "non-empty strings"),
        ('[desk-a]\nrole = "fill"\nsources = ["' + "x" * 120 + '"]', "at most 119"),
        ('[positions]\nrole = "positions"\nsources = ["p"]', "sends nothing"),
        ('desk-a = "fill"', "must be a table"),
        ('["../x"]\nrole = "positions"', "key name '../x' must be"),
    ],
)
def test_a_malformed_permissions_file_is_refused_saying_where(keys, text, message):
    (keys / "allowed" / PERMISSIONS_FILE).write_text(text)
    with pytest.raises(SecurityError, match=message) as refused:
        load_permissions(keys / "allowed")
    assert str(keys / "allowed") in str(refused.value)


def test_an_entry_without_a_key_is_ignored_with_a_warning(keys, caplog):
    (keys / "allowed" / "positions.key").unlink()
    with caplog.at_level(logging.WARNING, "common.allowlist"):
        permissions = load_permissions(keys / "allowed")
    assert "positions" not in {grant.name for grant in permissions.grants.values()}
    assert "[positions] has no positions.key in the allow-list" in caplog.text


def test_a_bare_allow_list_still_admits_its_keys_for_reading_only(keys, caplog):
    (keys / "allowed" / PERMISSIONS_FILE).unlink()
    with caplog.at_level(logging.WARNING, "common.allowlist"):
        allowed = AllowList(keys / "allowed")
    desk = user_id(keys, "desk-a")
    assert allowed.permissions.admits(desk.encode())
    assert allowed.permissions.check(desk, FILL, "desk-a@1") == (
        f"key 'desk-a' may not send fills: it has no entry in {keys / 'allowed'}/{PERMISSIONS_FILE}"
    )
    assert "may connect and read but not send: aumsim, desk-a, legacy, positions" in caplog.text


# -- unsafe allow-lists -------------------------------------------------------------------


@pytest.mark.parametrize("target", [".", "desk-a.key", PERMISSIONS_FILE])
@pytest.mark.parametrize(("mode", "who"), [(0o002, "others"), (0o020, "its group")])
def test_an_allow_list_others_can_write_is_refused_naming_the_path(keys, target, mode, who):
    path = keys / "allowed" / target
    os.chmod(path, path.stat().st_mode | mode)
    shown = path if target != "." else keys / "allowed"
    with pytest.raises(SecurityError, match=f"writable by {who}") as refused:
        load_permissions(keys / "allowed")
    assert str(refused.value).startswith(f"{shown} is writable")
    assert f"chmod go-w {shown}" in str(refused.value)


def test_the_controller_refuses_to_start_with_an_unsafe_allow_list(ctx, keys):
    os.chmod(keys / "allowed" / PERMISSIONS_FILE, 0o666)
    with pytest.raises(SecurityError, match="permissions.toml is writable by others"):
        security.ServerSecurity(ctx, keys / "controller.key_secret", keys / "allowed")


def test_controller_process_refuses_a_group_writable_allow_list(tmp_path, keys):
    os.chmod(keys / "allowed", 0o775)
    controller = python_module(
        "controller",
        "--inputs",
        "tcp://127.0.0.1:0",
        "--publish",
        "tcp://127.0.0.1:0",
        "--journal",
        str(tmp_path / "journal"),
        "--curve-secret-key",
        str(keys / "controller.key_secret"),
        "--curve-allow",
        str(keys / "allowed"),
    )
    try:
        _, err = controller.communicate(timeout=30)
    finally:
        if controller.poll() is None:  # it started: the assertion below fails, nothing leaks
            controller.kill()
            controller.wait()
    assert controller.returncode == 2
    assert f"{keys / 'allowed'} is writable by its group (mode 775)".encode() in err


def test_secret_keys_and_shared_keys_in_the_allow_list_are_refused(keys):
    allowed = keys / "allowed"
    shutil.copy(keys / "stranger.key_secret", allowed / "stranger.key_secret")
    with pytest.raises(SecurityError, match="stranger.key_secret is a secret key"):
        load_permissions(allowed)
    (allowed / "stranger.key_secret").rename(allowed / "stranger.key")
    with pytest.raises(SecurityError, match="stranger.key holds a secret key"):
        load_permissions(allowed)
    shutil.copy(keys / "desk-a.key", allowed / "stranger.key")
    with pytest.raises(SecurityError, match="desk-a.key and stranger.key hold the same public"):
        load_permissions(allowed)
    (allowed / "stranger.key").write_text("public-key = 'short'\n")
    with pytest.raises(SecurityError, match="stranger.key does not hold a valid CURVE public"):
        load_permissions(allowed)


def test_a_client_refuses_a_server_key_others_could_replace(keys):
    os.chmod(keys / "controller.key", 0o666)
    with pytest.raises(SecurityError, match="controller.key is writable by others"):
        security.client_configure(keys / "desk-a.key_secret", keys / "controller.key")
    os.chmod(keys / "controller.key", 0o644)
    security.client_configure(keys / "desk-a.key_secret", keys / "controller.key")


# -- reloading ------------------------------------------------------------------------------


def test_reload_brings_new_keys_and_new_rights_and_keeps_them_when_an_edit_is_bad(keys, caplog):
    allowed = AllowList(keys / "allowed")
    before = allowed.permissions
    assert allowed.reload() is False and allowed.permissions is before  # nothing changed
    stranger = user_id(keys, "stranger")
    shutil.copy(keys / "stranger.key", keys / "allowed" / "stranger.key")
    with open(keys / "allowed" / PERMISSIONS_FILE, "a") as permissions:
        permissions.write('\n[stranger]\nrole = "fill"\nsources = ["late"]\n')
    assert allowed.reload() is True
    assert allowed.permissions.check(stranger, FILL, "late@1") is None

    (keys / "allowed" / PERMISSIONS_FILE).write_text('[stranger]\nrole = "root"\n')
    with caplog.at_level(logging.ERROR, "common.allowlist"):
        assert allowed.reload() is False
        assert allowed.reload() is False
    assert allowed.permissions.check(stranger, FILL, "late@1") is None  # still in force
    assert caplog.text.count("allow-list not reloaded") == 1  # once per bad state
    assert "role must be one of" in caplog.text

    os.chmod(keys / "allowed", 0o777)
    assert allowed.reload() is False
    os.chmod(keys / "allowed", 0o755)
    (keys / "allowed" / PERMISSIONS_FILE).write_text(PERMISSIONS)
    (keys / "allowed" / "stranger.key").unlink()  # revoked
    assert allowed.reload() is True
    assert "no longer in the allow-list" in (
        allowed.permissions.check(stranger, FILL, "late@1") or ""
    )


def test_an_unknown_key_reloads_the_allow_list_and_stays_out_until_listed(ctx, keys):
    guard = security.ServerSecurity(
        ctx, keys / "controller.key_secret", keys / "allowed", refresh_interval=None
    )
    try:
        knock = guard.authenticator.callback
        stranger = user_id(keys, "stranger").encode()
        assert knock("*", user_id(keys, "desk-a").encode()) is True
        assert knock("*", stranger) is False and guard.rejected == 1
        shutil.copy(keys / "stranger.key", keys / "allowed" / "stranger.key")
        assert knock("*", stranger) is True
        assert guard.key_name(stranger.decode()) == "stranger"
        assert guard.check(stranger.decode(), FILL, "stranger@1") == (
            f"key 'stranger' may not send fills: it has no entry in "
            f"{keys / 'allowed'}/{PERMISSIONS_FILE}"
        )
    finally:
        guard.stop()


# -- the refusal log ----------------------------------------------------------------------


def test_refusals_are_logged_in_full_then_summarised_per_interval(caplog):
    clock = FakeClock()
    refusals = security.RefusalLog(logging.getLogger("refusals"), clock, in_full=3, interval=60)
    with caplog.at_level(logging.WARNING, "refusals"):
        for n in range(100):  # one a second
            refusals.refused("refused %s", f"peer-{n} %s")  # wire text stays data
            clock.advance(1)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "refused peer-0 %s",
        "refused peer-1 %s",
        "refused peer-2 %s",
        "60 refusals in the last 60 s (not logged one by one); latest: refused peer-62 %s",
    ]
    clock.advance(60)  # a quiet minute: what was held is counted, then full lines again
    caplog.clear()
    with caplog.at_level(logging.WARNING, "refusals"):
        refusals.refused("refused %s", "peer-again")
        refusals.flush()
    lines = [record.getMessage() for record in caplog.records]
    assert lines == ["37 more refusals in 98 s (not logged one by one)", "refused peer-again"]


# -- the keys tool ---------------------------------------------------------------------------


def run_tool(*args: str) -> int:
    return keys_tool.main(list(args))


def test_keys_tool_writes_the_entry_the_controller_reads(tmp_path, capsys):
    allowed = tmp_path / "allowed"
    old_umask = os.umask(0o002)  # a umask that would make the directory group-writable
    try:
        code = run_tool(
            "desk-a", "--dir", str(tmp_path / "k"), "--allow", str(allowed),
            "--role", "fill", "--sources", "desk-a, desk-b,desk-a",
        )  # fmt: skip
    finally:
        os.umask(old_umask)
    assert code == 0, capsys.readouterr().err
    assert allowed.stat().st_mode & 0o777 == 0o755
    assert (allowed / PERMISSIONS_FILE).stat().st_mode & 0o777 == 0o644
    assert (allowed / "desk-a.key").read_bytes() == (tmp_path / "k" / "desk-a.key").read_bytes()
    desk = allowlist.read_public_key(allowed / "desk-a.key")
    permissions = load_permissions(allowed)
    assert permissions.check(desk, FILL, "desk-b@1234abcd") is None
    assert permissions.grants[desk].sources == {"desk-a", "desk-b"}
    assert "added [desk-a]" in capsys.readouterr().out


def test_keys_tool_allows_a_key_made_elsewhere_and_replaces_only_its_entry(keys, capsys):
    allowed = keys / "allowed"
    code = run_tool(
        "stranger", "--public", str(keys / "stranger.key"), "--allow", str(allowed),
        "--role", "aum", "--sources", "aum-2",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    code = run_tool("desk-a", "--public", str(keys / "desk-a.key"), "--allow", str(allowed),
                    "--role", "fill", "--sources", "desk-c")  # fmt: skip
    assert code == 0, capsys.readouterr().err
    text = (allowed / PERMISSIONS_FILE).read_text()
    assert text.startswith('# who may send what\n[desk-a]\nrole = "fill"\nsources = ["desk-c"]')
    permissions = load_permissions(allowed)
    assert permissions.check(user_id(keys, "stranger"), SPLIT, "aum-2@1") is None
    assert permissions.check(user_id(keys, "desk-a"), FILL, "desk-a@1") is not None
    assert permissions.check(user_id(keys, "aumsim"), SPLIT, "aum@1") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--role", "fill"), "role fill needs --sources"),
        (("--role", "positions", "--sources", "p"), "role positions sends nothing"),
        (("--sources", "p"), "--sources needs --role"),
        (("--role", "aum", "--sources", "a@1"), "contains '@'"),
    ],
)
def test_keys_tool_refuses_bad_rights_before_making_a_key(tmp_path, capsys, args, message):
    allowed = tmp_path / "allowed"
    assert run_tool("new", "--dir", str(tmp_path / "k"), "--allow", str(allowed), *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "k").exists() and not allowed.exists()


def test_keys_tool_never_replaces_a_different_key_nor_writes_into_an_unsafe_list(keys, capsys):
    allowed = keys / "allowed"
    assert run_tool("desk-a", "--public", str(keys / "stranger.key"), "--allow", str(allowed)) == 2
    assert "desk-a.key already holds a different key" in capsys.readouterr().err
    new_pair = keys / "elsewhere"
    assert run_tool("desk-a", "--dir", str(new_pair), "--allow", str(allowed)) == 2
    assert "desk-a.key already holds a different key" in capsys.readouterr().err
    assert not new_pair.exists()  # refused before a pair was made
    os.chmod(allowed, 0o777)
    code = run_tool("new", "--dir", str(keys), "--allow", str(allowed), "--role", "positions")
    assert code == 2
    assert f"{allowed} is writable by others" in capsys.readouterr().err
    assert not (keys / "new.key").exists()
    assert run_tool("../escape", "--dir", str(keys)) == 2
    assert "key name '../escape' must be" in capsys.readouterr().err


# -- the identity on the wire ----------------------------------------------------------------


def test_the_user_id_on_the_pull_socket_names_the_sending_key(ctx, keys):
    """What the controller's receive path does: recv(copy=False), read the frame's ZAP
    User-Id, check it against what the message claims to be."""
    guard = security.ServerSecurity(
        ctx, keys / "controller.key_secret", keys / "allowed", refresh_interval=None
    )
    pull = ctx.socket(zmq.PULL)
    guard.configure(pull)
    pull.bind("tcp://127.0.0.1:*")
    endpoint = pull.last_endpoint.decode()
    pushes = {}
    try:
        for name in ("desk-a", "aumsim", "positions"):
            push = ctx.socket(zmq.PUSH)
            security.client_configure(keys / f"{name}.key_secret", keys / "controller.key")(push)
            push.connect(endpoint)
            push.send(name.encode())  # queued until the handshake is done
            pushes[name] = push
        seen = {}
        for _ in pushes:
            assert pull.poll(RECEIVE_TIMEOUT_MS), "a CURVE client's message arrives"
            frame = pull.recv(copy=False)
            seen[frame.bytes.decode()] = security.sender_user_id(frame)
        assert {claimed: guard.key_name(uid) for claimed, uid in seen.items()} == {
            "desk-a": "desk-a",
            "aumsim": "aumsim",
            "positions": "positions",
        }
        assert guard.check(seen["desk-a"], FILL, "desk-a@1234abcd") is None
        assert guard.check(seen["aumsim"], SPLIT, "aum@1234abcd") is None
        assert guard.check(seen["positions"], FILL, "desk-a@1234abcd") == (
            "key 'positions' may not send fills"
        )
        assert guard.check(seen["desk-a"], SPLIT, "aum@1234abcd") == (
            "key 'desk-a' may not send splits"
        )
        assert guard.check(seen["aumsim"], SPLIT, "desk-a@1234abcd") == (
            "key 'aumsim' may not send as source 'desk-a@1234abcd'"
        )

        (keys / "allowed" / "desk-a.key").unlink()  # revoked while connected
        guard.allow_list.reload()
        pushes["desk-a"].send(b"after revocation")
        assert pull.poll(RECEIVE_TIMEOUT_MS)
        frame = pull.recv(copy=False)
        assert security.sender_user_id(frame) == seen["desk-a"]
        assert "no longer in the allow-list" in (
            guard.check(seen["desk-a"], FILL, "desk-a@1234abcd") or ""
        )
    finally:
        for push in pushes.values():
            push.close(linger=0)
        pull.close(linger=0)
        guard.stop()


def test_without_curve_a_frame_has_no_user_id(ctx):
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("tcp://127.0.0.1:*")
    push.connect(pull.last_endpoint.decode())
    push.send(b"plain")
    assert pull.poll(RECEIVE_TIMEOUT_MS)
    assert security.sender_user_id(pull.recv(copy=False)) is None
    push.close(linger=0)
    pull.close(linger=0)
