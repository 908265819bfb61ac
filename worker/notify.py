"""Outgoing webhooks: the operator's failure alert.

Best-effort: a webhook that is down must never fail an import, so errors are
logged (without secrets) and swallowed after a few tries. (The app's
completion callback is delivered from an outbox: :mod:`worker.outbox`.) Each
request has one total deadline (``FULLPASS_WEBHOOK_TIMEOUT``, 10 s): a
receiver that accepts the connection and then trickles its answer a byte at
a time cannot hold a worker slot.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from worker.redact import error_text
from worker.retry import backoff
from worker.settings import Settings

logger = logging.getLogger("fullpass.notify")

DEADLINE_SECONDS = 10.0


async def post_json(
    url: str, payload: dict[str, Any], *, attempts: int = 3, deadline: float = DEADLINE_SECONDS
) -> bool:
    """POST ``payload``; True when the receiver answered 2xx within ``deadline`` seconds."""
    timeout = httpx.Timeout(deadline, connect=min(5.0, deadline))
    async with httpx.AsyncClient(timeout=timeout) as client:
        for attempt in range(1, attempts + 1):
            try:
                async with asyncio.timeout(deadline):
                    response = await client.post(url, json=payload)
                if response.is_success:
                    return True
                if response.status_code < 500 and response.status_code != 429:
                    logger.warning("webhook refused: HTTP %s", response.status_code)
                    return False
                logger.warning("webhook answered HTTP %s", response.status_code)
            except TimeoutError:
                logger.warning("webhook gave no complete answer within %gs", deadline)
            except httpx.HTTPError as exc:
                logger.warning("webhook unreachable: %s", error_text(exc))
            if attempt < attempts:
                await asyncio.sleep(backoff(attempt, base=1.0, cap=10.0))
    return False


async def alert(settings: Settings, payload: dict[str, Any]) -> None:
    """Tell operators an import failed for good (``FULLPASS_ALERT_WEBHOOK``)."""
    if settings.alert_webhook:
        await post_json(settings.alert_webhook, payload, deadline=settings.webhook_timeout)
