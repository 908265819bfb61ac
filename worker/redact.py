"""Keeping secrets out of logs and ``error`` columns.

Exception text from HTTP clients can quote request headers or URLs; everything
that is logged or stored as an error passes through :func:`redact` first.

Once secrets are registered, every log record is redacted as it is created
(message, arguments and traceback), so no handler ever sees a secret: not only
the worker's own handler (:mod:`worker.logs`), but also any other one attached
to the process (an error tracker's, pytest's caplog).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

from worker.errors import FullpassError

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
    _redact_new_log_records()


def redact_record(record: logging.LogRecord) -> None:
    """Redact a log record in place: its message (arguments merged in) and its traceback."""
    try:
        message = record.getMessage()
    except Exception:  # malformed arguments: keep the text, drop what may not be shown
        message = f"{record.msg} [unformattable log arguments]"
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    record.msg = redact(message)
    record.args = None


_factory_installed = False


def _redact_new_log_records() -> None:
    global _factory_installed
    if _factory_installed:
        return
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def redact(text: str) -> str:
    for value in _known:
        text = text.replace(value, "[REDACTED]")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def error_text(exc: BaseException) -> str:
    """A one-line, secret-free description of an exception, bounded in length."""
    message = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, FullpassError):  # ours say what happened; others need their type
        message = f"{type(exc).__name__}: {message}"
    message = redact(" ".join(message.split()))
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return message
