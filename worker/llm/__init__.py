"""Language-model providers behind one protocol (:mod:`worker.llm.base`)."""

from __future__ import annotations

import logging

from worker.llm.base import LLMProvider
from worker.llm.budget import FleetBudget
from worker.settings import MODEL_STAGES, Settings

logger = logging.getLogger("fullpass.llm")


def make_provider(settings: Settings, budget: FleetBudget | None = None) -> LLMProvider:
    """The provider ``FULLPASS_LLM`` selects (``offline`` unless an API key is set).

    ``budget``: the fleet's shared rate budget the ``anthropic`` provider draws from.
    """
    if settings.llm == "anthropic":
        if settings.anthropic_api_key is None:
            raise ValueError("FULLPASS_LLM=anthropic needs ANTHROPIC_API_KEY")
        from worker.llm.anthropic_provider import AnthropicProvider

        return AnthropicProvider(settings, budget=budget)
    from worker.llm.offline import OfflineProvider

    provider: LLMProvider = OfflineProvider()
    logger.warning(
        "LLM provider: OFFLINE (%s). Facts, MEMORY and sections come from deterministic "
        "rules, not from a language model. Set ANTHROPIC_API_KEY to use Claude.",
        provider.model,
    )
    return provider


def for_stage(llm: LLMProvider, settings: Settings, stage: str) -> LLMProvider:
    """The provider ``stage`` calls: ``llm`` asking the stage's model (``FULLPASS_MODEL_<STAGE>``).

    A provider without models to choose from (``offline``) serves every stage as it is.
    """
    if stage not in MODEL_STAGES:
        return llm
    model = settings.stage_model(stage)
    with_model = getattr(llm, "with_model", None)
    if model == llm.model or with_model is None:
        return llm
    chosen: LLMProvider = with_model(model)
    return chosen
