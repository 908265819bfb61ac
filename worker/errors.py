"""The one exception hierarchy, and what the runner does with each kind.

Every error fullpass raises on purpose derives from :class:`FullpassError`;
its message is shown to operators (``imports.error``, logs), so it says what
and where, and never holds a secret. The kind decides what happens next, in
one place (:func:`worker.runner`): the runner never inspects messages.

================  =====================================================
kind              the runner
================  =====================================================
BadInput          fails the import at once: retrying cannot help
NeedsOperator     fails the import at once and alerts: configuration,
                  credentials or quota must be fixed, then requeued
Transient         retries the stage with backoff (``retry_after`` wins
                  when the service named a wait), up to the attempts
anything else     (a bug, an unclassified error) retried like Transient
================  =====================================================

Per-item failures (one chunk's unusable answer) never reach the runner: the
stage records them against the item and goes on.
"""

from __future__ import annotations


class FullpassError(Exception):
    """Root of fullpass's errors; ``str(exc)`` is safe to record."""

    #: Seconds the failing service asked us to wait, when it said.
    retry_after: float | None = None


class BadInput(FullpassError):
    """The input itself is unusable (malformed, empty, too large, unsafe): fail now."""


class NeedsOperator(FullpassError):
    """Something only an operator can fix (a key refused, a missing setting): fail now."""


class Transient(FullpassError):
    """A dependency failed in a way that may pass (network, rate limit, 5xx)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StaleJob(FullpassError):
    """This job no longer owns its import (requeued, cancelled, or handed to
    another worker after this one stalled): stop at once and write nothing."""


class Unusable(FullpassError):
    """An answer (model, embedding) holds nothing usable: that item fails, the stage goes on."""
