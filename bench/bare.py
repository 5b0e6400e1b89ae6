"""The bare limit, as a subprocess: a PULL that only decodes (sink) or republishes (forward).

    python -m bench.bare sink --inputs ENDPOINT --count N
    python -m bench.bare forward --inputs ENDPOINT --publish ENDPOINT

(bench.common starts it so, as every child, through tests.helpers.python_module;
`python bench/bare.py ...` works as well.)

Both bind, then print "ready". The sink decodes N messages with msgpack and prints one JSON
line {"count", "seconds", "cpu_seconds"}: from the first message's arrival to the last one
decoded, in wall-clock time and in the process's CPU time (all threads). The
forwarder republishes every message as-is as [b"allocation", message] until killed.
Deliberately standalone (zmq and msgpack only), so nothing else is on its path.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable

import msgpack
import zmq

TOPIC = b"allocation"
PUB_HWM = 100_000  # as the controller's PUB


def pump(pull: zmq.Socket, handle: Callable[[bytes], object], count: float = math.inf) -> None:
    """Poll, then drain with NOBLOCK until zmq.Again, handing each message to `handle`."""
    recv, done = pull.recv, 0
    while done < count:
        pull.poll()
        try:
            while done < count:
                handle(recv(zmq.NOBLOCK))
                done += 1
        except zmq.Again:
            pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["sink", "forward"])
    p.add_argument("--inputs", required=True)
    p.add_argument("--publish")
    p.add_argument("--count", type=int, default=0)
    args = p.parse_args()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(args.inputs)
    if args.mode == "sink":
        print("ready", flush=True)
        unpackb = msgpack.unpackb
        pull.poll()
        first, first_cpu = time.perf_counter(), time.process_time()
        pump(pull, lambda raw: unpackb(raw, raw=False), args.count)
        seconds = time.perf_counter() - first
        cpu = time.process_time() - first_cpu
        print(json.dumps({"count": args.count, "seconds": seconds, "cpu_seconds": cpu}), flush=True)
        return 0
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, PUB_HWM)
    pub.bind(args.publish)
    print("ready", flush=True)
    send = pub.send_multipart
    pump(pull, lambda raw: send([TOPIC, raw]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
