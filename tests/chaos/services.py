"""Slow collaborators for the chaos tests, served from the test process.

* :class:`StagedFake`: the fake Messages API with a latency per request kind
  (extraction calls short and jittered, the MEMORY and sections calls long),
  so that every LLM-bound stage stays open long enough to be hit by a kill.
* :class:`SlowStorage`: a stand-in for Supabase Storage that streams exports
  slowly (``download``, and ``chunk`` on a worker that lacks the file, last
  about a second) and a completion-callback receiver that answers late (a
  worker's callback sender waits on it; ``test_callback_kills`` has its own).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote

from tests.fakes.fake_anthropic import FakeAnthropicServer, RecordedRequest

SERVICE_KEY = "chaos-service-role-key-0123456789"


class StagedFake(FakeAnthropicServer):
    """The fake Messages API with per-kind latency (``extract`` jittered)."""

    def __init__(
        self,
        *,
        extract_latency: tuple[float, float] = (0.03, 0.08),
        kind_latency: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.extract_latency = extract_latency
        self.kind_latency = dict(kind_latency or {})
        self._rng = random.Random(1234)
        self._rng_lock = threading.Lock()

    def start(self) -> Self:
        super().start()
        if self._httpd is not None:
            _quiet_disconnects(self._httpd)
        return self

    def _maybe_http_fault(self, h: Any, record: RecordedRequest) -> Any:
        # Called once the request is classified, right before the base latency.
        if record.kind == "extract":
            lo, hi = self.extract_latency
            with self._rng_lock:
                delay = self._rng.uniform(lo, hi)
        else:
            delay = self.kind_latency.get(record.kind, 0.0)
        if delay > 0:
            self._stop.wait(delay)
        return super()._maybe_http_fault(h, record)


def _quiet_disconnects(server: ThreadingHTTPServer) -> None:
    """Killed workers drop their connections: not worth a traceback on stderr."""
    default = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            default(request, client_address)

    server.handle_error = handle_error  # type: ignore[method-assign]


class SlowStorage:
    """Supabase Storage object downloads (throttled) and a slow callback receiver."""

    def __init__(
        self, root: Path, *, download_seconds: float = 1.0, callback_seconds: float = 1.0
    ) -> None:
        self.root = root
        self.download_seconds = download_seconds
        self.callback_seconds = callback_seconds
        self.downloads: list[tuple[str, float]] = []
        self.callbacks: list[tuple[str, float]] = []
        self.alerts: list[bytes] = []
        self._lock = threading.Lock()
        storage = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                storage._get(self)

            def do_POST(self) -> None:
                storage._post(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        _quiet_disconnects(self._server)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def env(self) -> dict[str, str]:
        return {
            "SUPABASE_URL": self.url,
            "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
            "FULLPASS_CALLBACK_URL": f"{self.url}/callback",
            "FULLPASS_ALERT_WEBHOOK": f"{self.url}/alert",
        }

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        prefix = "/storage/v1/object/"
        path = unquote(h.path.split("?", 1)[0])
        if not path.startswith(prefix) or f"Bearer {SERVICE_KEY}" != h.headers.get("Authorization"):
            self._reply(h, 404 if path.startswith(prefix) else 400, b"{}")
            return
        target = (self.root / path[len(prefix) :]).resolve()
        if self.root.resolve() not in target.parents or not target.is_file():
            self._reply(h, 404, b'{"error":"not_found"}')
            return
        data = target.read_bytes()
        with self._lock:
            self.downloads.append((path, time.time()))
        pieces = 20
        step = max(1, -(-len(data) // pieces))
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/zip")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            for start in range(0, len(data), step):
                time.sleep(self.download_seconds / pieces)
                h.wfile.write(data[start : start + step])
                h.wfile.flush()
        except OSError:
            h.close_connection = True

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length)
        if h.path.startswith("/alert"):
            with self._lock:
                self.alerts.append(body)
            self._reply(h, 200, b"")
            return
        time.sleep(self.callback_seconds)
        with self._lock:
            self.callbacks.append((body.decode(errors="replace"), time.time()))
        self._reply(h, 200, b"")

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except OSError:
            h.close_connection = True

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
