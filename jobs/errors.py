"""The errors a stage raises (see :mod:`worker.errors` for what each kind does)."""

from __future__ import annotations

from worker.errors import BadInput, FullpassError, NeedsOperator, StaleJob, Transient, Unusable

#: Historical names, kept while callers move to :mod:`worker.errors`.
StageError = FullpassError
TransientError = Transient

__all__ = [
    "BadInput",
    "FullpassError",
    "NeedsOperator",
    "StageError",
    "StaleJob",
    "Transient",
    "TransientError",
    "Unusable",
]
