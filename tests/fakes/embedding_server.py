"""What the fake embeddings services share: HTTP plumbing, faults, records, vectors.

:class:`FakeEmbeddingServer` is a real HTTP/1.1 server on 127.0.0.1 (one
thread per connection, keep-alive) so the real SDKs (boto3, httpx) run
unmodified against it. A subclass says how its service's requests look and
how it answers; this base steers and observes, from any thread:

* ``latency``: seconds from receiving a request to answering it;
* :meth:`~FakeEmbeddingServer.inject`: a queue of faults for the next
  requests (each request takes the first); :meth:`set_random_faults`: a share
  of requests failing reproducibly (seeded);
* ``requests_per_second``: beyond it, requests are answered as throttled
  the way the real service does (a sliding one-second window);
* ``chars_per_token``: how token counts are estimated (4 by default; lower
  it to make texts "denser" and hit a service's token limits);
* records (:class:`EmbedRecord`) of every request: texts, status, fault,
  tokens, timing; :attr:`max_in_flight` requests at once.

Vectors are deterministic and lexically meaningful (:func:`lexical_vector`):
a normalised feature-hashing of a text's word stems, so texts sharing words
score higher than unrelated ones and vector search works in tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, NoReturn, Self

FaultKind = Literal[
    "throttle",  # 429 throttling, with retry-after when given
    "server_error",  # 500
    "unavailable",  # 503
    "invalid",  # 400, the service's validation error
    "unauthorized",  # 401/403, the service's refusal of the credentials
    "quota",  # 429 the account is out of quota (OpenAI's insufficient_quota)
    "status",  # any status / error type / message (Fault.status, .error_type, .message)
    "hang",  # no answer for Fault.hang_seconds, then the connection is closed
    "malformed",  # 200 with a body that is not JSON
    "garbage",  # 200 with JSON of the wrong shape
    "wrong_count",  # 200 with one vector fewer than texts
    "wrong_dimension",  # 200 with vectors one dimension short
    "non_finite",  # 200 with a NaN in the first vector
]
#: Faults answered with an error status (or silence) instead of vectors.
HTTP_FAULTS = frozenset(
    {
        "throttle",
        "server_error",
        "unavailable",
        "invalid",
        "unauthorized",
        "quota",
        "status",
        "hang",
    }
)
#: Faults that spoil a 200 answer.
CONTENT_FAULTS = frozenset({"malformed", "garbage", "wrong_count", "wrong_dimension", "non_finite"})

_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "x-amz-security-token"})


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected misbehaviour."""

    kind: FaultKind
    retry_after: float | None = None
    retry_after_ms: int | None = None
    hang_seconds: float = 5.0
    status: int = 500
    error_type: str = ""
    message: str = ""

    @classmethod
    def throttle(cls, retry_after: float | None = None, **kw: Any) -> Fault:
        return cls("throttle", retry_after=retry_after, **kw)

    @classmethod
    def hang(cls, seconds: float = 5.0) -> Fault:
        return cls("hang", hang_seconds=seconds)

    @classmethod
    def error(cls, status: int, error_type: str, message: str = "error") -> Fault:
        return cls("status", status=status, error_type=error_type, message=message)


@dataclass(slots=True)
class EmbedRecord:
    """What the fake saw and did for one request."""

    index: int
    method: str
    path: str
    headers: dict[str, str]
    started: float
    body: Any = None
    model: str | None = None
    texts: list[str] = field(default_factory=list)
    #: Cohere's ``input_type``; ``None`` for services without one.
    input_type: str | None = None
    #: The vector size asked for (Titan's or OpenAI's ``dimensions``), if any.
    dimensions: int | None = None
    finished: float | None = None
    #: HTTP status sent; ``None`` when the fault was a hang (nothing sent).
    status: int | None = None
    fault: str | None = None
    error_type: str | None = None
    #: 200 with usable vectors (no content fault).
    ok: bool = False
    tokens: int = 0
    #: No longer counted in flight (its answer went out, or it hangs).
    left: bool = False

    @property
    def count(self) -> int:
        return len(self.texts)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    fake: FakeEmbeddingServer

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        self.fake._track(conn)
        return conn, addr


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = 60
    #: Headers and body go out in separate writes: without TCP_NODELAY,
    #: Nagle's algorithm and the client's delayed ACK add ~40 ms an answer.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""


class Abort(Exception):
    """Stop handling: the response (or deliberate silence) is already decided."""


class FakeEmbeddingServer:
    """Base of the fake embeddings services (see the module docstring)."""

    #: Faults :meth:`set_random_faults` picks from by default.
    RANDOM_KINDS: tuple[FaultKind, ...] = ("throttle", "server_error", "unavailable")

    def __init__(
        self,
        *,
        latency: float = 0.0,
        requests_per_second: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._latency = latency
        self._rps = requests_per_second
        self._window: deque[float] = deque()
        self._chars_per_token = 4.0
        self._faults: list[Fault] = []
        self._random: tuple[float, tuple[FaultKind, ...], random.Random] | None = None
        self._random_retry_after: float | None = None
        self._records: list[EmbedRecord] = []
        self._counter = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._stop.clear()
        httpd = _HTTPServer((self._host, self._port), Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stop.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._httpd is None:
            raise RuntimeError("the fake server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    # ------------------------------------------------------------------ control

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = seconds

    @property
    def requests_per_second(self) -> float | None:
        with self._lock:
            return self._rps

    @requests_per_second.setter
    def requests_per_second(self, limit: float | None) -> None:
        with self._lock:
            self._rps = limit
            self._window.clear()

    @property
    def chars_per_token(self) -> float:
        with self._lock:
            return self._chars_per_token

    @chars_per_token.setter
    def chars_per_token(self, value: float) -> None:
        with self._lock:
            self._chars_per_token = value

    def inject(self, *faults: Fault | FaultKind, times: int = 1) -> None:
        """Queue faults; each request takes the first."""
        with self._lock:
            for _ in range(times):
                for fault in faults:
                    self._faults.append(Fault(fault) if isinstance(fault, str) else fault)

    def set_random_faults(
        self,
        rate: float,
        kinds: Sequence[FaultKind] | None = None,
        *,
        seed: int = 0,
        retry_after: float | None = 0.01,
    ) -> None:
        """Fail a ``rate`` share of requests with one of ``kinds``, reproducibly."""
        with self._lock:
            chosen = tuple(kinds or self.RANDOM_KINDS)
            self._random = (rate, chosen, random.Random(seed)) if rate > 0 else None
            self._random_retry_after = retry_after

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._random = None

    def reset(self) -> None:
        """Forget faults, limits, records and counters; keep the socket."""
        with self._lock:
            self.clear_faults()
            self._records.clear()
            self._max_in_flight = self._in_flight
            self._latency = 0.0
            self._rps = None
            self._window.clear()
            self._chars_per_token = 4.0

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    # ------------------------------------------------------------------ observation

    @property
    def requests(self) -> list[EmbedRecord]:
        with self._lock:
            return list(self._records)

    def calls(self, *, ok: bool | None = None, status: int | None = None) -> list[EmbedRecord]:
        """Recorded requests, optionally filtered."""
        return [
            r
            for r in self.requests
            if (ok is None or r.ok == ok) and (status is None or r.status == status)
        ]

    def embedded_texts(self) -> list[str]:
        """Every text of every successful request, in arrival order."""
        return [text for r in self.calls(ok=True) for text in r.texts]

    def total_tokens(self) -> int:
        return sum(r.tokens for r in self.calls(ok=True))

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def tokens_of(self, text: str) -> int:
        """The fake's token count for ``text``."""
        return max(1, math.ceil(len(text) / self.chars_per_token)) if text else 0

    # ------------------------------------------------------------------ for subclasses

    def _route(self, h: Handler, record: EmbedRecord) -> None:
        raise NotImplementedError

    def _fault_answer(self, h: Handler, record: EmbedRecord, fault: Fault) -> NoReturn:
        """Answer an HTTP fault (error status or hang) the way the service does."""
        raise NotImplementedError

    def _garbage(self) -> Any:
        """A JSON body of the wrong shape for this service."""
        return {"message": "ok"}

    def _throttled(self, h: Handler, record: EmbedRecord) -> NoReturn:
        """Answer a request over ``requests_per_second``."""
        self._fault_answer(h, record, Fault("throttle"))

    # ------------------------------------------------------------------ plumbing

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections = {c for c in self._connections if c.fileno() != -1}
            self._connections.add(conn)

    def _next_index(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _handle(self, h: Handler) -> None:
        record = EmbedRecord(
            index=self._next_index(),
            method=h.command,
            path=h.path.split("?", 1)[0],
            headers={
                k.lower(): "[redacted]" if k.lower() in _SECRET_HEADERS else v
                for k, v in h.headers.items()
            },
            started=time.monotonic(),
        )
        with self._lock:
            self._records.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            raw = _read_body(h)
            record.body = _loads(raw) if raw else None
            self._route(h, record)
        except Abort:
            pass
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            h.close_connection = True
        finally:
            record.finished = time.monotonic()
            self._leave(record)

    def _leave(self, record: EmbedRecord) -> None:
        """Stop counting ``record`` in flight (once), before its answer is written:
        the client may send its next request as soon as it has read this one's."""
        with self._lock:
            if not record.left:
                record.left = True
                self._in_flight -= 1

    def _send(
        self,
        h: Handler,
        record: EmbedRecord,
        status: int,
        payload: Any = None,
        *,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        raw: bytes | None = None,
    ) -> NoReturn:
        body = raw if raw is not None else json.dumps(payload, ensure_ascii=False).encode()
        record.status = status
        self._leave(record)
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            h.close_connection = True
        raise Abort

    def _pick_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.pop(0)
            if self._random is not None:
                rate, kinds, rng = self._random
                if rng.random() < rate:
                    return Fault(rng.choice(kinds), retry_after=self._random_retry_after)
        return None

    def _over_limit(self) -> bool:
        """Whether this request exceeds ``requests_per_second`` (a 1 s sliding window)."""
        with self._lock:
            if self._rps is None:
                return False
            now = time.monotonic()
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= self._rps:
                return True
            self._window.append(now)
            return False

    def _admit(self, h: Handler, record: EmbedRecord) -> Fault | None:
        """Throttle over the limit, answer an HTTP fault, or return a content fault."""
        if self._over_limit():
            record.fault = "rate_limited"
            self._throttled(h, record)
        fault = self._pick_fault()
        if fault is None:
            return None
        record.fault = fault.kind
        if fault.kind == "hang":
            # The client gives up long before this ends: stop counting the
            # request as in flight now, or it would inflate later peaks.
            self._leave(record)
            self._stop.wait(fault.hang_seconds)
            h.close_connection = True
            raise Abort
        if fault.kind in HTTP_FAULTS:
            self._fault_answer(h, record, fault)
        return fault

    def _wait_latency(self, record: EmbedRecord) -> None:
        """The latency is the whole time to answer, the fake's own work included."""
        remaining = record.started + self.latency - time.monotonic()
        if remaining > 0:
            self._stop.wait(remaining)

    def _answer_vectors(
        self,
        h: Handler,
        record: EmbedRecord,
        fault: Fault | None,
        vectors: list[list[float]],
        build: Any,
        headers: dict[str, str],
    ) -> NoReturn:
        """Send ``build(vectors)`` (spoiled by a content fault), after the latency."""
        self._wait_latency(record)
        if fault is not None and fault.kind == "malformed":
            raw = b"<html><body>upstream connect error or disconnect/reset before headers"
            self._send(h, record, 200, raw=raw, headers=headers, content_type="text/html")
        if fault is not None and fault.kind == "garbage":
            self._send(h, record, 200, self._garbage(), headers=headers)
        record.ok = fault is None
        spoiled = spoil(vectors, fault.kind if fault else None)
        self._send(h, record, 200, build(spoiled), headers=headers)


def spoil(vectors: list[list[float]], kind: str | None) -> list[list[float]]:
    """``vectors`` as a content fault leaves them."""
    if kind == "wrong_count":
        return vectors[:-1]
    if kind == "wrong_dimension":
        return [v[:-1] for v in vectors]
    if kind == "non_finite" and vectors:
        return [[math.nan, *vectors[0][1:]], *vectors[1:]]
    return vectors


# ---------------------------------------------------------------------- vectors

_WORD = re.compile(r"[^\W_]+")
_STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        """a an and are as at be but by do for from had has have he her his i if in is it its me
        my no not of on or our she so than that the their them then there they this to us was we
        were what when which who will with would you your""",
    )
)
_SUFFIXES = ("ingly", "edly", "ing", "ed", "es", "ly", "s")


def stem(word: str) -> str:
    """A crude stem: enough that "hiking", "hikes" and "hiked" meet."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def lexical_vector(text: str, dimension: int) -> list[float]:
    """A unit vector of ``text``'s word stems, feature-hashed into ``dimension`` slots.

    Same words → same direction; shared words → positive cosine; unrelated
    texts → near zero. A text without words gets a unit vector of its own.
    """
    counts = Counter(stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS)
    vector = [0.0] * dimension
    for term, n in counts.items():
        digest = hashlib.blake2b(term.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % dimension
        vector[slot] += (1.0 if digest[4] & 1 else -1.0) * (1.0 + math.log(n))
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:
        digest = hashlib.blake2b(text.encode(), digest_size=4).digest()
        vector[int.from_bytes(digest, "little") % dimension] = 1.0
        return vector
    return [x / norm for x in vector]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity (for tests' assertions)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


# ---------------------------------------------------------------------- HTTP helpers


def _read_body(h: Handler) -> bytes:
    if h.headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += h.rfile.read(size)
            h.rfile.readline()
    length = int(h.headers.get("content-length") or 0)
    return h.rfile.read(length) if length else b""


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def retry_headers(fault: Fault) -> dict[str, str]:
    """``retry-after`` / ``retry-after-ms`` headers for a fault that names a wait."""
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        value = fault.retry_after
        headers["retry-after"] = str(int(value)) if float(value).is_integer() else f"{value:g}"
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = str(fault.retry_after_ms)
    return headers


__all__ = [
    "CONTENT_FAULTS",
    "HTTP_FAULTS",
    "Abort",
    "EmbedRecord",
    "FakeEmbeddingServer",
    "Fault",
    "FaultKind",
    "Handler",
    "cosine",
    "lexical_vector",
    "retry_headers",
    "spoil",
    "stem",
]
