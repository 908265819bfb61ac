"""Keeping secrets out of logs and ``error`` columns.

Exception text from HTTP clients can quote request headers or URLs; everything
that is logged or stored as an error passes through :func:`redact` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"), "[REDACTED]"),
    # JWTs (Supabase service-role and anon keys are JWTs)
    (re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), "[REDACTED]"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/]{8,}=*"), r"\1[REDACTED]"),
    (
        re.compile(
            r"(?i)((?:api[_-]?key|password|secret|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]{4,}"
        ),
        r"\1[REDACTED]",
    ),
    (re.compile(r"(?i)(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@"), r"\1[REDACTED]@"),
]
_known: set[str] = set()
MAX_ERROR_CHARS = 2000


def register_secrets(values: Iterable[str]) -> None:
    """Remember secret values (API keys) so that they are masked wherever they show up."""
    _known.update(v for v in values if v and len(v) >= 6)


def redact(text: str) -> str:
    for value in _known:
        text = text.replace(value, "[REDACTED]")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def error_text(exc: BaseException) -> str:
    """A one-line, secret-free description of an exception, bounded in length."""
    message = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, _plain_message_types()):
        message = f"{type(exc).__name__}: {message}"
    message = redact(" ".join(message.split()))
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return message


def _plain_message_types() -> tuple[type[BaseException], ...]:
    from jobs.errors import StageError

    return (StageError,)
