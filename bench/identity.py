"""What binding identity to keys costs per message.

    python bench/identity.py [--count N]

1. `Permissions.check` alone: a cached answer, and a fresh decision (cache cleared).
2. A CURVE PULL socket over tcp://127.0.0.1 draining N fill-sized messages from a PUSH in
   another thread: plain `recv()` (bytes) against what the controller does with identity
   on, `recv(copy=False)` + the frame's User-Id + `check`, and the steps between. Each way
   runs twice, alternated, and the faster run counts. Prints one line per measurement.
"""

from __future__ import annotations

import _paths  # noqa: F401  (first: puts the project root, not bench/, on sys.path)

# isort: split
import argparse
import shutil
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import zmq

from common import security
from common.allowlist import PERMISSIONS_FILE, load_permissions, read_public_key
from common.protocol import FILL, fill_message, pack

MESSAGE = pack(fill_message("desk-a@1234abcd", 1, "AAPL", 187.25, 100))
CHECK_CALLS = 1_000_000
RUNS = 2


def allow_list(directory: Path) -> Path:
    """Keys for the controller and desk-a, desk-a allowed to send fills as desk-a."""
    for name in ("controller", "desk-a"):
        security.generate_keys(directory, name)
    allowed = directory / "allowed"
    allowed.mkdir(mode=0o755)
    shutil.copy(directory / "desk-a.key", allowed / "desk-a.key")
    (allowed / PERMISSIONS_FILE).write_text('[desk-a]\nrole = "fill"\nsources = ["desk-a"]\n')
    return allowed


def bench_check(directory: Path, allowed: Path) -> None:
    permissions = load_permissions(allowed)
    user_id = read_public_key(directory / "desk-a.key")
    check = permissions.check
    cached = timeit.timeit(lambda: check(user_id, FILL, "desk-a@1234abcd"), number=CHECK_CALLS)
    decide = permissions._decide
    fresh = timeit.timeit(lambda: decide(user_id, FILL, "desk-a@1234abcd"), number=CHECK_CALLS)
    print(f"check, cached answer:  {cached / CHECK_CALLS * 1e9:6.0f} ns/call")
    print(f"check, fresh decision: {fresh / CHECK_CALLS * 1e9:6.0f} ns/call")


def drain(pull: zmq.Socket, count: int, handle: Callable[[zmq.Socket], object]) -> float:
    """Seconds from the first message's arrival to the last one handled."""
    pull.poll()
    started = time.perf_counter()
    done = 0
    while done < count:
        pull.poll()
        try:
            while done < count:
                handle(pull)
                done += 1
        except zmq.Again:
            pass
    return time.perf_counter() - started


def bench_receive(directory: Path, allowed: Path, count: int) -> None:
    ctx = zmq.Context()
    guard = security.ServerSecurity(
        ctx, directory / "controller.key_secret", allowed, refresh_interval=None
    )
    pull = ctx.socket(zmq.PULL)
    pull.rcvhwm = 0
    guard.configure(pull)
    pull.bind("tcp://127.0.0.1:*")
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    configure = security.client_configure(
        directory / "desk-a.key_secret", directory / "controller.key"
    )

    def plain(sock: zmq.Socket) -> object:
        return sock.recv(zmq.NOBLOCK)

    def frames(sock: zmq.Socket) -> object:
        return sock.recv(zmq.NOBLOCK, copy=False).bytes

    def user_ids(sock: zmq.Socket) -> object:
        frame = sock.recv(zmq.NOBLOCK, copy=False)
        security.sender_user_id(frame)
        return frame.bytes

    def identified(sock: zmq.Socket) -> object:
        frame = sock.recv(zmq.NOBLOCK, copy=False)
        reason = guard.check(security.sender_user_id(frame), FILL, "desk-a@1234abcd")
        assert reason is None, reason
        return frame.bytes

    def send_all() -> None:
        push = ctx.socket(zmq.PUSH)
        push.sndhwm = 0
        configure(push)
        push.connect(endpoint)
        for _ in range(count):
            push.send(MESSAGE)
        push.close(linger=-1)

    best: dict[str, float] = {}
    try:
        for _ in range(RUNS):
            for name, handle in (
                ("recv()", plain),
                ("recv(copy=False)", frames),
                ("recv(copy=False)+User-Id", user_ids),
                ("recv(copy=False)+User-Id+check", identified),
            ):
                sender = threading.Thread(target=send_all)
                sender.start()
                seconds = drain(pull, count, handle)
                sender.join()
                best[name] = min(best.get(name, seconds), seconds)
    finally:
        pull.close(linger=0)
        guard.stop()
        ctx.term()
    for name, seconds in best.items():
        print(
            f"CURVE PULL {name:32s} {count / seconds:9,.0f} msgs/s "
            f"({seconds / count * 1e6:.2f} us/msg, best of {RUNS})"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        allowed = allow_list(directory)
        bench_check(directory, allowed)
        bench_receive(directory, allowed, args.count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
