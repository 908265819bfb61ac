"""The completion callback, sent from an outbox (``public.import_events``).

**Writing.** When an import ends — complete (a skipped pass included), failed
for good, or cancelled — a trigger on ``public.imports`` writes one event row
in the transaction that ends it, whatever code path ends it (revision 0006).
Its payload is computed from the database as that transaction commits, and
the trigger NOTIFYs ``fullpass_import_events``.

**Sending.** Every worker with ``FULLPASS_CALLBACK_URL`` runs :func:`loop`:
woken by the NOTIFY (on a connection of its own) or, failing that, every few
seconds and whenever a retry falls due, it claims due events (``FOR UPDATE
SKIP LOCKED``, so each event goes to one sender) and POSTs each one, signed
the Standard Webhooks way, within one total deadline
(``FULLPASS_CALLBACK_TIMEOUT``). A claim is a lease: the event is not due
again until the deadline and a margin have passed. A 2xx marks the event
delivered; anything else schedules the next attempt with backoff
(:func:`worker.retry.backoff`, from ``FULLPASS_CALLBACK_RETRY_BASE_SECONDS``,
a receiver's ``Retry-After`` honoured), and after ``FULLPASS_CALLBACK_ATTEMPTS``
attempts the event is given up (``failed_at``, ``last_error``, an error log).

**The guarantee.** An event is written with the change that causes it, so a
crash between that commit and the POST loses nothing and repeats nothing: the
event is still due, and is sent once, by whichever worker claims it. It is
marked delivered as soon as the receiver has said 2xx, and never sent again.
The one way a receiver gets an event twice: it received the request, but its
2xx was not recorded — the sender was killed while the request was in flight
or before the mark, the database went away before the mark, or the answer
came after the deadline. The event is then sent again once its lease or
backoff runs out, with the same ``webhook-id``: a receiver dedupes on it.

**Housekeeping** (:func:`housekeeping`, in every worker's maintenance loop):
an event still undelivered a day after it was written (no worker had a URL)
is given up, and finished events are deleted after a week.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool
from standardwebhooks import Webhook

from worker import queries
from worker.db import Conn
from worker.redact import error_text
from worker.retry import backoff
from worker.settings import Settings

logger = logging.getLogger("fullpass.outbox")

#: The channel the trigger notifies (revision 0006).
CHANNEL = "fullpass_import_events"
#: Without a notification, due events are looked for this often.
POLL_SECONDS = 5.0
#: Events claimed (and sent concurrently) at a time.
BATCH = 8
#: A claim holds an event this long beyond the request's deadline: a sender
#: that died with it lets it go again after that.
LEASE_MARGIN_SECONDS = 10.0
#: The longest wait between two attempts.
RETRY_CAP_SECONDS = 3600.0
#: An event not delivered within this long is given up.
EXPIRE_AFTER_SECONDS = 24 * 3600.0
#: Delivered and given-up events are deleted after this long.
KEEP_SECONDS = 7 * 24 * 3600.0
#: A Standard Webhooks key: 24 to 64 random bytes.
MIN_KEY_BYTES, MAX_KEY_BYTES = 24, 64
USER_AGENT = "fullpass-callback/1"


class CallbackSecretError(ValueError):
    """``FULLPASS_CALLBACK_SECRET`` is not a Standard Webhooks signing secret."""


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret.

    ``whsec_<base64>`` as the spec writes it, the same without the prefix, or
    Supabase's ``v1,whsec_<base64>``. Anything that is not base64 of 24 to 64
    bytes is refused: a receiver's library base64-decodes the secret too, and
    would check with another key than the one a lenient reading signed with.
    """
    value = secret.strip().removeprefix("v1,").removeprefix("whsec_")
    try:
        key = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise CallbackSecretError(
            "FULLPASS_CALLBACK_SECRET must be a Standard Webhooks secret: whsec_ followed by"
            f" the base64 of {MIN_KEY_BYTES} to {MAX_KEY_BYTES} random bytes"
            " (e.g. whsec_ and the output of `openssl rand -base64 32`)"
        )
    return key


def check(settings: Settings) -> None:
    """Refuse to start with a signing secret a receiver could not check (:func:`signing_key`)."""
    if settings.callback_secret is not None:
        signing_key(settings.callback_secret.get_secret_value())


def signed_headers(
    webhook: Webhook | None, event_id: str, body: bytes, at: datetime
) -> dict[str, str]:
    """The Standard Webhooks headers (the signature only with a secret)."""
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
    }
    if webhook is not None:
        headers["webhook-signature"] = webhook.sign(event_id, at, body)
    return headers


def body_of(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Event:
    """A claimed event: ``attempts`` counts the attempt about to be made."""

    id: UUID
    import_id: UUID
    kind: str
    payload: dict[str, Any]
    attempts: int
    lease: UUID


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: bool
    error: str | None = None
    retry_after: float | None = None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff decides


class Sender:
    """Claims due events and delivers them to ``FULLPASS_CALLBACK_URL``."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Conn],
        settings: Settings,
        client: httpx.AsyncClient,
        *,
        name: str | None = None,
    ) -> None:
        if not settings.callback_url:
            raise ValueError("FULLPASS_CALLBACK_URL is not set")
        self.pool = pool
        self.client = client
        self.url = settings.callback_url
        secret = settings.callback_secret
        self.webhook = Webhook(signing_key(secret.get_secret_value())) if secret else None
        self.max_attempts = settings.callback_attempts
        self.timeout = settings.callback_timeout
        self.retry_base = settings.callback_retry_base_seconds
        self.lease_seconds = self.timeout + LEASE_MARGIN_SECONDS
        #: Shown in ``import_events.leased_by`` while this sender holds an event.
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"

    async def deliver_due(self) -> int:
        """Send every event that is due now; returns how many were attempted."""
        attempted = 0
        while events := await self.claim():
            results = await asyncio.gather(
                *(self.deliver(e) for e in events), return_exceptions=True
            )
            attempted += len(events)
            for result in results:
                if isinstance(result, BaseException):
                    raise result  # the database went away: the loop backs off
        return attempted

    async def claim(self, limit: int = BATCH) -> list[Event]:
        params = {"limit": limit, "lease_seconds": self.lease_seconds, "worker": self.name}
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(queries.CLAIM_EVENTS, params)).fetchall()
        return [
            Event(r["id"], r["import_id"], r["kind"], r["payload"], r["attempts"], r["lease"])
            for r in rows
        ]

    async def deliver(self, event: Event) -> Outcome:
        outcome = await self.post(event)
        await self.record(event, outcome)
        return outcome

    async def post(self, event: Event) -> Outcome:
        """One attempt: the signed POST, within one total deadline."""
        body = body_of(event.payload)
        at = datetime.fromtimestamp(int(time.time()), UTC)
        headers = signed_headers(self.webhook, str(event.id), body, at)
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.client.post(self.url, content=body, headers=headers)
        except TimeoutError:
            return Outcome(False, f"no complete answer within {self.timeout:g}s")
        except Exception as exc:
            return Outcome(False, f"unreachable: {error_text(exc)}")
        if response.is_success:
            return Outcome(True)
        return Outcome(False, f"HTTP {response.status_code}", _retry_after(response))

    async def record(self, event: Event, outcome: Outcome) -> None:
        extra = {
            "event_id": str(event.id),
            "import_id": str(event.import_id),
            "attempt": event.attempts,
        }
        params: dict[str, Any] = {"id": event.id, "lease": event.lease, "error": outcome.error}
        async with self.pool.connection() as conn:
            if outcome.delivered:
                await conn.execute(queries.EVENT_DELIVERED, params)
                logger.info("callback delivered: %s", event.kind, extra=extra)
            elif event.attempts >= self.max_attempts:
                await conn.execute(queries.EVENT_GIVEN_UP, params)
                logger.error(
                    "callback given up after %d attempts: %s (%s)",
                    event.attempts,
                    outcome.error,
                    event.kind,
                    extra=extra,
                )
            else:
                asked = outcome.retry_after
                delay = backoff(
                    event.attempts,
                    base=self.retry_base,
                    cap=RETRY_CAP_SECONDS,
                    retry_after=None if asked is None else min(asked, RETRY_CAP_SECONDS),
                )
                await conn.execute(queries.EVENT_RETRY_LATER, {**params, "delay": delay})
                logger.warning(
                    "callback failed: %s (attempt %d of %d); next attempt in %gs",
                    outcome.error,
                    event.attempts,
                    self.max_attempts,
                    delay,
                    extra=extra,
                )

    async def next_due(self) -> float | None:
        """Seconds until the next undelivered event falls due (None: there is none)."""
        async with self.pool.connection() as conn:
            row = await (await conn.execute(queries.NEXT_EVENT_DUE)).fetchone()
        return None if row is None or row["seconds"] is None else float(row["seconds"])


async def listen(dsn: str, wake: asyncio.Event) -> None:
    """Set ``wake`` on every notification of :data:`CHANNEL`; reconnect when cut off.

    A notification is only a hint (any role may NOTIFY): the sender then looks
    at the table. While the connection is down, polling carries on alone.
    """
    failures = 0
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            try:
                await conn.execute(queries.LISTEN_EVENTS)
                if failures:
                    logger.info("callback listener reconnected")
                failures = 0
                wake.set()  # whatever was written while nobody listened
                async for _ in conn.notifies():
                    wake.set()
            finally:
                await conn.close()
        except Exception as exc:
            failures += 1
            if failures == 1:
                logger.warning(
                    "callback listener lost the database (%s): polling every %gs meanwhile",
                    error_text(exc),
                    POLL_SECONDS,
                )
            await asyncio.sleep(backoff(failures, base=1.0, cap=30.0))


async def loop(pool: AsyncConnectionPool[Conn], settings: Settings, dsn: str) -> None:
    """Deliver events until cancelled (returns at once without ``FULLPASS_CALLBACK_URL``)."""
    if not settings.callback_url:
        logger.info("FULLPASS_CALLBACK_URL is not set: completion callbacks are not sent")
        return
    if settings.callback_secret is None:
        logger.warning("FULLPASS_CALLBACK_SECRET is not set: completion callbacks are unsigned")
    timeout = httpx.Timeout(settings.callback_timeout, connect=min(5.0, settings.callback_timeout))
    wake = asyncio.Event()
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        sender = Sender(pool, settings, client)
        listener = asyncio.create_task(listen(dsn, wake), name="callback listener")
        failures = 0
        try:
            while True:
                wake.clear()
                try:
                    await sender.deliver_due()
                    due = await sender.next_due()
                    failures = 0
                    delay = POLL_SECONDS if due is None else min(max(due, 0.05), POLL_SECONDS)
                except Exception as exc:
                    failures += 1
                    logger.warning("callback sender: %s", error_text(exc))
                    delay = backoff(failures, base=1.0, cap=30.0)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener


async def housekeeping(pool: AsyncConnectionPool[Conn], settings: Settings) -> tuple[int, int]:
    """Give up events undelivered for a day, delete finished ones after a week.

    Returns (given up, deleted).
    """
    async with pool.connection() as conn:
        expired = await (
            await conn.execute(
                queries.EXPIRE_EVENTS,
                {
                    "seconds": EXPIRE_AFTER_SECONDS,
                    "reason": f"not delivered within {EXPIRE_AFTER_SECONDS / 3600:g} h",
                },
            )
        ).fetchall()
        pruned = await conn.execute(queries.PRUNE_EVENTS, {"seconds": KEEP_SECONDS})
    if expired:
        log = logger.warning if settings.callback_url else logger.info
        log(
            "%d completion callback(s) not delivered within %g h given up%s",
            len(expired),
            EXPIRE_AFTER_SECONDS / 3600,
            "" if settings.callback_url else " (FULLPASS_CALLBACK_URL is not set here)",
        )
    return len(expired), pruned.rowcount
