"""Outgoing webhooks: the failure alert and the completion callback.

Both are best-effort: a webhook that is down must never fail an import, so
errors are logged (without secrets) and swallowed after a few tries.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from worker.redact import error_text
from worker.settings import Settings

logger = logging.getLogger("fullpass.notify")

TIMEOUT = httpx.Timeout(10.0, connect=5.0)


async def post_json(url: str, payload: dict[str, Any], *, attempts: int = 3) -> bool:
    """POST ``payload``; True when the receiver answered 2xx."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for attempt in range(1, attempts + 1):
            try:
                response = await client.post(url, json=payload)
                if response.is_success:
                    return True
                if response.status_code < 500 and response.status_code != 429:
                    logger.warning("webhook refused: HTTP %s", response.status_code)
                    return False
                logger.warning("webhook answered HTTP %s", response.status_code)
            except httpx.HTTPError as exc:
                logger.warning("webhook unreachable: %s", error_text(exc))
            if attempt < attempts:
                await asyncio.sleep(0.5 * 2**attempt)
    return False


async def alert(settings: Settings, payload: dict[str, Any]) -> None:
    """Tell operators an import failed for good (``FULLPASS_ALERT_WEBHOOK``)."""
    if settings.alert_webhook:
        await post_json(settings.alert_webhook, payload)


async def completed(settings: Settings, payload: dict[str, Any]) -> None:
    """Tell the app a full pass finished (``FULLPASS_CALLBACK_URL``)."""
    if settings.callback_url:
        await post_json(settings.callback_url, payload)
