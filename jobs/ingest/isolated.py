"""Reading an export in a process of its own.

Parsing a large export takes seconds to minutes of CPU. In a thread it holds the
worker's interpreter lock the whole time, so everything else the worker does
meanwhile (the COPY that takes the rows, other imports' model calls,
heartbeats) waits for it; and an export that outgrows the guards grows the
worker's own memory. :class:`ChildStream` runs the generator in a child
process instead. The child sends what it yields in pickled batches over
a pipe, each with a snapshot of a state object (the reader's statistics), and
the parent iterates the items as if the generator ran here, while the child
parses ahead on the other core.

Children fork from a server process that has the reader's modules imported
already, so starting one costs milliseconds and nothing of the worker (its
event loop, connections, threads) is copied into it.

What the generator raises in the child is raised by the parent's iteration (a
:class:`BadInput` stays one). A child that dies without a word (killed, out of
memory) raises :class:`Transient`: the stage is retried, then fails with that
message. :meth:`ChildStream.close` kills the child; a child whose parent is
gone dies at its next send, when the pipe breaks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import pickle
import queue
import resource
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, Final, Generic, TypeVar

from worker.errors import FullpassError, Transient

T = TypeVar("T")
S = TypeVar("S")

#: Items in one message on the pipe.
BATCH: Final = 128
#: Messages read ahead of the consumer: bounds what the parent holds.
READ_AHEAD: Final = 8
#: How long a starting worker waits for the reader's server to be ready.
START_SECONDS: Final = 60.0

_lock = threading.Lock()
_context: ForkServerContext | None = None


def _fork_server(preload: str) -> ForkServerContext:
    """The fork server's context (started on first use, with ``preload`` imported)."""
    global _context
    with _lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["__main__", preload, *_main_module()])
            _context = context
        return _context


def _main_module() -> list[str]:
    """The main module's name when it ran with ``-m``: imported once in the server.

    Every child runs the main module again (as ``__mp_main__``). A main
    module given as a file is skipped once the server has imported it
    (``"__main__"`` in the preload list); one run with ``-m`` (``python -m
    worker.cli``) is not, so the server imports it, and its imports with it,
    and a child only runs its body.
    """
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    return [name] if isinstance(name, str) and not name.endswith("__main__") else []


def start(produce: Callable[..., Any]) -> None:
    """Start the fork server now, ``produce``'s module imported in it, rather than
    when the first stream needs it (a worker calls this as it starts).

    Returns once the server can fork a reader: it forks one that does nothing
    and waits for it, which it can do only when its imports are done. A
    worker that took jobs before then would have them compete for the CPU
    with the server's imports, and its first import would wait for them.
    """
    context = _fork_server(produce.__module__)
    probe = context.Process(target=_ready, name="fullpass-reader-ready", daemon=True)
    probe.start()
    probe.join(START_SECONDS)
    if probe.exitcode is None:
        probe.kill()
        probe.join()
        raise Transient(f"the export reader's server was not ready after {START_SECONDS:g} s")
    if probe.exitcode != 0:
        raise Transient(f"the export reader's first child exited with {probe.exitcode}")


def _ready() -> None:
    """What the readiness probe runs in its child: nothing."""


class ChildStream(Generic[T, S]):
    """The items of ``produce(*args, state)``, made in a child process.

    ``state`` is a dataclass the generator updates as it goes; the parent's
    copy is brought up to date with every batch, so it is complete once the
    stream is exhausted. The child starts at the first ``next()`` (in the
    thread that iterates), so a stream that is never read leaves nothing
    behind. Iterate from one thread at a time; :meth:`close` may be called
    from any thread.
    """

    def __init__(
        self, produce: Callable[..., Iterator[T]], args: tuple[Any, ...], state: S
    ) -> None:
        self.state = state
        #: The child's peak resident memory (KiB), once it has finished.
        self.peak_rss_kb: int | None = None
        self._produce = produce
        self._args = args
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._messages: queue.Queue[tuple[str, Any, Any]] = queue.Queue(READ_AHEAD)
        self._closed = threading.Event()
        self._batch: list[T] = []
        self._next = 0
        self._done = False

    def _start(self) -> bool:
        """Start the child (once); False when the stream was closed first."""
        with self._lock:
            if self._closed.is_set():
                return False
            if self._process is None:
                context = _fork_server(self._produce.__module__)
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_child,
                    args=(sender, self._produce, self._args, self.state),
                    name="fullpass-export-reader",
                    daemon=True,
                )
                process.start()
                sender.close()
                self._process, self._conn = process, receiver
                self._reader = threading.Thread(
                    target=self._read, args=(receiver,), name="fullpass-export-pipe", daemon=True
                )
                self._reader.start()
            return True

    def __iter__(self) -> ChildStream[T, S]:
        return self

    def __next__(self) -> T:
        if self._closed.is_set() or not self._start():
            raise StopIteration
        while self._next >= len(self._batch):
            if self._done or self._closed.is_set():
                raise StopIteration
            kind, payload, state = self._messages.get()
            if state is not None:
                _update(self.state, state)
            if kind == "items":
                self._batch, self._next = payload, 0
                continue
            self._done = True
            self._batch = []
            if kind == "done":
                self.peak_rss_kb = payload
            if kind == "raise":
                if self._process is not None:
                    self._process.join()
                raise payload
            if kind == "died":
                raise Transient(f"the export reader stopped unexpectedly ({self._exit()})")
            # "done", or "closed" (the stream was closed under the consumer)
        item = self._batch[self._next]
        self._next += 1
        return item

    def close(self) -> None:
        """Stop the child (if it still runs) and release the pipe."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join()
        if self._reader is not None:
            self._reader.join()
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.close()
        # Wake a consumer waiting for the next message.
        with contextlib.suppress(queue.Empty):
            while True:
                self._messages.get_nowait()
        self._messages.put_nowait(("closed", None, None))

    def __enter__(self) -> ChildStream[T, S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, conn: Connection) -> None:
        """Move the child's messages to the queue (a thread, so the child parses ahead)."""
        while True:
            message: tuple[str, Any, Any]
            try:
                # Our own child's bytes, over a pipe only it and we hold.
                message = pickle.loads(conn.recv_bytes())  # noqa: S301
            except (EOFError, OSError):
                message = ("died", None, None)
            except Exception as exc:
                unreadable = RuntimeError(f"the export reader sent an unreadable message: {exc}")
                message = ("raise", unreadable, None)
            while not self._closed.is_set():
                try:
                    self._messages.put(message, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if message[0] != "items" or self._closed.is_set():
                return

    def _exit(self) -> str:
        if self._process is None:
            return "it never started"
        self._process.join(timeout=5)
        code = self._process.exitcode
        if code is None:
            return "it closed its pipe"
        if code < 0:
            name = signal.Signals(-code).name
            hint = ", out of memory?" if -code == signal.SIGKILL else ""
            return f"killed by {name}{hint}"
        return f"exit status {code}"


def _update(target: Any, source: Any) -> None:
    for f in dataclasses.fields(target):
        setattr(target, f.name, getattr(source, f.name))


def _child(
    conn: Connection, produce: Callable[..., Iterator[Any]], args: tuple[Any, ...], state: Any
) -> None:
    """The child's side: run the generator, send its items in batches, then how it ended."""
    # The worker decides when the child stops: a shutdown signal sent to the whole
    # process group lets the worker finish the stage, with the child's rows.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def send(kind: str, payload: Any) -> None:
        conn.send_bytes(pickle.dumps((kind, payload, state), protocol=pickle.HIGHEST_PROTOCOL))

    batch: list[Any] = []
    try:
        for item in produce(*args, state):
            batch.append(item)
            if len(batch) >= BATCH:
                send("items", batch)
                batch = []
        send("items", batch)
        send("done", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent is gone or stopped listening
    except BaseException as exc:
        if batch:  # what came before the failure, as in the parent's own thread
            with contextlib.suppress(OSError):
                send("items", batch)
        if not isinstance(exc, FullpassError):
            exc.add_note("in the export reader:\n" + traceback.format_exc().rstrip())
        try:
            payload = pickle.dumps(("raise", exc, state), protocol=pickle.HIGHEST_PROTOCOL)
            pickle.loads(payload)  # noqa: S301 - what the parent will do with it
        except Exception:
            stand_in = RuntimeError(f"{type(exc).__name__}: {exc}")
            payload = pickle.dumps(("raise", stand_in, state))
        with contextlib.suppress(OSError):
            conn.send_bytes(payload)
    finally:
        conn.close()
