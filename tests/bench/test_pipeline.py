"""The pipeline benchmark's recall: what counts as finding a planted fact."""

from __future__ import annotations

from typing import Any

from bench.pipeline import score

CONVERSATION = "c-1"


def planted(*texts: str, decoys: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "facts": [{"conversation_id": CONVERSATION, "text": t} for t in texts],
        "decoys": [{"conversation_id": CONVERSATION, "text": t} for t in decoys],
    }


def found(**facts: list[Any]) -> list[dict[str, Any]]:
    return [{"conversation_id": CONVERSATION, "facts": facts}]


def test_a_date_written_iso_is_the_planted_date() -> None:
    truth = planted("My sister's wedding is on March 20, 2026.")
    iso = found(dates=[{"event": "Sister's wedding", "date": "2026-03-20"}])
    other_day = found(dates=[{"event": "Sister's wedding", "date": "2026-03-21"}])

    assert score(truth, iso)["found"] == 1
    assert score(truth, other_day)["found"] == 0


def test_saved_facts_count_like_the_map_steps() -> None:
    truth = planted("I really prefer spaces over tabs.")
    rows = found(preferences=[]) + found(
        preferences=["User said: I really prefer spaces over tabs."]
    )

    assert score(truth, rows)["recall"] == 1.0


def test_a_decoy_found_is_counted() -> None:
    truth = planted(decoys=("We decided to pause the newsletter because nobody had time.",))
    rows = found(
        decisions=[{"decision": "Decided to pause the newsletter", "context": "nobody had time"}]
    )

    assert score(truth, rows)["decoys_found"] == 1
