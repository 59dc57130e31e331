"""Console storage: LogFiles (segments on disk) and LogBroker (seq, ring, frames)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.lowlevel

from manman.models import Line
from manman.worker.console.broker import (
    LogBroker,
    gap_frame,
    iter_frames,
    lines_frame,
)
from manman.worker.console.logfiles import LogFiles


def batch(first: int, n: int, text: str = "t") -> bytes:
    return msgspec.json.encode([Line(s, 1.0, "stdout", f"{text}{s}") for s in
                                range(first, first + n)])


def fill(files: LogFiles, batches: int, per: int = 3) -> None:
    """Append `batches` batches of `per` lines each, seq continuing from files.next_seq."""
    for _ in range(batches):
        first = files.next_seq
        files.append(first, batch(first, per), first + per)


def seqs(lines: list[Line]) -> list[int]:
    return [ln.seq for ln in lines]


def publish_n(b: LogBroker, batches: int, per: int = 1, stream: str = "stdout") -> None:
    for _ in range(batches):
        first = b.next_seq
        b.publish(stream, [f"line {s}" for s in range(first, first + per)], ts=1.5)


# == LogFiles ============================================================================


def test_empty_directory(tmp_path: Path) -> None:
    f = LogFiles(tmp_path / "log")
    assert (tmp_path / "log").is_dir()
    assert f.next_seq == 0 and f.first_seq() == 0
    assert f.segments() == []
    assert f.read(0, 100) == []


def test_append_and_read(tmp_path: Path) -> None:
    f = LogFiles(tmp_path)
    fill(f, 4, per=3)
    assert f.next_seq == 12
    lines = f.read(0, 1000)
    assert seqs(lines) == list(range(12))
    assert lines[5] == Line(5, 1.0, "stdout", "t5")
    f.close()


def test_segment_named_after_its_first_seq(tmp_path: Path) -> None:
    f = LogFiles(tmp_path)
    fill(f, 1)
    assert [(s, p.name) for s, p in f.segments()] == [(0, "console-" + "0" * 20 + ".jsonl")]
    f.close()


def test_foreign_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "console-abc.jsonl").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    f = LogFiles(tmp_path)
    assert f.segments() == [] and f.next_seq == 0
    fill(f, 2)
    assert seqs(f.read(0, 100)) == list(range(6))
    f.close()


def test_rotation_by_size_keeps_n_files(tmp_path: Path) -> None:
    f = LogFiles(tmp_path, max_bytes=1, keep=3)  # every batch fills a segment
    fill(f, 20, per=3)
    assert [s for s, _ in f.segments()] == [51, 54, 57]
    assert f.first_seq() == 51
    assert seqs(f.read(0, 1000)) == list(range(51, 60))
    f.close()


def test_segment_fills_up_to_max_bytes_before_rotating(tmp_path: Path) -> None:
    f = LogFiles(tmp_path, max_bytes=1000, keep=100)
    fill(f, 60, per=3)
    segs = f.segments()
    assert len(segs) > 3
    for _, path in segs[:-1]:
        data = path.read_bytes()
        last = data[:-1].rfind(b"\n") + 1
        assert len(data) >= 1000  # full before the next one is opened
        assert last < 1000  # ... and rotated as soon as it was
    assert seqs(f.read(0, 1000)) == list(range(180))
    f.close()


def test_keep_is_at_least_one(tmp_path: Path) -> None:
    f = LogFiles(tmp_path, max_bytes=1, keep=0)
    fill(f, 5)
    assert len(f.segments()) == 1
    assert seqs(f.read(0, 100)) == [12, 13, 14]
    f.close()


def test_one_batch_bigger_than_max_bytes_is_written_whole(tmp_path: Path) -> None:
    f = LogFiles(tmp_path, max_bytes=10, keep=10)
    fill(f, 3, per=50)
    assert len(f.segments()) == 3
    assert seqs(f.read(0, 1000)) == list(range(150))
    f.close()


@pytest.fixture
def rotated(tmp_path: Path) -> LogFiles:
    """60 lines, 3 per batch, 2 batches per segment, all segments kept."""
    one = len(batch(0, 3)) + 1
    f = LogFiles(tmp_path, max_bytes=one * 2, keep=100)
    fill(f, 20, per=3)
    assert [s for s, _ in f.segments()] == list(range(0, 60, 6))
    return f


@pytest.mark.parametrize("since", [0, 1, 2, 3, 5, 6, 7, 11, 12, 29, 30, 31, 53, 58, 59])
def test_read_since_across_segments(rotated: LogFiles, since: int) -> None:
    assert seqs(rotated.read(since, 1000)) == list(range(since, 60))
    rotated.close()


@pytest.mark.parametrize(("since", "limit"), [(0, 1), (4, 2), (5, 7), (10, 13), (17, 25),
                                               (57, 10), (0, 60)])
def test_read_limit(rotated: LogFiles, since: int, limit: int) -> None:
    assert seqs(rotated.read(since, limit)) == list(range(since, min(60, since + limit)))
    rotated.close()


def test_read_past_the_end_and_before_the_start(tmp_path: Path) -> None:
    one = len(batch(0, 3)) + 1
    f = LogFiles(tmp_path, max_bytes=one, keep=2)
    fill(f, 10, per=3)
    assert f.first_seq() == 24
    assert f.read(30, 10) == []
    assert f.read(1000, 10) == []
    # expired lines: you get what is still stored, from the oldest
    assert seqs(f.read(0, 100)) == list(range(24, 30))
    assert seqs(f.read(0, 2)) == [24, 25]
    f.close()


def test_read_limit_zero(rotated: LogFiles) -> None:
    assert rotated.read(0, 0) == []


def test_read_skips_a_batch_being_written(tmp_path: Path) -> None:
    f = LogFiles(tmp_path)
    fill(f, 2, per=3)
    f.close()
    path = f.segments()[-1][1]
    with path.open("ab") as fh:
        fh.write(batch(6, 3)[:-5])  # half a write: no newline yet
    assert seqs(f.read(0, 100)) == list(range(6))
    assert seqs(f.read(4, 100)) == [4, 5]


def test_reopen_continues_seq(tmp_path: Path) -> None:
    f = LogFiles(tmp_path)
    fill(f, 3, per=4)
    f.close()
    g = LogFiles(tmp_path)
    assert g.next_seq == 12
    fill(g, 1, per=4)
    assert len(g.segments()) == 1  # the newest segment is reopened, not replaced
    assert seqs(g.read(0, 100)) == list(range(16))
    g.close()


def test_reopen_after_rotation(tmp_path: Path) -> None:
    f = LogFiles(tmp_path, max_bytes=1, keep=3)
    fill(f, 7, per=3)
    f.close()
    g = LogFiles(tmp_path, max_bytes=1, keep=3)
    assert g.next_seq == 21
    assert g.first_seq() == 12
    fill(g, 3, per=3)
    assert [s for s, _ in g.segments()] == [21, 24, 27]
    assert seqs(g.read(0, 100)) == list(range(21, 30))
    g.close()


def test_reopen_full_newest_segment_starts_a_new_one(tmp_path: Path) -> None:
    one = len(batch(0, 3)) + 1
    f = LogFiles(tmp_path, max_bytes=one * 2, keep=10)
    fill(f, 2, per=3)  # segment 0 is now full
    f.close()
    g = LogFiles(tmp_path, max_bytes=one * 2, keep=10)
    fill(g, 1, per=3)
    assert [s for s, _ in g.segments()] == [0, 6]
    g.close()


@pytest.mark.parametrize("garbage", [
    b'[{"seq":12,"ts":1.0,"str',   # a torn write
    b"\x00\x00\x00",              # zeroes from a crash
    b"[]",                        # an empty, unterminated batch
])
def test_torn_last_line_is_cut_and_seq_continues(tmp_path: Path, garbage: bytes) -> None:
    f = LogFiles(tmp_path)
    fill(f, 4, per=3)
    f.close()
    path = f.segments()[-1][1]
    good = path.read_bytes()
    with path.open("ab") as fh:
        fh.write(garbage)
    g = LogFiles(tmp_path)
    assert g.next_seq == 12
    assert path.read_bytes() == good  # truncated back to the last whole batch
    fill(g, 1, per=3)
    assert seqs(g.read(0, 100)) == list(range(15))
    g.close()


def test_undecodable_complete_last_line_is_cut(tmp_path: Path) -> None:
    f = LogFiles(tmp_path)
    fill(f, 2, per=3)
    f.close()
    path = f.segments()[-1][1]
    good = path.read_bytes()
    with path.open("ab") as fh:
        fh.write(b"not json\n[]\n")
    g = LogFiles(tmp_path)
    assert g.next_seq == 6
    assert path.read_bytes() == good
    g.close()


def test_newest_segment_all_garbage(tmp_path: Path) -> None:
    one = len(batch(0, 3)) + 1
    f = LogFiles(tmp_path, max_bytes=one, keep=10)
    fill(f, 3, per=3)
    f.close()
    # the newest segment was just created for seq 9 when the worker died mid-write
    torn = tmp_path / f"console-{9:020d}.jsonl"
    torn.write_bytes(b'[{"seq":9,"ts":1.0')
    g = LogFiles(tmp_path, max_bytes=one, keep=10)
    assert g.next_seq == 9
    fill(g, 1, per=3)
    assert seqs(g.read(0, 100)) == list(range(12))
    g.close()


def test_empty_newest_segment(tmp_path: Path) -> None:
    f = LogFiles(tmp_path)
    fill(f, 2, per=3)
    f.close()
    (tmp_path / f"console-{6:020d}.jsonl").write_bytes(b"")
    g = LogFiles(tmp_path)
    assert g.next_seq == 6
    g.close()


def test_recovery_of_a_last_line_longer_than_the_tail_window(tmp_path: Path) -> None:
    f = LogFiles(tmp_path)
    fill(f, 1, per=3)
    big = msgspec.json.encode([Line(3, 1.0, "stdout", "x" * 300_000)])
    f.append(3, big, 4)
    f.close()
    path = f.segments()[-1][1]
    with path.open("ab") as fh:
        fh.write(b'[{"seq":4')
    g = LogFiles(tmp_path)
    assert g.next_seq == 4
    assert seqs(g.read(0, 10)) == [0, 1, 2, 3]
    g.close()


# == LogBroker ===========================================================================


def test_publish_seq_strictly_plus_one(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    b.publish("stdout", ["a", "b", "c"], ts=1.0)
    b.note("manman says")
    b.publish("stderr", ["d"], ts=2.0)
    b.publish("install", [], ts=3.0)  # nothing published, no seq used
    b.publish("install", ["e", "f"], ts=3.0)
    assert b.next_seq == 7
    lines = b.ring_lines_from(0, 100)
    assert seqs(lines) == list(range(7))
    assert [ln.stream for ln in lines] == ["stdout"] * 3 + ["manman", "stderr", "install",
                                                             "install"]
    assert [ln.text for ln in lines] == ["a", "b", "c", "manman says", "d", "e", "f"]
    assert b.lines_total == 7
    b.close()


def test_publish_stamps_time(tmp_path: Path) -> None:
    import time

    b = LogBroker(tmp_path)
    before = time.time()
    b.publish("stdout", ["x"])
    (line,) = b.ring_lines_from(0, 1)
    assert before <= line.ts <= time.time()
    b.close()


def test_publish_writes_to_disk_at_once(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 3, per=2)
    # another reader (e.g. after a crash) sees everything published
    assert seqs(LogFiles(tmp_path).read(0, 100)) == list(range(6))
    b.close()


def test_seq_survives_restart(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 5, per=2)
    b.close()
    b2 = LogBroker(tmp_path)
    assert b2.next_seq == 10
    assert b2.ring_first_seq == 10 and not b2.ring
    b2.publish("stdout", ["after"], ts=1.0)
    assert seqs(b2.files.read(0, 100)) == list(range(11))
    b2.close()


def test_seq_survives_restart_with_torn_write(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 5, per=2)
    b.close()
    path = b.files.segments()[-1][1]
    with path.open("ab") as fh:
        fh.write(b'[{"seq":10,"ts":1.5,"stream":"stdout","te')
    b2 = LogBroker(tmp_path)
    assert b2.next_seq == 10
    b2.publish("stdout", ["after"], ts=1.0)
    lines = b2.files.read(0, 100)
    assert seqs(lines) == list(range(11))
    assert lines[-1].text == "after"
    b2.close()


def test_ring_trimming_keeps_at_least_ring_bytes(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=1000)
    publish_n(b, 300, per=3)
    assert b.next_seq == 900
    assert b.ring_size == sum(len(x.payload) for x in b.ring)
    # whole batches: at least ring_bytes of JSON, and not one batch more than needed
    largest = max(len(x.payload) for x in b.ring)
    assert 1000 <= b.ring_size < 1000 + largest
    assert b.ring_first_seq == 900 - sum(x.count for x in b.ring)
    assert b.first_seq == 0  # the files still have it all
    b.close()


def test_ring_keeps_a_batch_larger_than_ring_bytes(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=5)
    publish_n(b, 3, per=2)
    b.publish("stdout", [str(i) for i in range(50)], ts=1.5)
    assert len(b.ring) == 1 and b.ring[0].count == 50
    assert b.ring_first_seq == 6
    b.close()


# -- frames -------------------------------------------------------------------------------


def assert_lines_frame(frame: str) -> list[dict[str, object]]:
    """A frame in the exact protocol shape; its lines."""
    obj = json.loads(frame)
    assert list(obj) == ["type", "lines"] and obj["type"] == "lines"
    assert isinstance(obj["lines"], list) and obj["lines"]
    for ln in obj["lines"]:
        assert list(ln) == ["seq", "ts", "stream", "text"]
        assert isinstance(ln["seq"], int) and isinstance(ln["ts"], float)
        assert ln["stream"] in ("stdout", "stderr", "install", "manman")
        assert isinstance(ln["text"], str)
    got = [ln["seq"] for ln in obj["lines"]]
    assert got == list(range(got[0], got[0] + len(got)))
    return obj["lines"]


def drain(b: LogBroker, cursor: int, max_chars: int = 1 << 20) -> tuple[list[int], list[str]]:
    """Take frames from `cursor` to the end; the seqs seen and the frames."""
    got: list[int] = []
    frames: list[str] = []
    while True:
        frame, new = b.take(cursor, max_chars)
        if frame is None:
            assert new == cursor
            return got, frames
        lines = assert_lines_frame(frame)
        assert lines[0]["seq"] == cursor
        assert new == cursor + len(lines)
        got.extend(int(ln["seq"]) for ln in lines)  # type: ignore[call-overload]
        frames.append(frame)
        cursor = new


def test_frame_shape_and_content(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    b.publish("stderr", ['quote " backslash \\ ünïcödé', "\x1b[31mred"], ts=1764280000.123)
    frame, cursor = b.take(0)
    assert frame is not None and cursor == 2
    assert json.loads(frame) == {"type": "lines", "lines": [
        {"seq": 0, "ts": 1764280000.123, "stream": "stderr",
         "text": 'quote " backslash \\ ünïcödé'},
        {"seq": 1, "ts": 1764280000.123, "stream": "stderr", "text": "\x1b[31mred"},
    ]}
    assert_lines_frame(frame)
    b.close()


def test_take_whole_last_batch_reuses_the_cached_frame(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 3, per=4)
    last = b.ring[-1]
    f1, c1 = b.take(last.first_seq)
    f2, c2 = b.take(last.first_seq)
    assert f1 is not None and f1 is f2  # encoded once, shared by every viewer
    assert c1 == c2 == 12
    assert last.frame is f1
    b.close()


def test_take_from_an_older_batch_joins_the_rest(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 5, per=3)
    frame, cursor = b.take(3)
    assert frame is not None and cursor == 15
    assert [ln["seq"] for ln in assert_lines_frame(frame)] == list(range(3, 15))
    b.close()


@pytest.mark.parametrize("cursor", range(15))
def test_take_mid_batch_resume(tmp_path: Path, cursor: int) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 5, per=3)
    got, frames = drain(b, cursor)
    assert got == list(range(cursor, 15))
    assert len(frames) == 1
    b.close()


def test_take_at_the_end_or_behind_the_ring(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=220)
    assert b.take(0) == (None, 0)  # nothing yet
    publish_n(b, 10, per=2)
    assert b.take(20) == (None, 20)
    assert b.take(25) == (None, 25)
    assert b.ring_first_seq > 0
    assert b.take(0) == (None, 0)  # behind the ring: the caller reports a gap
    frame, cursor = b.take(b.ring_first_seq)
    assert frame is not None and cursor == 20
    b.close()


def test_take_max_chars_splits_frames(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 40, per=2)
    one = len(b.ring[0].payload)
    got, frames = drain(b, 0, max_chars=one * 5)
    assert got == list(range(80))
    assert len(frames) >= 8
    overhead = len('{"type":"lines","lines":}')
    for frame in frames:
        assert len(frame) <= one * 5 + overhead
    b.close()


def test_take_max_chars_mid_batch(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 40, per=2)
    one = len(b.ring[0].payload)
    got, frames = drain(b, 3, max_chars=one * 3)
    assert got == list(range(3, 80))
    assert len(frames) > 1
    b.close()


def test_take_batch_bigger_than_max_chars_is_sent_whole(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    b.publish("stdout", ["x" * 1000] * 3, ts=1.0)
    b.publish("stdout", ["y"], ts=1.0)
    frame, cursor = b.take(0, max_chars=100)
    assert frame is not None and cursor == 3
    assert frame is b.ring[0].lines_frame()
    got, _ = drain(b, 0, max_chars=100)
    assert got == [0, 1, 2, 3]
    b.close()


def test_take_many_viewers_random_cursors(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=2750)
    for i in range(60):
        b.publish("stdout", [f"{i}-{j}" for j in range(i % 4 + 1)], ts=float(i))
    start = b.ring_first_seq
    for cursor in range(start, b.next_seq + 1):
        for max_chars in (1, 200, 1 << 20):
            got, _ = drain(b, cursor, max_chars)
            assert got == list(range(cursor, b.next_seq))
    b.close()


def test_lines_frame_gap_frame_and_iter_frames() -> None:
    lines = [Line(i, 2.5, "stdout", f"l{i}") for i in range(5)]
    assert json.loads(lines_frame(lines)) == {"type": "lines", "lines": [
        {"seq": i, "ts": 2.5, "stream": "stdout", "text": f"l{i}"} for i in range(5)]}
    assert json.loads(gap_frame(3, 9, "slow_consumer")) == {
        "type": "gap", "from_seq": 3, "to_seq": 9, "reason": "slow_consumer"}
    frames = list(iter_frames(lines, per_frame=2))
    assert [[ln["seq"] for ln in assert_lines_frame(f)] for f in frames] == [[0, 1], [2, 3],
                                                                             [4]]
    assert list(iter_frames([], per_frame=2)) == []


def test_set_state_frame(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    assert json.loads(b.state_frame) == {"type": "state", "state": "created"}
    b.set_state({"state": "running", "ready": True, "pid": 123, "exit_code": None,
                 "restarts": 0, "install_progress": None})
    assert b.state_version == 1
    assert json.loads(b.state_frame) == {
        "type": "state", "state": "running", "ready": True, "pid": 123, "exit_code": None,
        "restarts": 0, "install_progress": None}
    b.close()


# -- history (async) ----------------------------------------------------------------------


async def test_history_from_ring(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=55000)
    publish_n(b, 10, per=3)
    assert seqs(await b.history(0, 1000)) == list(range(30))
    assert seqs(await b.history(7, 5)) == list(range(7, 12))
    assert seqs(await b.history(-5, 2)) == [0, 1]
    assert await b.history(30, 10) == []
    assert await b.history(99, 10) == []
    b.close()


async def test_history_in_the_ring_does_not_touch_the_files(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=55000)
    publish_n(b, 4, per=3)
    b.close()
    for _, path in b.files.segments():
        path.unlink()  # the ring alone must answer
    assert seqs(await b.history(b.ring_first_seq, 100)) == list(range(12))


async def test_history_from_files_when_behind_the_ring(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=330)
    publish_n(b, 10, per=3)
    assert b.ring_first_seq > 0
    lines = await b.history(0, 1000)
    assert seqs(lines) == list(range(30))
    assert lines[4].text == "line 4" and lines[4].ts == 1.5
    assert seqs(await b.history(2, 4)) == [2, 3, 4, 5]
    b.close()


async def test_history_ring_and_files_agree(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=55000)
    publish_n(b, 10, per=3)
    assert await b.history(4, 9) == b.files.read(4, 9)
    b.close()


async def test_history_after_restart_comes_from_files(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 4, per=3)
    b.close()
    b2 = LogBroker(tmp_path)
    assert seqs(await b2.history(5, 100)) == list(range(5, 12))
    b2.publish("stdout", ["new"], ts=1.0)
    assert seqs(await b2.history(10, 100)) == [10, 11, 12]
    assert seqs(await b2.tail(4)) == [9, 10, 11, 12]
    b2.close()


async def test_history_after_rotation_expired_lines(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=165, file_bytes=200, files_keep=2)
    publish_n(b, 30, per=2)
    first = b.first_seq
    assert first > 0
    assert seqs(await b.history(0, 1000)) == list(range(first, 60))
    assert seqs(await b.tail(1000)) == list(range(first, 60))
    b.close()


async def test_tail(tmp_path: Path) -> None:
    b = LogBroker(tmp_path, ring_bytes=275)
    assert await b.tail(10) == []
    publish_n(b, 10, per=2)
    assert seqs(await b.tail(3)) == [17, 18, 19]
    assert seqs(await b.tail(12)) == list(range(8, 20))  # part of it from the files
    assert seqs(await b.tail(100)) == list(range(20))
    assert await b.tail(0) == []
    b.close()


async def test_wait_wakes_on_publish_and_state(tmp_path: Path) -> None:
    b = LogBroker(tmp_path)
    publish_n(b, 1)
    with trio.fail_after(2):
        await b.wait(0, b.state_version)  # already a line at cursor 0: no wait

        async def later_publish() -> None:
            await trio.lowlevel.checkpoint()
            b.publish("stdout", ["x"], ts=1.0)

        async with trio.open_nursery() as n:
            n.start_soon(later_publish)
            await b.wait(1, b.state_version)
        assert b.next_seq == 2

        async def later_state() -> None:
            await trio.lowlevel.checkpoint()
            b.set_state({"state": "stopped"})

        async with trio.open_nursery() as n:
            n.start_soon(later_state)
            await b.wait(2, b.state_version)
    b.close()


# == a full disk ==========================================================================


def _stored_lines_are_whole(files: LogFiles) -> None:
    for _, path in files.segments():
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), "a batch was left half-written"
        for raw in data.splitlines():
            msgspec.json.decode(raw, type=list[Line])


def test_full_disk_stores_a_batch_whole_or_not_at_all(tiny_disk: Any) -> None:
    files = LogFiles(tiny_disk.path / "console")
    fill(files, 5, per=3)
    tiny_disk.fill()
    big = 200  # a batch larger than what is left: the write is short, then cut back
    for _ in range(3):
        first = files.next_seq
        files.append(first, batch(first, big, "x" * 100), first + big)
    assert files.write_errors == 3
    _stored_lines_are_whole(files)
    tiny_disk.free()
    fill(files, 2, per=3)  # space is back: the next batches are stored, not glued to a half
    _stored_lines_are_whole(files)
    lines = files.read(0, 10_000)
    assert seqs(lines) == [*range(15), *range(615, 621)]  # the lost batches are a gap
    files.close()


def test_seq_never_goes_back_after_a_crash_on_a_full_disk(tiny_disk: Any) -> None:
    directory = tiny_disk.path / "console"
    files = LogFiles(directory)
    fill(files, 5, per=3)
    tiny_disk.fill()
    for _ in range(4):  # viewers saw these from the ring; the disk took none of them
        first = files.next_seq
        files.append(first, batch(first, 50, "y" * 100), first + 50)
    published = files.next_seq
    assert published == 215
    # a SIGKILL: nothing closed; the disk is still full at the restart
    again = LogFiles(directory)
    assert again.next_seq == published
    tiny_disk.free()
    fill(again, 1, per=3)
    assert seqs(again.read(0, 1000)) == [*range(15), 215, 216, 217]
    again.close()
    files.close()


def test_a_damaged_line_in_the_middle_is_skipped(tmp_path: Path) -> None:
    f = LogFiles(tmp_path)
    fill(f, 2, per=3)
    f.close()
    path = f.segments()[-1][1]
    # an older version's torn write: half a batch glued to the next whole one
    with path.open("ab") as fh:
        fh.write(batch(6, 3)[:20] + batch(9, 3) + b"\n")
        fh.write(b"not json at all\n")
        fh.write(batch(12, 3) + b"\n")
    g = LogFiles(tmp_path)
    assert g.next_seq == 15
    fill(g, 1, per=3)
    assert seqs(g.read(0, 100)) == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17]
    assert seqs(g.read(7, 100)) == [12, 13, 14, 15, 16, 17]
    assert g.damaged_lines == 4
    g.close()


def test_a_servers_console_files_hold_one_descriptor(tmp_path: Path) -> None:
    # a worker with hundreds of servers must not spend a descriptor per server on the mark
    before = len(os.listdir("/proc/self/fd"))
    files = LogFiles(tmp_path, max_bytes=1 << 20, keep=2)
    files.append(0, b'[{"seq":0,"ts":1.0,"stream":"stdout","text":"a"}]', 1)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    assert (tmp_path / "seq-mark").stat().st_size == 21  # made at its full size up front
    files.close()
    assert len(os.listdir("/proc/self/fd")) == before
