"""Outgoing webhooks: one total deadline per request, whatever the receiver does."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker import notify


class TrickleServer:
    """Answers 200, then sends one byte of body every ``every`` seconds, forever."""

    def __init__(self, every: float = 0.2) -> None:
        stop = self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                while not stop.wait(every):
                    try:
                        self.wfile.write(b".")
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


async def test_a_receiver_that_trickles_cannot_hold_the_worker() -> None:
    server = TrickleServer()
    try:
        started = time.monotonic()
        ok = await notify.post_json(server.url, {"event": "x"}, attempts=2, deadline=1.0)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert ok is False
    # Two attempts of at most one second each and a pause (not the 1 MB at 5 bytes a second).
    assert elapsed < 10.0
