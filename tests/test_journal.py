"""Tests for controller.journal: records, pre-allocated space and its zero tail, torn tails,
corruption, checkpoints, sync policy."""

from __future__ import annotations

import os
import struct
import zlib

import msgpack
import pytest

from controller import journal as journal_module
from controller.journal import (
    CHECKPOINT_MAGIC,
    HEADER,
    PAGE_BYTES,
    RECORD_HEADER,
    Checkpoint,
    JournalCorrupt,
    JournalWriter,
    reaches,
    read_checkpoint,
    read_header,
    read_records,
    records_end,
    records_start,
    write_checkpoint,
)

RECORDS = [
    ["F", "fills-1", 1, "AAPL", 187_250_000, 100],
    ["S", "aum", 1, {"a": 60.0, "b": 40.0}],
    ["R", "fills-1", 2, "unknown ticker 'NOPE'"],
    ["F", "fills-2", 1, "MSFT", 1, 10_000_000_000],
]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def encoded(record) -> bytes:
    """One record as the writer lays it out on disk."""
    payload = msgpack.packb(record, use_bin_type=True)
    return RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def write_journal(path, records=RECORDS) -> list[int]:
    """Write `records` one commit each; return the end offset of each."""
    writer = JournalWriter(path)
    ends = []
    for record in records:
        writer.append(record)
        ends.append(writer.commit())
    writer.close()
    return ends


def test_records_are_read_back_with_their_end_offsets(tmp_path):
    path = tmp_path / "j"
    ends = write_journal(path)
    assert ends[0] == records_start(path) + len(encoded(RECORDS[0]))
    assert ends[-1] == path.stat().st_size
    assert list(read_records(path)) == list(zip(ends, RECORDS, strict=True))


def test_a_batch_is_one_commit_and_offsets_match(tmp_path):
    path = tmp_path / "j"
    writer = JournalWriter(path)
    start = records_start(path)
    assert writer.offset == start == path.stat().st_size
    for record in RECORDS:
        writer.append(record)
    assert path.stat().st_size == start  # nothing written before commit
    end = writer.commit()
    writer.close()
    assert end == path.stat().st_size == start + sum(len(encoded(r)) for r in RECORDS)
    assert path.read_bytes()[start:] == b"".join(encoded(r) for r in RECORDS)
    assert path.read_bytes().startswith(HEADER)
    assert [r for _, r in read_records(path)] == RECORDS


def test_reading_from_an_offset_skips_what_is_before_it(tmp_path):
    path = tmp_path / "j"
    ends = write_journal(path)
    assert list(read_records(path, ends[1])) == list(zip(ends[2:], RECORDS[2:], strict=True))
    assert list(read_records(path, ends[-1])) == []


def test_reopening_appends_after_the_existing_records(tmp_path):
    path = tmp_path / "j"
    ends = write_journal(path, RECORDS[:2])
    writer = JournalWriter(path)
    assert writer.offset == ends[-1]
    writer.append(RECORDS[2])
    end = writer.commit()
    writer.close()
    assert path.read_bytes().count(HEADER) == 1
    assert list(read_records(path)) == [*zip(ends, RECORDS[:2], strict=True), (end, RECORDS[2])]


def test_missing_journal_reads_as_empty(tmp_path):
    assert list(read_records(tmp_path / "nothing")) == []


# -- torn tails ----------------------------------------------------------------------------
def _partial_header(tail: bytes) -> bytes:
    return tail[:5]


def _payload_cut_short(tail: bytes) -> bytes:
    return tail[:-3]


def _bad_checksum(tail: bytes) -> bytes:
    damaged = bytearray(tail)
    damaged[-1] ^= 0xFF
    return bytes(damaged)


def _zero_filled(tail: bytes) -> bytes:
    return bytes(4096)


def _zeroed_payload(tail: bytes) -> bytes:
    # The header made it to disk, the payload did not (the file was extended with zeros).
    return tail[: RECORD_HEADER.size] + bytes(len(tail) - RECORD_HEADER.size)


@pytest.mark.parametrize(
    "tear",
    [_partial_header, _payload_cut_short, _bad_checksum, _zero_filled, _zeroed_payload],
)
def test_a_torn_tail_is_cut_off_and_appends_work_after(tmp_path, tear):
    path = tmp_path / "j"
    ends = write_journal(path, RECORDS[:3])
    good = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(tear(encoded(RECORDS[3])))
    assert path.stat().st_size > good

    torn_size = path.stat().st_size
    # A plain read stops at the torn tail and leaves the file alone...
    assert list(read_records(path)) == list(zip(ends, RECORDS[:3], strict=True))
    assert path.stat().st_size == torn_size
    # ...a repairing read (start-up) cuts it off in place.
    assert list(read_records(path, repair=True)) == list(zip(ends, RECORDS[:3], strict=True))
    assert path.stat().st_size == good

    writer = JournalWriter(path)
    assert writer.offset == good
    writer.append(RECORDS[3])
    end = writer.commit()
    writer.close()
    assert end == good + len(encoded(RECORDS[3]))
    assert [r for _, r in read_records(path)] == RECORDS
    assert path.stat().st_size == end


def test_torn_tail_is_cut_even_when_reading_from_an_offset(tmp_path):
    path = tmp_path / "j"
    ends = write_journal(path, RECORDS[:2])
    with open(path, "ab") as handle:
        handle.write(encoded(RECORDS[2])[:-1])
    assert list(read_records(path, ends[0], repair=True)) == [(ends[1], RECORDS[1])]
    assert path.stat().st_size == ends[1]


def test_a_torn_header_is_cut_to_empty_and_rewritten(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(HEADER[:3])
    assert list(read_records(path)) == []
    assert path.stat().st_size == 3  # left alone without repair
    assert list(read_records(path, repair=True)) == []
    assert path.stat().st_size == 0
    ends = write_journal(path, RECORDS[:1])
    assert path.read_bytes().startswith(HEADER)
    assert list(read_records(path)) == [(ends[0], RECORDS[0])]


@pytest.mark.parametrize("damaged", [0, 1, 2])
def test_a_corrupt_record_before_good_ones_raises_naming_its_offset(tmp_path, damaged):
    path = tmp_path / "j"
    ends = write_journal(path)
    start = records_start(path) if damaged == 0 else ends[damaged - 1]
    data = bytearray(path.read_bytes())
    data[start + RECORD_HEADER.size + 1] ^= 0x01  # a payload byte of that record
    path.write_bytes(bytes(data))

    with pytest.raises(JournalCorrupt) as info:
        list(read_records(path, repair=True))
    message = str(info.value)
    assert f"corrupt record at offset {start}:" in message
    assert "checksum mismatch" in message
    assert str(path) in message
    assert path.read_bytes() == bytes(data)  # nothing was cut off, even with repair


def test_records_before_the_corruption_are_yielded_first(tmp_path):
    path = tmp_path / "j"
    ends = write_journal(path)
    data = bytearray(path.read_bytes())
    data[ends[1] + RECORD_HEADER.size] ^= 0x40  # first payload byte of the third record
    path.write_bytes(bytes(data))
    seen = []
    with pytest.raises(JournalCorrupt, match=f"offset {ends[1]}:"):
        for item in read_records(path):
            seen.append(item)
    assert seen == list(zip(ends[:2], RECORDS[:2], strict=True))


def test_a_zero_length_record_before_data_is_corruption(tmp_path):
    path = tmp_path / "j"
    ends = write_journal(path, RECORDS[:1])
    with open(path, "ab") as handle:
        handle.write(RECORD_HEADER.pack(0, 0) + encoded(RECORDS[1]))
    with pytest.raises(JournalCorrupt, match=f"offset {ends[0]}: implausible record length 0"):
        list(read_records(path))


def test_a_corrupt_length_before_good_records_is_not_silently_cut_off(tmp_path):
    path = tmp_path / "j"
    write_journal(path)
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    start = records_start(path)
    data[start + 2] ^= 0x01  # length of the first record grows by 65536 bytes
    path.write_bytes(bytes(data))
    try:
        with pytest.raises(JournalCorrupt, match=f"offset {start}"):
            list(read_records(path, repair=True))
    finally:
        assert path.stat().st_size == size, "good records were truncated away"


def test_bad_magic_is_rejected(tmp_path):
    path = tmp_path / "j"
    write_journal(path)
    data = path.read_bytes()
    path.write_bytes(b"NOTAJNL" + data[7:])
    with pytest.raises(JournalCorrupt, match="bad magic at offset 0"):
        list(read_records(path, repair=True))
    assert path.read_bytes() == b"NOTAJNL" + data[7:]


def test_short_file_that_is_not_a_header_is_rejected(tmp_path):
    path = tmp_path / "j"
    path.write_bytes(b"xyz")
    with pytest.raises(JournalCorrupt, match="bad header"):
        list(read_records(path, repair=True))
    assert path.read_bytes() == b"xyz"


def test_unknown_format_version_is_rejected(tmp_path):
    path = tmp_path / "j"
    write_journal(path)
    data = bytearray(path.read_bytes())
    data[len(HEADER) - 1] = 99
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="version 99"):
        list(read_records(path))


# -- pre-allocated space and the zero tail --------------------------------------------------
CHUNK = 2 * PAGE_BYTES  # small chunks, so that a test crosses them
TORN = ["R", "fills-1", 3, "a record that does not end in a zero byte"]


def crashed_journal(path, records=RECORDS[:2]) -> list[int]:
    """Write `records`, one commit each, and die without closing: the zeros after the last
    record stay (the split, last by default, ends in zero bytes of its own: 40.0)."""
    writer = JournalWriter(path, preallocate=CHUNK)
    ends = []
    for record in records:
        writer.append(record)
        ends.append(writer.commit())
    writer.abandon()
    assert path.stat().st_size == CHUNK > ends[-1]
    return ends


def test_batches_are_written_in_place_into_zeros_allocated_a_chunk_at_a_time(tmp_path):
    path = tmp_path / "j"
    writer = JournalWriter(path, preallocate=CHUNK)
    start = writer.offset
    assert path.stat().st_size == start  # nothing allocated before there is something to write
    writer.append(RECORDS[0])
    end = writer.commit()
    data = path.read_bytes()
    assert len(data) == writer.allocated == CHUNK
    assert data[start:end] == encoded(RECORDS[0]) and not any(data[end:])
    big = ["R", "fills-1", 2, "r" * CHUNK]  # runs past the chunk: the next one is added
    writer.append(big)
    end = writer.commit()
    assert writer.allocated == path.stat().st_size == 2 * CHUNK
    assert not any(path.read_bytes()[end:])
    writer.close()
    assert path.stat().st_size == end  # a clean stop gives the zeros back
    assert [r for _, r in read_records(path)] == [RECORDS[0], big]


def test_the_records_end_where_the_zeros_start(tmp_path):
    path = tmp_path / "j"
    ends = crashed_journal(path)
    assert list(read_records(path)) == list(zip(ends, RECORDS[:2], strict=True))
    assert list(read_records(path, ends[-1])) == []
    assert records_end(path) == ends[-1]
    assert read_header(path, repair=True) is not None
    assert path.stat().st_size == CHUNK  # a plain read leaves the file alone


def test_a_journal_that_died_before_its_first_record_is_its_header_and_zeros(tmp_path):
    path = tmp_path / "j"
    writer = JournalWriter(path, preallocate=CHUNK)
    writer.append(RECORDS[0])
    writer._reserve(writer.offset + writer.buffered_bytes)  # allocated; then the crash
    writer.abandon()
    assert path.stat().st_size == CHUNK
    assert list(read_records(path)) == []
    assert records_end(path) == records_start(path)
    again = JournalWriter(path, preallocate=CHUNK)
    assert again.offset == records_start(path) and again.allocated == CHUNK
    again.append(RECORDS[0])
    again.close()
    assert [r for _, r in read_records(path)] == RECORDS[:1]


def test_a_restarted_writer_appends_after_the_last_record_not_after_the_zeros(tmp_path):
    path = tmp_path / "j"
    ends = crashed_journal(path)
    writer = JournalWriter(path, preallocate=CHUNK)
    assert writer.offset == ends[-1]
    assert writer.allocated == CHUNK  # the zeros are kept as pre-allocated space
    writer.append(RECORDS[2])
    end = writer.commit()
    assert end == ends[-1] + len(encoded(RECORDS[2]))
    assert path.stat().st_size == CHUNK
    writer.close()
    assert list(read_records(path)) == [*zip(ends, RECORDS[:2], strict=True), (end, RECORDS[2])]


def test_recovery_gives_the_zeros_back_and_the_writer_goes_on_from_the_last_record(tmp_path):
    path = tmp_path / "j"
    ends = crashed_journal(path)
    assert list(read_records(path, repair=True)) == list(zip(ends, RECORDS[:2], strict=True))
    assert path.stat().st_size == ends[-1]
    writer = JournalWriter(path, preallocate=CHUNK)
    assert writer.offset == ends[-1]
    writer.append(RECORDS[2])
    writer.close()
    assert [r for _, r in read_records(path)] == RECORDS[:3]


def test_a_last_record_that_ends_in_zero_bytes_is_not_cut_short(tmp_path):
    path = tmp_path / "j"
    ends = write_journal(path, RECORDS[:2])  # closed: the file ends with the split's 40.0
    assert path.read_bytes().endswith(bytes(6))
    assert records_end(path) == ends[-1] == path.stat().st_size
    assert list(read_records(path, repair=True)) == list(zip(ends, RECORDS[:2], strict=True))
    assert path.stat().st_size == ends[-1]
    writer = JournalWriter(path)
    assert writer.offset == ends[-1]
    writer.append(RECORDS[2])
    writer.close()
    assert [r for _, r in read_records(path)] == RECORDS[:3]


@pytest.mark.parametrize(
    "kept",
    [1, 5, RECORD_HEADER.size, RECORD_HEADER.size + 3, len(encoded(TORN)) - 1],
    ids=["a length byte", "the length and a checksum byte", "the header alone",
         "the header and a few bytes", "all but the last byte"],
)
def test_a_torn_record_before_the_zeros_is_cut_off(tmp_path, kept):
    """A power cut kept only the first `kept` bytes of a batch written in place: the rest
    of it reads as the zeros that were there."""
    path = tmp_path / "j"
    ends = crashed_journal(path)
    with open(path, "r+b") as handle:
        handle.seek(ends[-1])
        handle.write(encoded(TORN)[:kept])
    damaged = path.read_bytes()
    assert list(read_records(path)) == list(zip(ends, RECORDS[:2], strict=True))
    assert records_end(path) == ends[-1]
    assert path.read_bytes() == damaged  # left alone without repair
    assert list(read_records(path, repair=True)) == list(zip(ends, RECORDS[:2], strict=True))
    assert path.stat().st_size == ends[-1]
    writer = JournalWriter(path)
    writer.append(TORN)
    writer.close()
    assert [r for _, r in read_records(path)] == [*RECORDS[:2], TORN]


def test_a_writer_opened_without_recovery_cuts_a_torn_record_before_the_zeros(tmp_path):
    path = tmp_path / "j"
    ends = crashed_journal(path)
    with open(path, "r+b") as handle:
        handle.seek(ends[-1])
        handle.write(encoded(TORN)[:-1])
    writer = JournalWriter(path, preallocate=CHUNK)
    assert writer.offset == ends[-1] == path.stat().st_size
    writer.append(RECORDS[2])
    writer.close()
    assert [r for _, r in read_records(path)] == RECORDS[:3]


def test_damage_with_good_records_after_it_is_corruption_even_before_zeros(tmp_path):
    path = tmp_path / "j"
    ends = crashed_journal(path, RECORDS)
    data = bytearray(path.read_bytes())
    data[ends[0] + RECORD_HEADER.size + 1] ^= 0x01  # a payload byte of the second record
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match=f"offset {ends[0]}: checksum mismatch"):
        list(read_records(path, repair=True))
    assert path.read_bytes() == bytes(data)


def test_a_zero_length_record_with_records_after_it_is_corruption(tmp_path):
    path = tmp_path / "j"
    ends = crashed_journal(path)
    with open(path, "r+b") as handle:  # a hole, then a record: not a tail
        handle.seek(ends[-1] + RECORD_HEADER.size)
        handle.write(encoded(RECORDS[2]))
    with pytest.raises(JournalCorrupt, match=f"offset {ends[-1]}: implausible record length 0"):
        list(read_records(path, repair=True))


def test_reaches_tells_the_last_record_from_the_zero_tail(tmp_path):
    """A checkpoint's offset must be within the records: the end of the file no longer says
    where they end, and the last record may itself end in zero bytes."""
    path = tmp_path / "j"
    ends = crashed_journal(path)
    assert reaches(path, ends[0]) and reaches(path, ends[1])
    for inside_the_zeros in (ends[1] + 1, ends[1] + RECORD_HEADER.size, CHUNK):
        assert not reaches(path, inside_the_zeros)
    assert not reaches(path, ends[1] - 3)  # among the split's own zero bytes: no record ends
    assert not reaches(path, CHUNK + 1)
    assert not reaches(tmp_path / "absent", ends[0])


# -- checkpoints ---------------------------------------------------------------------------
STATE = {
    "book": {"values": [str(10**30), "0"], "positions": [{"AAPL": 3}, {}]},
    "last_seq": {"fills-1": 12, "aum": 3},
}


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "ckp"
    write_checkpoint(path, "journal-a", 1234, STATE)
    assert read_checkpoint(path) == Checkpoint("journal-a", 1234, STATE)
    assert not (tmp_path / "ckp.tmp").exists()
    # A newer checkpoint replaces the old one.
    write_checkpoint(path, "journal-a", 5678, {"x": 1})
    assert read_checkpoint(path) == Checkpoint("journal-a", 5678, {"x": 1})


def test_missing_checkpoint_is_none(tmp_path):
    assert read_checkpoint(tmp_path / "none") is None


def _flip_payload(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(CHECKPOINT_MAGIC) + RECORD_HEADER.size + 3] ^= 0x01
    return bytes(damaged)


def _cut_short(data: bytes) -> bytes:
    return data[:-1]


def _bad_magic(data: bytes) -> bytes:
    return b"X" + data[1:]


def _header_only(data: bytes) -> bytes:
    return data[: len(CHECKPOINT_MAGIC) + 2]


def _empty(data: bytes) -> bytes:
    return b""


def _bad_crc(data: bytes) -> bytes:
    length, crc = RECORD_HEADER.unpack_from(data, len(CHECKPOINT_MAGIC))
    head = CHECKPOINT_MAGIC + struct.pack("<II", length, crc ^ 1)
    return head + data[len(head) :]


@pytest.mark.parametrize(
    "damage", [_flip_payload, _cut_short, _bad_magic, _header_only, _empty, _bad_crc]
)
def test_damaged_checkpoint_reads_as_none(tmp_path, damage):
    path = tmp_path / "ckp"
    write_checkpoint(path, "journal-a", 99, STATE)
    path.write_bytes(damage(path.read_bytes()))
    assert read_checkpoint(path) is None


# -- sync policy ---------------------------------------------------------------------------
@pytest.fixture
def syncs(monkeypatch):
    """Record each os.fsync ("fsync") and os.fdatasync ("fdatasync") call (they still happen):
    a batch is synced with fdatasync, pre-allocated space once with fsync."""
    calls = []

    def counting(name, real):
        def call(fd):
            calls.append(name)
            real(fd)

        return call

    monkeypatch.setattr(journal_module.os, "fsync", counting("fsync", os.fsync))
    monkeypatch.setattr(journal_module.os, "fdatasync", counting("fdatasync", os.fdatasync))
    return calls


def test_fsync_always_syncs_every_commit_with_data(tmp_path, syncs):
    writer = JournalWriter(tmp_path / "j", fsync="always")
    syncs.clear()  # creating the file synced its header
    writer.append(RECORDS[0])
    writer.commit()
    assert syncs == ["fsync", "fdatasync"]  # the first chunk pre-allocated, then the batch
    writer.commit()  # nothing new
    assert syncs == ["fsync", "fdatasync"]
    writer.append(RECORDS[1])
    writer.append(RECORDS[2])
    writer.commit()  # one batch, one sync, into space already there
    assert syncs == ["fsync", "fdatasync", "fdatasync"]
    writer.close()  # nothing left to sync; the zero tail is cut off, and that is synced
    assert syncs == ["fsync", "fdatasync", "fdatasync", "fsync"]


def test_fsync_interval_syncs_only_when_the_interval_has_passed(tmp_path, syncs):
    clock = Clock()
    path = tmp_path / "j"
    writer = JournalWriter(path, fsync="interval", fsync_interval=1.0, clock=clock)
    writer.append(RECORDS[0])
    end = writer.commit()  # pre-allocating synced the file (and nothing was in it yet)
    syncs.clear()
    assert [r for _, r in read_records(path)] == RECORDS[:1]  # written, though not synced
    assert writer.offset == end

    clock.now += 0.5
    writer.append(RECORDS[1])
    writer.commit()
    assert syncs == []

    clock.now += 0.49
    writer.commit()
    assert syncs == []

    clock.now += 0.01  # exactly the interval since the last sync
    writer.commit()
    assert syncs == ["fdatasync"]

    clock.now += 5.0
    writer.commit()  # nothing unsynced, so no sync however long it has been
    assert syncs == ["fdatasync"]

    writer.append(RECORDS[2])
    writer.commit()  # long since the last sync... but the clock counts from the last sync
    assert syncs == ["fdatasync"] * 2

    writer.append(RECORDS[3])
    writer.commit()  # right after a sync
    assert syncs == ["fdatasync"] * 2
    writer.close()  # close syncs what is left, then cuts off the zero tail
    assert syncs == ["fdatasync"] * 3 + ["fsync"]
    assert [r for _, r in read_records(path)] == RECORDS


def test_fsync_interval_counts_from_the_last_sync(tmp_path, syncs):
    clock = Clock()
    writer = JournalWriter(tmp_path / "j", fsync="interval", fsync_interval=2.0, clock=clock)
    writer.append(RECORDS[0])
    writer.commit()  # t=1000, when the writer started: the interval counts from there
    syncs.clear()
    clock.now += 3.0
    writer.append(RECORDS[1])
    writer.commit()
    assert syncs == ["fdatasync"]  # synced at t=1003
    clock.now += 1.5
    writer.append(RECORDS[2])
    writer.commit()
    assert syncs == ["fdatasync"]  # 1.5 s since the last sync
    clock.now += 0.5
    writer.commit()
    assert syncs == ["fdatasync"] * 2
    writer.close()
    assert syncs == ["fdatasync"] * 2 + ["fsync"]  # nothing left to sync; the tail cut


def test_invalid_fsync_policy_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="fsync policy"):
        JournalWriter(tmp_path / "j", fsync="sometimes")
    assert not (tmp_path / "j").exists()


@pytest.mark.parametrize("size", [0, PAGE_BYTES - 1, PAGE_BYTES + 1])
def test_preallocation_is_in_whole_pages(tmp_path, size):
    with pytest.raises(ValueError, match="multiple of 4096"):
        JournalWriter(tmp_path / "j", preallocate=size)
    assert not (tmp_path / "j").exists()
