"""Errors a stage raises to say what went wrong, and whether trying again can help."""

from __future__ import annotations


class StageError(Exception):
    """Base class: the message is shown to operators (``imports.error``), so say what and where."""


class BadInput(StageError):
    """The export itself is unusable (malformed, empty, too large, unsafe).

    Retrying cannot help, so the import fails at once with this message.
    """


class TransientError(StageError):
    """A dependency failed in a way that may pass (network, rate limit, server error)."""
