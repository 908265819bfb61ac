"""A tiny HTTP receiver on 127.0.0.1 that records POSTs (for webhook tests).

Given the callback secret, it checks every delivery's Standard Webhooks
signature twice — with the ``standardwebhooks`` verifier and with an
independent HMAC computed here — and answers 401 to one that fails either.
Its answers can be scripted (a status per delivery, then ``status``) and
slowed down (``delay``), and the deliveries it is answering are visible
(``in_flight``) so that a test can act while a POST is in flight.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

#: How far a webhook-timestamp may be from now (the spec's recommendation).
TOLERANCE_SECONDS = 5 * 60


def expected_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """The v1 signature, computed from the spec alone (not with the library)."""
    key = base64.b64decode(secret.removeprefix("v1,").removeprefix("whsec_"))
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def check_signature(secret: str, headers: dict[str, str], body: bytes) -> str | None:
    """None when both verifications pass, else what failed."""
    try:
        Webhook(secret.removeprefix("v1,")).verify(body, headers)
    except WebhookVerificationError as exc:
        return f"standardwebhooks: {exc}"
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > TOLERANCE_SECONDS:
        return "independent: timestamp missing or out of tolerance"
    wanted = expected_signature(secret, msg_id, timestamp, body)
    offered = headers.get("webhook-signature", "").split(" ")
    if not any(hmac.compare_digest(wanted, s) for s in offered):
        return "independent: no matching signature"
    return None


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    #: time.time() when the request had been read
    at: float
    #: the status answered (0 until the answer is sent)
    status: int = 0
    #: None without a secret; else whether the signature checked out
    verified: bool | None = None
    problem: str | None = None

    @property
    def json(self) -> Any:
        return json.loads(self.body or b"null")

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


class WebhookReceiver:
    def __init__(
        self,
        status: int = 200,
        *,
        secret: str | None = None,
        statuses: Iterable[int] = (),
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        #: (path, parsed JSON body) of every POST, as received
        self.received: list[tuple[str, Any]] = []
        self.deliveries: list[Delivery] = []
        #: webhook-ids of the deliveries being answered right now
        self.in_flight: set[str] = set()
        self.status = status
        self.secret = secret
        self.script: deque[int] = deque(statuses)
        self.delay = delay
        self.answer_headers = dict(headers or {})
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length)
        headers = {k.lower(): v for k, v in h.headers.items()}
        delivery = Delivery(h.path, headers, body, time.time())
        if self.secret is not None:
            delivery.problem = check_signature(self.secret, headers, body)
            delivery.verified = delivery.problem is None
        with self.lock:
            self.received.append((h.path, json.loads(body or b"null")))
            self.deliveries.append(delivery)
            status = self.script.popleft() if self.script else self.status
            if delivery.verified is False:
                status = 401
            if delivery.webhook_id:
                self.in_flight.add(delivery.webhook_id)
        try:
            if self.delay:
                time.sleep(self.delay)
            h.send_response(status)
            for name, value in self.answer_headers.items():
                h.send_header(name, value)
            h.send_header("Content-Length", "0")
            h.end_headers()
            delivery.status = status
        except OSError:
            h.close_connection = True
        finally:
            with self.lock:
                if delivery.webhook_id:
                    self.in_flight.discard(delivery.webhook_id)

    def on(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]

    def per_id(self, path: str | None = None) -> Counter[str]:
        """Deliveries per webhook-id (raw: a repeat counts)."""
        with self.lock:
            return Counter(
                d.webhook_id or "" for d in self.deliveries if path is None or d.path == path
            )

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
