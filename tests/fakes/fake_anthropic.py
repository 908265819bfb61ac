"""A fake Anthropic Messages API on 127.0.0.1, for tests and benchmarks.

It speaks real HTTP/1.1 (keep-alive, one thread per connection) so the real
``anthropic`` SDK runs unmodified against it: retries, timeouts, headers and
error classes are exercised exactly as in production. Answers are
deterministic and *plausible*: extraction requests get the facts a careful
model would find in the transcript's ``User:`` / ``Saved memory:`` /
``Custom instructions:`` turns (first-person statements of preference,
projects, dates, beliefs and decisions), MEMORY requests get the five-section
markdown, sections requests a ``write_sections`` call. Usage is estimated at
4 characters a token, with prompt caching simulated for cacheable system
prompts.

It can enforce an organisation's rate limits as the real API does
(:meth:`FakeAnthropicServer.set_rate_limits`): token buckets of requests,
input tokens and output tokens per minute, shared by every client, refilled
continuously; every Messages answer carries the ``anthropic-ratelimit-*``
headers (limit, remaining, reset as an RFC 3339 time), and a request over a
limit gets 429 ``rate_limit_error`` with ``retry-after`` in whole seconds.

Tests steer it at runtime, from any thread: ``latency``, a queue of faults
for the next requests (:meth:`FakeAnthropicServer.inject`), random faults with
a seed (:meth:`FakeAnthropicServer.set_random_faults`), per-item batch outcomes.
Every request is recorded (:class:`RecordedRequest`) with its kind, the
extraction key (a hash of the transcript), status and token counts, together
with the highest number of requests that were in flight at once.

Usage::

    with FakeAnthropicServer() as fake:
        settings = Settings(ANTHROPIC_API_KEY=fake.api_key, ANTHROPIC_BASE_URL=fake.base_url)
        ...
        assert not fake.duplicate_extractions()
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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, NoReturn, Self

from jobs.domain import rules
from jobs.domain.facts import Facts
from jobs.domain.memory import fallback_memory
from tests.fakes.rewording import Rewording
from worker.llm.offline.persona import write_sections

DEFAULT_API_KEY = "sk-ant-fake-0123456789abcdefghijklmnopqrstuvwxyz"

FaultKind = Literal[
    "rate_limit",  # 429 rate_limit_error, with retry-after when given
    "overloaded",  # 529 overloaded_error
    "server_error",  # 500 api_error
    "status",  # any status / error type / message (Fault.status, .error_type, .message)
    "hang",  # no answer for Fault.hang_seconds, then the connection is closed
    "non_json",  # 200 with a body that is not JSON
    "garbage_text",  # 200, a text answer with prose instead of the tool call / MEMORY
    "bad_tool_input",  # 200, the tool call with wrong-typed input
    "text_json",  # 200, the right answer as fenced JSON in a text block (no tool call)
    "deep_nesting",  # 200, a tool call whose input nests Fault.depth levels deep
]
RequestKind = Literal["extract", "consolidate", "memory", "sections", "other"]
BatchOutcome = Literal["errored", "expired", "canceled", "garbage_text", "bad_tool_input"]

#: Recorded with their value hidden: records end up in benchmark reports.
_SECRET_HEADERS = frozenset({"x-api-key", "authorization"})
_CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHOICES = ("auto", "any", "tool", "none")
_HTTP_FAULTS = frozenset({"rate_limit", "overloaded", "server_error", "status", "hang", "non_json"})


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected misbehaviour.

    ``only`` restricts it to one request kind (``extract``, ``consolidate``,
    ``memory``, ``sections``, ``other``, or ``batch`` for the batch
    endpoints); by default a fault applies to the next ``/v1/messages``
    request of any kind.
    """

    kind: FaultKind
    retry_after: float | None = None
    retry_after_ms: int | None = None
    hang_seconds: float = 5.0
    status: int = 500
    error_type: str = "api_error"
    message: str = ""
    only: str | None = None
    content_type: str = "application/json"
    depth: int = 3000

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1.0, **kw: Any) -> Fault:
        return cls("rate_limit", retry_after=retry_after, **kw)

    @classmethod
    def overloaded(cls, **kw: Any) -> Fault:
        return cls("overloaded", **kw)

    @classmethod
    def server_error(cls, **kw: Any) -> Fault:
        return cls("server_error", **kw)

    @classmethod
    def hang(cls, seconds: float = 5.0, **kw: Any) -> Fault:
        return cls("hang", hang_seconds=seconds, **kw)

    def applies_to(self, kind: str) -> bool:
        if self.only is None:
            return kind != "batch"
        return self.only == kind


@dataclass(slots=True)
class RecordedRequest:
    """What the fake saw and did for one request (or one batch item)."""

    index: int
    method: str
    path: str
    kind: str
    body: Any
    headers: dict[str, str]
    started: float
    finished: float | None = None
    #: HTTP status sent; ``None`` when the fault was a hang (nothing sent).
    status: int | None = None
    fault: str | None = None
    #: For extraction requests: sha256 (16 hex) of the transcript, stable
    #: across retries and corrective re-asks of the same chunk.
    key: str | None = None
    #: ``[[chunk:ID]]`` marker found in the transcript, if a test planted one.
    marker: str | None = None
    #: 200 with a usable answer (no content fault).
    ok: bool = False
    batch_id: str | None = None
    custom_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    answer: Any = None
    #: The organisation limit that refused the request (``requests``,
    #: ``input_tokens`` or ``output_tokens``), for a 429 of the rate limits.
    limited: str | None = None
    #: No longer counted in flight (its answer went out, or it hangs).
    left: bool = False


@dataclass(slots=True)
class _Bucket:
    """A token bucket of ``limit`` per minute holding at most ``capacity``."""

    limit: int
    capacity: float
    level: float
    at: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.limit / 60)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` (at most the capacity) is available."""
        missing = min(amount, self.capacity) - self.level
        return max(0.0, missing * 60 / self.limit)

    def full_in(self) -> float:
        return max(0.0, (self.capacity - self.level) * 60 / self.limit)


@dataclass(slots=True)
class _Batch:
    id: str
    created: float
    created_at: datetime
    delay: float
    items: list[tuple[str, dict[str, Any]]]
    canceled: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    fake: FakeAnthropicServer

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        self.fake._track(conn)
        return conn, addr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    #: Idle keep-alive connections are dropped after this long.
    timeout = 60
    #: Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
    #: algorithm and the client's delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""


class _Abort(Exception):
    """Stop handling: the response (or deliberate silence) is already decided."""


class FakeAnthropicServer:
    """A thread-backed fake of the Messages and Message Batches APIs."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        api_key: str = DEFAULT_API_KEY,
        require_api_key: bool = True,
        batch_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        reword: Rewording | None = None,
    ) -> None:
        self.api_key = api_key
        #: Extraction answers worded as a model words them (None: the rules' own sentences).
        self.reword = reword
        self.require_api_key = require_api_key
        #: Answer like a model without sampling parameters: 400 on ``temperature``.
        self.reject_temperature = False
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._latency = latency
        self._batch_delay = batch_delay
        self._faults: list[Fault] = []
        self._random: tuple[float, tuple[FaultKind, ...], random.Random, str | None] | None = None
        self._random_retry_after: float | None = None
        self._batch_outcomes: dict[str, BatchOutcome] = {}
        self._requests: list[RecordedRequest] = []
        self._batches: dict[str, _Batch] = {}
        self._cache: set[str] = set()
        self._counter = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._buckets: dict[str, _Bucket] = {}
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._stop.clear()
        httpd = _HTTPServer((self._host, self._port), _Handler)
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
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the fake server is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def settings_env(self) -> dict[str, str]:
        """Environment that points a ``Settings()`` at this server."""
        return {
            "ANTHROPIC_API_KEY": self.api_key,
            "ANTHROPIC_BASE_URL": self.base_url,
            "FULLPASS_LLM": "anthropic",
        }

    # ------------------------------------------------------------------ control

    @property
    def latency(self) -> float:
        """Seconds from receiving a Messages request to answering it."""
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        with self._lock:
            self._latency = seconds

    @property
    def batch_delay(self) -> float:
        """Seconds a new batch stays ``in_progress`` before it ends."""
        with self._lock:
            return self._batch_delay

    @batch_delay.setter
    def batch_delay(self, seconds: float) -> None:
        with self._lock:
            self._batch_delay = seconds

    def inject(self, *faults: Fault | FaultKind, times: int = 1) -> None:
        """Queue faults; each matching request consumes the first that applies."""
        with self._lock:
            for _ in range(times):
                for fault in faults:
                    self._faults.append(Fault(fault) if isinstance(fault, str) else fault)

    def set_random_faults(
        self,
        rate: float,
        kinds: Sequence[FaultKind] = ("rate_limit", "overloaded", "server_error"),
        *,
        seed: int = 0,
        only: str | None = None,
        retry_after: float | None = 0.05,
    ) -> None:
        """Fail a ``rate`` share of requests with one of ``kinds``, reproducibly."""
        with self._lock:
            self._random = (rate, tuple(kinds), random.Random(seed), only) if rate > 0 else None
            self._random_retry_after = retry_after

    def set_rate_limits(
        self,
        *,
        rpm: int | None = None,
        itpm: int | None = None,
        otpm: int | None = None,
        burst_seconds: float = 60.0,
    ) -> None:
        """Enforce an organisation's limits per minute (None: that one is unlimited).

        Each bucket holds ``burst_seconds`` worth of its limit (the real API
        holds a minute's, and may enforce it over shorter intervals) and
        starts full. Input tokens read from the prompt cache do not count, as
        for current models; output tokens are taken when the answer is sent,
        and a request is refused while the output bucket holds less than one.
        """
        now = time.monotonic()
        buckets = {}
        for name, limit in (("requests", rpm), ("input_tokens", itpm), ("output_tokens", otpm)):
            if limit is not None:
                capacity = max(1.0, limit * burst_seconds / 60)
                buckets[name] = _Bucket(limit, capacity, capacity, now)
        with self._lock:
            self._buckets = buckets

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._random = None
            self._batch_outcomes.clear()

    def set_batch_item_outcome(self, custom_id: str, outcome: BatchOutcome) -> None:
        """Make one batch request end this way instead of succeeding."""
        with self._lock:
            self._batch_outcomes[custom_id] = outcome

    def reset(self) -> None:
        """Forget faults, records, batches, cache and counters; keep the socket."""
        with self._lock:
            self.clear_faults()
            self._requests.clear()
            self._batches.clear()
            self._cache.clear()
            self._max_in_flight = self._in_flight
            self._latency = 0.0
            self.reject_temperature = False
            self._batch_delay = 0.0
            self.reword = None
            self._buckets = {}

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    # ------------------------------------------------------------------ observation

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def calls(
        self, kind: str | None = None, *, ok: bool | None = None, status: int | None = None
    ) -> list[RecordedRequest]:
        """Recorded requests, optionally filtered."""
        return [
            r
            for r in self.requests
            if (kind is None or r.kind == kind)
            and (ok is None or r.ok == ok)
            and (status is None or r.status == status)
        ]

    def extraction_counts(self) -> Counter[str]:
        """Successful extraction answers per transcript key (online and batch)."""
        return Counter(r.key for r in self.calls("extract", ok=True) if r.key)

    def duplicate_extractions(self) -> dict[str, int]:
        """Transcript keys that were successfully extracted more than once."""
        return {k: n for k, n in self.extraction_counts().items() if n > 1}

    def rate_limited(self) -> list[RecordedRequest]:
        """Requests refused by the organisation's rate limits."""
        return [r for r in self.requests if r.limited is not None]

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def total_usage(self) -> dict[str, int]:
        out = Counter[str]()
        for r in self.requests:
            out["input_tokens"] += r.input_tokens
            out["output_tokens"] += r.output_tokens
            out["cache_read_tokens"] += r.cache_read_tokens
            out["cache_creation_tokens"] += r.cache_creation_tokens
            out["calls"] += 1 if r.status == 200 and r.answer is not None else 0
        return dict(out)

    @staticmethod
    def key_of(transcript: str) -> str:
        """The key recorded for an extraction of ``transcript`` (stripped)."""
        return hashlib.sha256(transcript.strip().encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ HTTP plumbing

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections = {c for c in self._connections if c.fileno() != -1}
            self._connections.add(conn)

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _handle(self, h: _Handler) -> None:
        record = RecordedRequest(
            index=self._next_id(),
            method=h.command,
            path=h.path.split("?", 1)[0],
            kind="other",
            body=None,
            headers={
                k.lower(): "[redacted]" if k.lower() in _SECRET_HEADERS else v
                for k, v in h.headers.items()
            },
            started=time.monotonic(),
        )
        with self._lock:
            self._requests.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            raw = _read_body(h)
            record.body = _loads(raw) if raw else None
            self._route(h, record)
        except _Abort:
            pass
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            h.close_connection = True
        finally:
            record.finished = time.monotonic()
            self._leave(record)

    def _leave(self, record: RecordedRequest) -> None:
        """Stop counting ``record`` in flight (once).

        Done before its answer is written: the client may send its next
        request as soon as it has read this one's answer, before this thread
        gets to run again, and counting both would show one call too many in
        flight.
        """
        with self._lock:
            if not record.left:
                record.left = True
                self._in_flight -= 1

    def _send(
        self,
        h: _Handler,
        record: RecordedRequest,
        status: int,
        payload: Any,
        *,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        raw: bytes | None = None,
    ) -> NoReturn:
        body = raw if raw is not None else json.dumps(payload, ensure_ascii=False).encode()
        record.status = status
        if record.path.rstrip("/") == "/v1/messages":
            headers = {**self._rate_headers(record), **(headers or {})}
        self._leave(record)
        try:
            h.send_response(status)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("request-id", f"req_fake_{record.index:08d}")
            for name, value in (headers or {}).items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            h.close_connection = True
        raise _Abort

    def _error(
        self,
        h: _Handler,
        record: RecordedRequest,
        status: int,
        error_type: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> NoReturn:
        payload = {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": f"req_fake_{record.index:08d}",
        }
        self._send(h, record, status, payload, headers=headers)

    def _route(self, h: _Handler, record: RecordedRequest) -> None:
        # The SDK sends the key as ``x-api-key`` or as a bearer token, by version.
        bearer = (h.headers.get("authorization") or "").removeprefix("Bearer ").strip()
        if self.require_api_key and self.api_key not in (h.headers.get("x-api-key"), bearer):
            self._error(h, record, 401, "authentication_error", "invalid x-api-key")
        if not h.headers.get("anthropic-version"):
            self._error(h, record, 400, "invalid_request_error", "anthropic-version is required")
        path = record.path.rstrip("/")
        if h.command == "POST" and path == "/v1/messages":
            self._messages(h, record)
        parts = path.split("/")
        if path.startswith("/v1/messages/batches"):
            record.kind = "batch"
            self._maybe_http_fault(h, record)
            if h.command == "POST" and path == "/v1/messages/batches":
                self._batch_create(h, record)
            if h.command == "GET" and len(parts) == 5:
                self._batch_get(h, record, parts[4])
            if h.command == "GET" and len(parts) == 6 and parts[5] == "results":
                self._batch_results(h, record, parts[4])
            if h.command == "POST" and len(parts) == 6 and parts[5] == "cancel":
                self._batch_cancel(h, record, parts[4])
        self._error(h, record, 404, "not_found_error", f"no route for {h.command} {path}")

    # ------------------------------------------------------------------ faults

    def _pick_fault(self, kind: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.applies_to(kind):
                    return self._faults.pop(index)
            if self._random is not None:
                rate, kinds, rng, only = self._random
                applies = (only is None and kind != "batch") or only == kind
                if applies and rng.random() < rate:
                    chosen = rng.choice(kinds)
                    return Fault(chosen, retry_after=self._random_retry_after)
        return None

    def _maybe_http_fault(self, h: _Handler, record: RecordedRequest) -> Fault | None:
        fault = self._pick_fault(record.kind)
        if fault is None:
            return None
        record.fault = fault.kind
        if fault.kind not in _HTTP_FAULTS:
            return fault
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["retry-after"] = _number(fault.retry_after)
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        if fault.kind == "rate_limit":
            self._error(
                h,
                record,
                429,
                "rate_limit_error",
                fault.message or "Number of request tokens has exceeded your rate limit.",
                headers,
            )
        if fault.kind == "overloaded":
            self._error(h, record, 529, "overloaded_error", fault.message or "Overloaded", headers)
        if fault.kind == "server_error":
            message = fault.message or "Internal server error"
            self._error(h, record, 500, "api_error", message, headers)
        if fault.kind == "status":
            self._error(
                h, record, fault.status, fault.error_type, fault.message or "error", headers
            )
        if fault.kind == "hang":
            # The client gives up long before this ends: stop counting the
            # request as in flight now, or it would inflate later tests' peaks.
            self._leave(record)
            self._stop.wait(fault.hang_seconds)
            h.close_connection = True
            raise _Abort
        # non_json
        self._send(
            h,
            record,
            200,
            None,
            content_type=fault.content_type,
            raw=b"<html><body>upstream connect error or disconnect/reset before headers",
        )

    # ------------------------------------------------------------------ rate limits

    def _admit(self, h: _Handler, record: RecordedRequest, body: dict[str, Any]) -> None:
        """Take the request from the organisation's buckets, or answer 429."""
        with self._lock:
            if not self._buckets:
                return
            now = time.monotonic()
            for bucket in self._buckets.values():
                bucket.refill(now)
            needs = {"requests": 1.0, "input_tokens": float(self._counted_input(body))}
            # Output is counted when the answer goes: a request needs one token left.
            waits = {
                name: bucket.wait_for(needs.get(name, 1.0))
                for name, bucket in self._buckets.items()
            }
            refused = max(waits, key=lambda name: waits[name])
            if waits[refused] > 0:
                record.limited = refused
            else:
                for name, bucket in self._buckets.items():
                    bucket.level -= needs.get(name, 0.0)
        if record.limited is not None:
            record.fault = "rate_limit"
            label = record.limited.replace("_", " ")
            self._error(
                h,
                record,
                429,
                "rate_limit_error",
                f"This request would exceed your organization's rate limit of "
                f"{self._buckets[record.limited].limit} {label} per minute.",
                {"retry-after": str(max(1, math.ceil(waits[refused])))},
            )

    def _counted_input(self, body: dict[str, Any]) -> int:
        """Input tokens the limit counts: the prompt without what the cache serves."""
        prefix, cached_prefix = self._prompt_prefix(body)
        total = _tokens_len(len(prefix) + sum(len(t) for t in _message_texts(body)))
        if cached_prefix:
            key = hashlib.sha256(f"{body.get('model')}\0{cached_prefix}".encode()).hexdigest()
            if key in self._cache:
                total -= _tokens(cached_prefix)
        return max(1, total)

    def _rate_headers(self, record: RecordedRequest) -> dict[str, str]:
        """The ``anthropic-ratelimit-*`` headers (output tokens taken as the answer goes)."""
        with self._lock:
            if not self._buckets:
                return {}
            now = time.monotonic()
            wall = datetime.now(UTC)
            out: dict[str, str] = {}
            for name, bucket in self._buckets.items():
                bucket.refill(now)
                if name == "output_tokens" and record.limited is None and record.status == 200:
                    bucket.level -= record.output_tokens
                header = "anthropic-ratelimit-" + name.replace("_", "-")
                reset = wall + timedelta(seconds=bucket.full_in())
                out[f"{header}-limit"] = str(bucket.limit)
                out[f"{header}-remaining"] = str(max(0, math.floor(bucket.level)))
                out[f"{header}-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
            return out

    # ------------------------------------------------------------------ /v1/messages

    def _messages(self, h: _Handler, record: RecordedRequest) -> None:
        body = record.body
        problem = _validate_message_params(body)
        if problem:
            self._error(h, record, 400, "invalid_request_error", problem)
        record.kind, record.key, record.marker = _classify(body)
        if self.reject_temperature and "temperature" in body:
            self._error(h, record, 400, "invalid_request_error", _TEMPERATURE_REJECTED)
        self._admit(h, record, body)
        fault = self._maybe_http_fault(h, record)
        if fault is not None and fault.kind == "deep_nesting":
            self._deep_answer(h, record, body, fault.depth)
        message = self._answer(body, record, fault.kind if fault else None)
        # The latency is the server's whole time to answer, its own work
        # included: a fixed-latency model, whatever the fake's CPU costs.
        remaining = record.started + self.latency - time.monotonic()
        if remaining > 0:
            self._stop.wait(remaining)
        self._send(h, record, 200, message)

    def _answer(self, body: dict[str, Any], record: RecordedRequest, fault: str | None) -> Any:
        """Build the Message for a request (also used for batch items)."""
        kind = record.kind
        content: list[dict[str, Any]]
        tool = _forced_tool(body)
        stop_reason = "tool_use"
        if fault == "garbage_text":
            content = [{"type": "text", "text": _GARBAGE}]
            stop_reason = "end_turn"
        elif fault == "bad_tool_input" and tool:
            bad = _BAD_SECTIONS if tool == "write_sections" else _BAD_FACTS
            content = [self._tool_use(tool, dict(bad))]
        elif fault == "bad_tool_input":
            content = [{"type": "text", "text": _GARBAGE}]
            stop_reason = "end_turn"
        else:
            result = _respond(kind, body, self.reword)
            if isinstance(result, str):
                content = [{"type": "text", "text": result}]
                stop_reason = "end_turn"
            elif fault == "text_json":
                text = "Here are the results:\n\n```json\n" + json.dumps(result, indent=2) + "\n```"
                content = [{"type": "text", "text": text}]
                stop_reason = "end_turn"
            else:
                content = [self._tool_use(tool or "record_facts", result)]
        record.ok = fault is None or fault == "text_json"
        usage = self._usage(body, content)
        record.input_tokens = usage["input_tokens"]
        record.output_tokens = usage["output_tokens"]
        record.cache_read_tokens = usage["cache_read_input_tokens"]
        record.cache_creation_tokens = usage["cache_creation_input_tokens"]
        record.answer = content
        return {
            "id": f"msg_fake_{record.index:08d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", ""),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }

    def _deep_answer(
        self, h: _Handler, record: RecordedRequest, body: dict[str, Any], depth: int
    ) -> NoReturn:
        """A tool call nested ``depth`` levels deep: written by hand (json.dumps would recurse)."""
        nested = '{"preferences": ' + "[" * depth + "]" * depth + "}"
        tool = _forced_tool(body) or "record_facts"
        usage = self._usage(body, [{"type": "text", "text": nested}])
        record.ok = False
        record.input_tokens = usage["input_tokens"]
        record.output_tokens = usage["output_tokens"]
        record.cache_read_tokens = usage["cache_read_input_tokens"]
        record.cache_creation_tokens = usage["cache_creation_input_tokens"]
        raw = (
            f'{{"id": "msg_fake_{record.index:08d}", "type": "message", "role": "assistant",'
            f' "model": {json.dumps(body.get("model", ""))}, "content": [{{"type": "tool_use",'
            f' "id": "toolu_fake_{self._next_id():08d}", "name": "{tool}", "input": {nested}}}],'
            f' "stop_reason": "tool_use", "stop_sequence": null, "usage": {json.dumps(usage)}}}'
        )
        self._send(h, record, 200, None, raw=raw.encode())

    def _tool_use(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "tool_use",
            "id": f"toolu_fake_{self._next_id():08d}",
            "name": name,
            "input": data,
        }

    def _usage(self, body: dict[str, Any], content: list[dict[str, Any]]) -> dict[str, int]:
        """Tokens at ~4 chars each; a cacheable prefix is written once, then read."""
        prefix, cached_prefix = self._prompt_prefix(body)
        total = len(prefix) + sum(len(t) for t in _message_texts(body))
        cached = _tokens(cached_prefix) if cached_prefix else 0
        read = created = 0
        if cached:
            cache_key = hashlib.sha256(f"{body.get('model')}\0{cached_prefix}".encode()).hexdigest()
            with self._lock:
                if cache_key in self._cache:
                    read = cached
                else:
                    created = cached
                    self._cache.add(cache_key)
        output = sum(
            len(json.dumps(b.get("input"))) if b["type"] == "tool_use" else len(b.get("text", ""))
            for b in content
        )
        return {
            "input_tokens": max(1, _tokens_len(total) - cached),
            "output_tokens": _tokens_len(output),
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": created,
        }

    @staticmethod
    def _prompt_prefix(body: dict[str, Any]) -> tuple[str, str]:
        """The tools and system text, and the part of it marked cacheable."""
        tools = json.dumps(body.get("tools") or [], sort_keys=True)
        system = body.get("system") or ""
        blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
        prefix, cached_prefix = tools, ""
        for block in blocks:
            prefix += str(block.get("text", ""))
            if block.get("cache_control"):
                cached_prefix = prefix
        return prefix, cached_prefix

    # ------------------------------------------------------------------ batches

    def _batch_create(self, h: _Handler, record: RecordedRequest) -> None:
        body = record.body
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            self._error(h, record, 400, "invalid_request_error", "requests: must be a list")
        items: list[tuple[str, dict[str, Any]]] = []
        seen: set[str] = set()
        for index, item in enumerate(requests):
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            params = item.get("params") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
                self._error(
                    h, record, 400, "invalid_request_error", f"requests.{index}.custom_id: invalid"
                )
            if custom_id in seen:
                self._error(
                    h, record, 400, "invalid_request_error", f"duplicate custom_id {custom_id}"
                )
            seen.add(custom_id)
            problem = _validate_message_params(params)
            if problem:
                self._error(
                    h, record, 400, "invalid_request_error", f"requests.{index}.params: {problem}"
                )
            assert isinstance(params, dict)
            items.append((custom_id, params))
        batch = _Batch(
            id=f"msgbatch_fake{self._next_id():08d}",
            created=time.monotonic(),
            created_at=datetime.now(UTC),
            delay=self.batch_delay,
            items=items,
        )
        for custom_id, params in items:
            batch.results.append(self._batch_item(batch, custom_id, params))
        with self._lock:
            self._batches[batch.id] = batch
        self._send(h, record, 200, self._batch_json(batch))

    def _batch_item(self, batch: _Batch, custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
        kind, key, marker = _classify(params)
        item = RecordedRequest(
            index=self._next_id(),
            method="BATCH",
            path="/v1/messages/batches#item",
            kind=kind,
            body=params,
            headers={},
            started=time.monotonic(),
            batch_id=batch.id,
            custom_id=custom_id,
            key=key,
            marker=marker,
        )
        with self._lock:
            outcome = self._batch_outcomes.get(custom_id)
            self._requests.append(item)
        item.fault = outcome
        item.finished = item.started
        if outcome == "errored":
            item.status = 500
            return {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "api_error", "message": "Internal server error"},
                },
            }
        if outcome in ("expired", "canceled"):
            return {"type": outcome}
        if self.reject_temperature and "temperature" in params:
            item.status = 400
            return {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": _TEMPERATURE_REJECTED},
                },
            }
        item.status = 200
        return {"type": "succeeded", "message": self._answer(params, item, outcome)}

    def _batch_ended(self, batch: _Batch) -> bool:
        return batch.canceled or time.monotonic() >= batch.created + batch.delay

    def _batch_json(self, batch: _Batch) -> dict[str, Any]:
        ended = self._batch_ended(batch)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        if ended:
            for result in batch.results:
                kind = "canceled" if batch.canceled else result["type"]
                counts[kind] += 1
        else:
            counts["processing"] = len(batch.results)
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": _iso(batch.created_at),
            "expires_at": _iso(batch.created_at + timedelta(hours=24)),
            "ended_at": _iso(batch.created_at + timedelta(seconds=batch.delay)) if ended else None,
            "archived_at": None,
            "cancel_initiated_at": _iso(batch.created_at) if batch.canceled else None,
            "results_url": (f"{self.base_url}/v1/messages/batches/{batch.id}/results")
            if ended
            else None,
        }

    def _find_batch(self, h: _Handler, record: RecordedRequest, batch_id: str) -> _Batch:
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            self._error(h, record, 404, "not_found_error", f"no batch {batch_id}")
        assert batch is not None
        return batch

    def _batch_get(self, h: _Handler, record: RecordedRequest, batch_id: str) -> None:
        self._send(h, record, 200, self._batch_json(self._find_batch(h, record, batch_id)))

    def _batch_cancel(self, h: _Handler, record: RecordedRequest, batch_id: str) -> None:
        batch = self._find_batch(h, record, batch_id)
        if not self._batch_ended(batch):
            batch.canceled = True
        self._send(h, record, 200, self._batch_json(batch))

    def _batch_results(self, h: _Handler, record: RecordedRequest, batch_id: str) -> None:
        batch = self._find_batch(h, record, batch_id)
        if not self._batch_ended(batch):
            self._error(
                h, record, 400, "invalid_request_error", "batch is still processing; no results"
            )
        lines = []
        for (custom_id, _), result in zip(batch.items, batch.results, strict=True):
            if batch.canceled:
                result = {"type": "canceled"}
            lines.append(json.dumps({"custom_id": custom_id, "result": result}) + "\n")
        self._send(
            h, record, 200, None, content_type="application/binary", raw="".join(lines).encode()
        )


# ---------------------------------------------------------------------- request parsing


def _read_body(h: _Handler) -> bytes:
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


def _validate_message_params(body: Any) -> str | None:
    """The subset of the real API's request validation that catches client bugs."""
    if not isinstance(body, dict):
        return "body: expected an object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: field required, must be >= 1"
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        return "temperature: must be between 0 and 1"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: must be user or assistant"
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            return f"messages.{index}.content: must be a string or a non-empty list"
        for block in content:
            if not isinstance(block, dict) or "type" not in block:
                return f"messages.{index}.content: blocks need a type"
            if block["type"] == "text" and not str(block.get("text", "")).strip():
                return f"messages.{index}.content: text content blocks must be non-empty"
    if messages[0].get("role") != "user":
        return "messages: the first message must use the user role"
    system = body.get("system")
    breakpoints = 0
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            return "system: must be a string or a list of text blocks"
        for block in system:
            if not isinstance(block, dict) or block.get("type") != "text":
                return "system: blocks must be text blocks"
            control = block.get("cache_control")
            if control is not None:
                if not isinstance(control, dict) or control.get("type") != "ephemeral":
                    return "system.cache_control: type must be ephemeral"
                breakpoints += 1
    if breakpoints > 4:
        return "A maximum of 4 blocks with cache_control may be provided."
    tools = body.get("tools")
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: must be a list"
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                return "tools: each tool needs a name"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return f"tools.{tool['name']}.input_schema: type must be object"
            names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in _CHOICES:
            return "tool_choice: invalid"
        if choice["type"] == "tool" and choice.get("name") not in names:
            return f"tool_choice: tool {choice.get('name')!r} is not in tools"
    return None


def _message_texts(body: dict[str, Any]) -> list[str]:
    out = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return out


def _first_user_text(body: dict[str, Any]) -> str:
    for message in body.get("messages") or []:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list) and content:
                return str(content[0].get("text", ""))
    return ""


def _forced_tool(body: dict[str, Any]) -> str | None:
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        return str(choice.get("name"))
    tools = body.get("tools") or []
    return str(tools[0]["name"]) if len(tools) == 1 else None


def _tagged(text: str, tag: str) -> str | None:
    """The text inside the first ``<tag ...>...</tag>``, one newline trimmed each side.

    Plain ``str.find``: a lazy ``.*?`` regex over a 40 KB prompt costs more CPU
    than the rest of the answer, and it runs on every request.
    """
    opening, closing, start = f"<{tag}", f"</{tag}>", 0
    while (at := text.find(opening, start)) != -1:
        after = at + len(opening)
        start = after
        if after < len(text) and (text[after].isalnum() or text[after] == "_"):
            continue
        head_end = text.find(">", after)
        end = text.find(closing, head_end + 1) if head_end != -1 else -1
        if end == -1:
            return None
        body = text[head_end + 1 : end]
        body = body[1:] if body.startswith("\n") else body
        return body[:-1] if body.endswith("\n") else body
    return None


def _classify(body: dict[str, Any]) -> tuple[RequestKind, str | None, str | None]:
    """Request kind, extraction key and chunk marker, from the prompt conventions."""
    tool = _forced_tool(body)
    text = _first_user_text(body)
    if tool == "write_sections":
        return "sections", None, None
    transcript = _tagged(text, "transcript")
    if tool == "record_facts" and transcript is not None:
        marker = re.search(r"\[\[chunk:([^\]]+)\]\]", transcript)
        return "extract", FakeAnthropicServer.key_of(transcript), marker and marker.group(1)
    if _tagged(text, "facts") is not None:
        return ("consolidate" if tool == "record_facts" else "memory"), None, None
    return "other", None, None


# ---------------------------------------------------------------------- answers

_TEMPERATURE_REJECTED = "`temperature` is deprecated for this model."
_GARBAGE = (
    "I'm sorry, but I can't produce that in the requested format right now. "
    "Here is a summary instead: the conversation covers several topics. ~~~ {{[[ nul ]]}"
)
_BAD_FACTS: dict[str, Any] = {
    "preferences": "dark mode, probably",
    "projects": 42,
    "dates": "sometime in May",
    "beliefs": {"belief": "privacy"},
    "decisions": True,
}
_BAD_SECTIONS: dict[str, Any] = {"soul": 1, "identity": [], "user": None}


def _respond(
    kind: str, body: dict[str, Any], reword: Rewording | None = None
) -> dict[str, Any] | str:
    text = _first_user_text(body)
    if kind == "extract":
        transcript = _tagged(text, "transcript") or ""
        return reword.extract(transcript) if reword else extract_facts(transcript)
    if kind == "consolidate":
        return consolidate_facts(_facts_in(text))
    if kind == "memory":
        return memory_markdown(_facts_in(text))
    if kind == "sections":
        samples = re.findall(r"<conversation[^>]*>\n?(.*?)</conversation>", text, re.S)
        return sections_from_memory(_tagged(text, "memory") or "", samples)
    return "OK."


def _facts_in(text: str) -> dict[str, Any]:
    data = _loads((_tagged(text, "facts") or "{}").encode())
    return data if isinstance(data, dict) else {}


# The answers a careful model would give, from the project's own fact rules
# and templates (the ones the offline provider uses): the fake tests what the
# pipeline does with answers, not a second copy of the rules.


def extract_facts(transcript: str) -> dict[str, Any]:
    """The durable facts the user's turns of ``transcript`` state."""
    return rules.extract(transcript).model_dump()


def consolidate_facts(facts: dict[str, Any]) -> dict[str, Any]:
    return rules.consolidate(Facts.model_validate(facts)).model_dump()


def memory_markdown(facts: dict[str, Any]) -> str:
    """MEMORY with the five sections, one bullet per fact."""
    return fallback_memory(Facts.model_validate(facts))


def sections_from_memory(memory: str, samples: list[str] | None = None) -> dict[str, Any]:
    """Five persona sections built from a MEMORY document (and conversation excerpts)."""
    return write_sections(memory, samples or []).model_dump()


def _tokens(text: str) -> int:
    return _tokens_len(len(text))


def _tokens_len(chars: int) -> int:
    return max(0, math.ceil(chars / 4))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


__all__ = [
    "DEFAULT_API_KEY",
    "FakeAnthropicServer",
    "Fault",
    "FaultKind",
    "RecordedRequest",
    "consolidate_facts",
    "extract_facts",
    "memory_markdown",
    "sections_from_memory",
]
