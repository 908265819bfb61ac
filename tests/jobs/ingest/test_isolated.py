"""The export reader's process: items, state and errors cross over; it stops when told."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobs.ingest.isolated import BATCH, ChildStream
from worker.errors import BadInput, Transient


@dataclass
class Counted:
    seen: int = 0
    pid: int = 0
    notes: list[str] = field(default_factory=list)


def numbers(n: int, fail: str | None, state: Counted) -> Iterator[int]:
    state.pid = os.getpid()
    for i in range(n):
        state.seen = i + 1
        yield i
    state.notes.append("finished")
    if fail == "bad":
        raise BadInput("conversations.json: invalid JSON before byte 1,234")
    if fail == "bug":
        empty: dict[str, int] = {}
        empty["missing"] += 1  # a bug in the reader


def endless(state: Counted) -> Iterator[int]:
    state.pid = os.getpid()
    i = 0
    while True:
        i += 1
        yield i


def marking(path: str, state: Counted) -> Iterator[int]:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    yield 1


def pausing(state: Counted) -> Iterator[int]:
    state.pid = os.getpid()
    yield from range(BATCH)
    time.sleep(0.5)
    yield from range(BATCH, 2 * BATCH)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_items_and_state_come_from_another_process() -> None:
    n = BATCH * 3 + 5
    with ChildStream(numbers, (n, None), Counted()) as stream:
        assert list(stream) == list(range(n))
        assert stream.state.seen == n
        assert stream.state.notes == ["finished"]
        assert stream.state.pid not in (0, os.getpid())
        assert stream.peak_rss_kb is not None and stream.peak_rss_kb > 1000


def test_what_the_reader_raises_is_raised_here_after_its_items() -> None:
    with ChildStream(numbers, (10, "bad"), Counted()) as stream:
        got = []
        with pytest.raises(BadInput, match="invalid JSON before byte 1,234"):
            for item in stream:
                got.append(item)
        assert got == list(range(10))
        assert stream.state.notes == ["finished"]


def test_a_bug_in_the_reader_keeps_its_type_and_says_where() -> None:
    with ChildStream(numbers, (3, "bug"), Counted()) as stream, pytest.raises(KeyError) as err:
        list(stream)
    notes = "\n".join(getattr(err.value, "__notes__", []))
    assert "in the export reader" in notes
    assert "test_isolated.py" in notes


def test_a_reader_that_dies_is_a_transient_failure_not_a_hang() -> None:
    with ChildStream(endless, (), Counted()) as stream:
        next(stream)
        os.kill(stream.state.pid, signal.SIGKILL)
        with pytest.raises(Transient, match=r"export reader stopped unexpectedly.*SIGKILL"):
            for _ in stream:
                pass


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_shutdown_signal_to_the_process_group_leaves_the_reader_to_the_worker(
    sig: signal.Signals,
) -> None:
    with ChildStream(pausing, (), Counted()) as stream:
        assert next(stream) == 0
        os.kill(stream.state.pid, sig)
        assert list(stream) == list(range(1, 2 * BATCH))


def test_a_stream_never_read_starts_no_reader(tmp_path: Path) -> None:
    # The stage hands the stream to the write that reads it; a write that never
    # runs (the job lost its import first) must not leave a reader behind.
    marker = tmp_path / "started"
    stream = ChildStream(marking, (str(marker),), Counted())
    time.sleep(0.5)
    stream.close()
    assert not marker.exists()
    assert list(stream) == []

    with ChildStream(marking, (str(marker),), Counted()) as read:
        assert list(read) == [1]
    assert marker.exists()


def test_closing_stops_the_reader_and_wakes_a_waiting_consumer() -> None:
    stream = ChildStream(endless, (), Counted())
    next(stream)
    pid = stream.state.pid
    assert _alive(pid)
    stream.close()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(pid)
    # A consumer (the COPY's thread) left iterating ends instead of waiting forever.
    finished = threading.Event()

    def consume() -> None:
        for _ in stream:
            pass
        finished.set()

    threading.Thread(target=consume, daemon=True).start()
    assert finished.wait(5)
    stream.close()  # twice is harmless


SLOW_READER = """
import os, pathlib, time

# The reader's module as the fork server imports it: slowly, until told.
if os.getpid() != int(os.environ["OWNER_PID"]):
    while not pathlib.Path(os.environ["IMPORT_MAY_END"]).exists():
        time.sleep(0.01)


def produce(state):
    yield 1
"""

STARTING = """
import pathlib, sys, threading, time
from jobs.ingest import isolated
import slow_reader

events = []


def let_the_import_end():
    time.sleep(0.3)
    events.append("import ended")
    pathlib.Path(sys.argv[1]).touch()


threading.Thread(target=let_the_import_end).start()
isolated.start(slow_reader.produce)
events.append("start returned")
print(",".join(events))
"""


def test_starting_the_reader_returns_once_it_can_fork_a_reader(tmp_path: Path) -> None:
    # A worker starts its reader before it takes a job: a start that returns
    # while the server is still importing the reader's modules leaves that
    # work to compete with the worker's first imports.
    (tmp_path / "slow_reader.py").write_text(SLOW_READER)
    flag = tmp_path / "import-may-end"
    repo = Path(__file__).resolve().parents[3]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(repo)]),
        "OWNER_PID": "0",
        "IMPORT_MAY_END": str(flag),
    }
    script = "import os; os.environ['OWNER_PID'] = str(os.getpid())\n" + STARTING
    done = subprocess.run(
        [sys.executable, "-c", script, str(flag)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "import ended,start returned"
