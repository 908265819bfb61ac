"""The quality harness: end to end against the fake, its matching rule, its cost estimate and
the confirmation a run against the real API needs."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from bench import quality
from bench.quality import Estimate, Label, confirm, estimate, load_set, main, matches
from tests.fakes.fake_anthropic import FakeAnthropicServer

#: A small subset: two kinds of hard case and a few generated conversations.
SUBSET = ["--case", "changed", "--case", "other-people", "--case", "generated", "--generated", "6"]


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "FULLPASS_MODEL"):
        monkeypatch.delenv(name, raising=False)


def run(argv: list[str], stdin: str | None = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, stdin=None if stdin is None else io.StringIO(stdin), out=out)
    return code, out.getvalue()


def test_the_harness_runs_end_to_end_against_the_fake(no_key: None, tmp_path: Path) -> None:
    results = tmp_path / "quality.json"
    code, out = run([*SUBSET, "--seeds", "2", "--out", str(results)])
    assert code == 0
    assert "AGAINST THE FAKE MESSAGES API" in out and "not of a model" in out
    result = json.loads(results.read_text())
    assert result["backend"] == "fake" and result["rewording"]["merge"] > 0
    assert result["eval_set"]["conversations"] == 6 + 10 + 4
    q = result["quality"]
    for figure in (q["precision"], q["recall"], q["memory_coverage"]):
        assert 0 < figure <= 1
    assert q["contradictions"]["of"] == 5
    # The project and the date that changed are superseded by name: reduce keeps the
    # later value with the earlier one as "previously".
    resolved = {c["fact"] for c in q["contradictions"]["detail"] if c["resolved"]}
    assert {"lumenfold", "wedding-date"} <= resolved
    assert set(q["forbidden_by_kind"]) == {"other_people"}
    both = result["attribution"]
    assert set(both) == {"cited ids", "word overlap only"}
    assert all(a["facts"] > 0 and len(a["by_seed"]) == 2 for a in both.values())
    usage = result["usage"]
    assert usage["total"]["calls"] == usage["extract"]["calls"] + usage["memory"]["calls"] > 1
    assert result["cost_usd"]["total"] > 0
    assert "## Preferences" in result["memory_md"]
    for row in ("precision", "recall", "contradiction resolution", "MEMORY coverage", "cost"):
        assert row in out


def label(**kw: Any) -> Label:
    return Label(fact="f", **{"text": "Lives in Lyon.", **kw})


def test_matching_tolerates_paraphrase_and_knows_what_a_fact_is_about() -> None:
    lyon = label(alternatives=("Moved to Lyon.",), keywords=(("lyon",),))
    assert matches("Just moved into the new place in Lyon.", lyon)
    assert matches("LIVES IN LYON, FRANCE", lyon)
    assert not matches("Lives in Lille.", lyon)  # the keyword is missing
    vegan = label(text="Is vegan.", keywords=(("vegan",),), unless=("brother",))
    assert matches("Is a vegan.", vegan)
    assert not matches("Their brother is a vegan.", vegan)
    # Accents, languages and word endings.
    veg = label(text="Is vegetarian.", keywords=(("veget", "végét"),))
    assert matches(
        "Est végétarienne depuis dix ans.", label(text="Est végétarienne.", keywords=veg.keywords)
    )
    assert matches(
        "Loves playing the violin.", label(text="Plays the violin.", keywords=(("violin",),))
    )
    # Dates in any written form; phrases in order.
    wedding = label(text="Wedding on 2025-09-13.", date="2025-09-13", keywords=(("wedding",),))
    assert matches("Wedding — 2025-09-13", wedding)
    assert matches("Our wedding is on September 13, 2025.", wedding)
    assert not matches("Wedding — 2025-06-21", wedding)
    quotes = label(text="Prefers double quotes.", keywords=(("double quotes over single",),))
    assert matches("Prefers double quotes over single quotes.", quotes)
    assert not matches("Prefers single quotes over double quotes.", quotes)


def test_the_estimate_follows_the_packing_and_is_not_beaten_by_the_bill(
    no_key: None, tmp_path: Path
) -> None:
    eval_set = load_set(cases=["changed", "generated"], generated=6)
    once = estimate(eval_set, pack_tokens=10_000, baseline=False)
    twice = estimate(eval_set, pack_tokens=10_000, baseline=True)
    small = estimate(eval_set, pack_tokens=1_000, baseline=False)
    assert 0 < once.cost_usd < twice.cost_usd
    assert twice.calls - 1 == 2 * (once.calls - 1)  # the map step twice, MEMORY once
    assert small.calls > once.calls
    results = tmp_path / "q.json"
    code, _ = run(
        ["--case", "changed", "--case", "generated", "--generated", "6", "--seeds", "1",
         "--no-baseline", "--out", str(results)]
    )  # fmt: skip
    assert code == 0
    spent = json.loads(results.read_text())
    assert spent["usage"]["total"]["calls"] == once.calls
    assert spent["cost_usd"]["total"] <= once.cost_usd


ESTIMATE = Estimate(calls=7, input_tokens=70_000, output_tokens=8_000, cost_usd=0.11, passes=1)


@pytest.mark.parametrize(
    ("yes", "stdin", "confirmed", "says"),
    [
        (True, None, True, "--yes given"),
        (False, None, False, "no stdin"),
        (False, "", False, "nothing to read on stdin"),
        (False, "y\n", True, "[y/N]"),
        (False, " YES \n", True, "[y/N]"),
        (False, "n\n", False, "nothing was sent"),
        (False, "sure, why not\n", False, "nothing was sent"),
    ],
)
def test_a_real_run_is_confirmed_first(
    yes: bool, stdin: str | None, confirmed: bool, says: str
) -> None:
    out = io.StringIO()
    given = None if stdin is None else io.StringIO(stdin)
    assert confirm(ESTIMATE, yes=yes, stdin=given, out=out) is confirmed
    assert "Estimated cost: $0.11" in out.getvalue() and says in out.getvalue()


def test_a_closed_stdin_is_no_answer() -> None:
    closed = io.StringIO("y\n")
    closed.close()
    assert not confirm(ESTIMATE, yes=False, stdin=closed, out=io.StringIO())


def test_with_a_key_it_asks_then_runs_the_configured_model(
    fake_anthropic: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The "real API" branch, pointed at the fake with its fake key.
    monkeypatch.setenv("ANTHROPIC_API_KEY", fake_anthropic.api_key)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.base_url)
    monkeypatch.setenv("FULLPASS_MODEL", "claude-test-model")
    results = tmp_path / "q.json"
    argv = ["--case", "changed", "--out", str(results)]

    code, out = run(argv, stdin="")
    assert code == 2 and "Refused" in out and "Estimated cost" in out
    assert fake_anthropic.requests == [] and not results.exists()

    code, out = run(argv, stdin="n\n")
    assert code == 2 and fake_anthropic.requests == []

    code, out = run([*argv, "--yes"], stdin=None)
    assert code == 0
    assert "AGAINST THE FAKE" not in out and "claude-test-model" in out
    result = json.loads(results.read_text())
    assert (result["backend"], result["model"], result["rewording"]) == (
        "anthropic", "claude-test-model", None,
    )  # fmt: skip
    assert set(result["attribution"]) == {"cited ids"}  # no baseline unless asked: it costs
    assert {r.body["model"] for r in fake_anthropic.calls("extract")} == {"claude-test-model"}

    fake_anthropic.reset()
    code, _ = run([*argv, "--baseline"], stdin="yes\n")
    assert code == 0
    assert set(json.loads(results.read_text())["attribution"]) == {
        "cited ids", "word overlap only",
    }  # fmt: skip


def test_the_generated_labels_come_from_the_planted_facts() -> None:
    assert quality.planted_label("c", "My house move is on June 14, 2019.") == {
        "fact": "gen:house-move-on-2019-06-14",
        "conversation": "c",
        "text": "House move on 2019-06-14.",
        "date": "2019-06-14",
    }
    project = quality.planted_label(
        "c", "I'm building Pinecone Ledger, a side project written with Go and DuckDB."
    )
    assert project["keywords"] == ["pinecone ledger"]
    with pytest.raises(ValueError, match="not a planted fact"):
        quality.planted_label("c", "I like tea.")
