"""The fake's rewording mode: the wording kinds, their determinism, and the HTTP hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.domain import rules
from jobs.domain.facts import DateFact, Decision, Project
from tests.conftest import make_settings
from tests.fakes.fake_anthropic import FakeAnthropicServer, extract_facts
from tests.fakes.plugin import anthropic_provider
from tests.fakes.rewording import (
    Rewording,
    conjugate,
    gist,
    iso_dates,
    merge_sentences,
    split_parts,
    third_person,
)
from worker.llm.base import ExtractionInput

PACK = """\
System: new conversation [c1] "Editors", dated 2024-01-02.
User: I really prefer spaces over tabs. I'm building Orrery, a side project written with Rust.

System: new conversation [c2] "Family", dated 2024-02-03.
User: My sister's wedding is on March 04, 2021. I started at Acme in March 2022.
User: I really prefer Emacs keybindings. I strongly believe small teams ship better software.
"""

#: Every kind off: the rules' answer, as it was before the mode existed.
VERBATIM = Rewording(third_person=0, summary=0, iso_date=0, merge=0)


@pytest.mark.parametrize(
    ("said", "written"),
    [
        ("I really prefer spaces over tabs.", "Prefers spaces over tabs."),
        ("I'm building Orrery, a CLI.", "Is building Orrery, a CLI."),
        ("I strongly believe X matters.", "Strongly believes X matters."),
        ("I live in Lyon with my partner.", "Lives in Lyon with their partner."),
        ("We decided to move billing to Stripe.", "Decided to move billing to Stripe."),
        ("My favourite editor is Helix.", "Favourite editor is Helix."),
        ("I have two kids.", "Has two kids."),
        ("I do not like tea.", "Doesn't like tea."),
        ("I've shipped Tallow.", "Has shipped Tallow."),
        ("I watch films with my son.", "Watches films with their son."),
    ],
)
def test_third_person(said: str, written: str) -> None:
    assert third_person(said) == written


def test_conjugation() -> None:
    assert [conjugate(v) for v in ("prefer", "go", "try", "stay", "switched", "can't")] == [
        "prefers", "goes", "tries", "stays", "switched", "can't",
    ]  # fmt: skip


def test_dates_become_iso() -> None:
    assert iso_dates("Wedding on June 14, 2019") == "Wedding on 2019-06-14"
    assert iso_dates("the 3rd of March 2021, Sept. 2022") == "the 2021-03-03, 2022-09"
    assert iso_dates("every May 4") == "every May 4"  # no year: nothing to write in ISO


def test_a_summary_is_the_first_clause_in_a_few_words() -> None:
    assert gist("Is building Orrery, a side project written with Rust.", 5) == "Is building Orrery"
    assert gist("Strongly believes open formats outlive every vendor", 6) == (
        "Believes open formats outlive every vendor"
    )
    assert gist("Switched from Vue to Svelte last year", 6) == "Switched from Vue to Svelte"


def test_merged_sentences_share_their_verb() -> None:
    assert merge_sentences("Prefers tabs.", "Prefers dark mode.") == "Prefers tabs and dark mode."
    assert merge_sentences("Prefers tabs.", "Hates decaf.") == "Prefers tabs, and hates decaf."


def test_with_every_kind_off_the_answer_is_the_rules_answer() -> None:
    transcript = "User: I really prefer tabs. My son's graduation is on June 14, 2019."
    assert VERBATIM.extract(transcript) == extract_facts(transcript)


def test_parts_and_their_ids() -> None:
    parts = split_parts(PACK)
    assert [p.ident for p in parts] == ["c1", "c2"]
    assert "spaces over tabs" in parts[0].text and "Emacs" in parts[1].text
    (whole,) = split_parts("User: hi")
    assert whole.ident is None and whole.text == "User: hi"


def test_every_kind_at_full_rate() -> None:
    reworded = Rewording(summary=1, merge=0).facts(PACK)
    texts: dict[str, list[object]] = {}
    for f in reworded:
        texts.setdefault(f.category, []).append(f.item)
    assert texts["preferences"] == ["Prefers spaces over tabs.", "Prefers Emacs keybindings."]
    orrery = Project(name="Orrery", description="Side project written with Rust", details="")
    assert texts["projects"] == [orrery]
    assert DateFact(event="Sister's wedding", date="2021-03-04") in texts["dates"]
    assert DateFact(event="Started at Acme", date="2022-03") in texts["dates"]
    assert texts["beliefs"] == ["Believes small teams ship better software."]
    # Each fact knows the part that said it.
    assert [sorted(f.parts) for f in reworded if f.category == "preferences"] == [[0], [1]]


def test_merges_join_facts_of_different_parts() -> None:
    merged = Rewording(merge=1).facts(PACK)
    (preference,) = [f for f in merged if f.category == "preferences"]
    assert preference.item == "Prefers spaces over tabs and Emacs keybindings."
    assert preference.parts == {0, 1}


def test_cited_sources_follow_the_headers() -> None:
    answer = Rewording(merge=1).extract(PACK)
    assert answer["preferences"] == [
        {"text": "Prefers spaces over tabs and Emacs keybindings.", "sources": ["c1", "c2"]}
    ]
    assert answer["projects"][0]["sources"] == ["c1"]
    # Without ids in the headers, or when told not to, nothing is cited.
    plain = PACK.replace("[c1] ", "").replace("[c2] ", "")
    assert Rewording(merge=1).extract(plain)["preferences"] == [
        "Prefers spaces over tabs and Emacs keybindings."
    ]
    assert Rewording(merge=1, cite=False).extract(PACK)["projects"][0].get("sources") is None
    stray = Rewording(stray_source=1).extract(PACK)
    assert {s for item in stray["dates"] for s in item["sources"]} == {"c9"}


def test_inventions_come_from_the_topic() -> None:
    transcript = "User: Sourdough again: my sourdough starter smells odd, what about the flour?"
    invented = Rewording(invent=1).extract(transcript)["preferences"]
    assert invented == ["Is interested in sourdough."]
    assert rules.extract(transcript).count() == 0


def test_the_same_seed_and_transcript_give_the_same_answer() -> None:
    a = Rewording(seed=5, summary=0.5, merge=0.5)
    assert a.extract(PACK) == a.extract(PACK)
    answers = {str(Rewording(seed=s, summary=0.5, merge=0.5).extract(PACK)) for s in range(12)}
    assert len(answers) > 1


def test_rates_are_checked() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Rewording(merge=1.5)
    with pytest.raises(ValueError, match="unknown rewording kinds"):
        Rewording().with_rates(paraphrase=0.5)
    assert Rewording().with_rates(merge=0.5).rates()["merge"] == 0.5


async def test_the_fake_rewords_when_asked(
    fake_anthropic: FakeAnthropicServer, tmp_path: Path
) -> None:
    settings = make_settings("postgresql://unused", tmp_path, **fake_anthropic.settings_env())
    provider = anthropic_provider(settings)
    item = ExtractionInput("c", "conv", "t", "User: We decided to rent a studio downtown.", None)
    verbatim = await provider.extract_facts(item)
    assert verbatim.value.decisions == [
        Decision(decision="We decided to rent a studio downtown.", context="")
    ]
    fake_anthropic.reword = Rewording()
    reworded = await provider.extract_facts(item)
    assert reworded.value.decisions == [
        Decision(decision="Decided to rent a studio downtown.", context="")
    ]
    fake_anthropic.reset()
    assert fake_anthropic.reword is None
