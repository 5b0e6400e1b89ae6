"""Nothing lost, nothing counted twice: SIGKILL the controller mid-stream, several times."""

from __future__ import annotations

import re
import signal

import pytest
import zmq
from helpers import (
    Running,
    collect,
    expected_shares,
    journal_fills,
    python_module,
    start_controller,
    wait_for,
)

from common.history import recover
from common.protocol import DEFAULT_TICKERS, TOPIC_POSITIONS
from controller.snapshot import build_snapshot

FILLS_PER_SERVER = 50_000
KILLS = 3


@pytest.mark.timeout(600)
def test_sigkill_controller_mid_stream_loses_and_duplicates_nothing(tmp_path):
    journal = tmp_path / "journal"

    def controller():
        return start_controller(tmp_path, "0.5", "--checkpoint-interval", "1")

    running, inputs, publish = controller()

    def sender(module, *args):
        return Running(python_module(module, "--controller", inputs, "--acks", publish, *args))

    senders = [
        sender("aumsim", "--count", "1", "--accounts", "7", "--seed", "5"),
        *(
            sender(
                "fillsim",
                "--source",
                f"desk-{seed}",
                "--seed",
                str(seed),
                "--count",
                str(FILLS_PER_SERVER),
                "--rate",
                "15000",
                "--sell-fraction",
                "0",  # buys only: the shares sent are then known from the seeds
            )
            for seed in (1, 2)
        ),
    ]
    try:
        for kill in range(1, KILLS + 1):
            # Kill once the journal has grown by another slice of the stream.
            threshold = kill * 2 * FILLS_PER_SERVER // (KILLS + 1)
            wait_for(
                lambda t=threshold: journal.exists() and len(journal_fills(journal)) >= t,
                120,
                f"{threshold} journaled fills",
            )
            running.process.send_signal(signal.SIGKILL)
            running.wait(10)
            running = controller()[0]

        for each in senders:
            assert each.wait(240) == 0, each.stderr[-2000:]
        assert "resending" in "".join(s.stderr for s in senders[1:])

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC_POSITIONS)
        sub.connect(publish)

        def final_snapshot():
            for _, body in collect(sub, 100):
                if body["counts"]["fills"] == 2 * FILLS_PER_SERVER:
                    return body
            return None

        snapshot = wait_for(final_snapshot, 30, "a snapshot with every fill")
        ctx.destroy(linger=0)
    finally:
        running.process.send_signal(signal.SIGTERM)
        assert running.wait(30) == 0
        for each in senders:
            each.stop()

    # Every fill exactly once in the journal, in seq order per source.
    fills = journal_fills(journal)
    assert len(fills) == len(set(fills)) == 2 * FILLS_PER_SERVER
    for seed in (1, 2):
        seqs = [seq for source, seq in fills if source.startswith(f"desk-{seed}@")]
        assert seqs == list(range(1, FILLS_PER_SERVER + 1))

    # Positions equal the shares sent, and the book equals a replay of the journal.
    sent = expected_shares([1, 2], FILLS_PER_SERVER)
    assert snapshot["totals"]["positions"] == sent
    replayed = recover(journal, None, DEFAULT_TICKERS)
    assert replayed.book.total_shares() == sent
    from_checkpoint = recover(journal, tmp_path / "journal.checkpoint", DEFAULT_TICKERS)
    assert from_checkpoint.book == replayed.book
    final = build_snapshot(replayed.book).to_body()
    for account, row in snapshot["accounts"].items():
        assert row["positions"] == final["accounts"][account]["positions"]
        assert row["value"] == final["accounts"][account]["value"]
    assert "recovered" in running.stderr


@pytest.mark.timeout(300)
def test_killing_and_restarting_peers_loses_and_duplicates_nothing(tmp_path):
    journal = tmp_path / "journal"
    controller, inputs, publish = start_controller(tmp_path, "0.3")

    def fillsim(*args):
        return Running(
            python_module(
                "fillsim",
                "--controller",
                inputs,
                "--acks",
                publish,
                "--source",
                "desk",
                "--sell-fraction",
                "0",
                *args,
            )
        )

    def positions():
        return Running(
            python_module("positions", "--controller", publish, "--format", "json", "--no-record")
        )

    procs = [
        Running(
            python_module(
                "aumsim", "--controller", inputs, "--acks", publish, "--count", "1", "--seed", "3"
            )
        ),
    ]
    try:
        viewer = positions()
        procs.append(viewer)
        killed = fillsim("--seed", "1", "--rate", "3000")
        procs.append(killed)
        wait_for(lambda: journal.exists() and len(journal_fills(journal)) > 3000, 60, "fills")
        killed.process.send_signal(signal.SIGKILL)
        killed.wait(10)
        stopped = fillsim("--seed", "2", "--rate", "3000")
        procs.append(stopped)
        viewer.process.send_signal(signal.SIGKILL)
        viewer.wait(10)
        before = len(journal_fills(journal))
        wait_for(lambda: len(journal_fills(journal)) > before + 3000, 60, "more fills")
        stopped.process.send_signal(signal.SIGTERM)
        assert stopped.wait(20) == 0
        viewer = positions()
        procs.append(viewer)

        def latest():
            import json

            lines = [json.loads(line) for line in viewer.out if line.startswith("{")]
            return lines[-1] if lines else None

        snapshot = wait_for(latest, 30, "a snapshot from the restarted position server")
    finally:
        controller.process.send_signal(signal.SIGTERM)
        assert controller.wait(30) == 0
        for each in procs:
            each.stop()

    fills = journal_fills(journal)
    assert len(fills) == len(set(fills))
    per_source = {}
    for source, seq in fills:
        per_source.setdefault(source, []).append(seq)
    assert len(per_source) == 2  # the restarted server has its own identity
    for seqs in per_source.values():
        assert seqs == list(range(1, len(seqs) + 1))  # no gap, no repeat
    # The stopped server waited for its acknowledgements: all it sent is in the journal.
    sent = int(re.search(r"stopping after (\d+) fills \(0 unacknowledged\)", stopped.stderr)[1])
    stopped_source = re.search(r"fill server (\S+) started", stopped.stderr)[1]
    assert len(per_source[stopped_source]) == sent
    book = recover(journal, None, DEFAULT_TICKERS).book
    assert snapshot["totals"]["positions"] == book.total_shares()
    assert snapshot["counts"]["fills"] == len(fills)
