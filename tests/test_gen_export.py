"""The export generator: deterministic, the same story in every format, sized on demand."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.gen_export import (
    FORMATS,
    Options,
    Persona,
    ScriptWriter,
    generate,
    main,
    write_export,
)


def test_same_seed_same_bytes_and_a_longer_export_extends_a_shorter_one(tmp_path: Path) -> None:
    for fmt in FORMATS:
        a, b = tmp_path / f"a-{fmt}.json", tmp_path / f"b-{fmt}.json"
        write_export(a, Options(conversations=15, seed=4, fmt=fmt))
        write_export(b, Options(conversations=15, seed=4, fmt=fmt))
        assert a.read_bytes() == b.read_bytes()
    short, long = generate(5, seed=4), generate(15, seed=4)
    assert long.conversations[:5] == short.conversations
    assert generate(5, seed=5).conversations != short.conversations


def test_every_format_tells_the_same_conversations() -> None:
    exports = {fmt: generate(30, seed=9, fact_rate=0.5, fmt=fmt) for fmt in FORMATS}
    ids = {
        "chatgpt": [c["id"] for c in exports["chatgpt"].conversations],
        "claude": [c["uuid"] for c in exports["claude"].conversations],
        "simplified": [c["id"] for c in exports["simplified"].conversations],
    }
    assert ids["chatgpt"] == ids["claude"] == ids["simplified"]
    facts = {fmt: e.truth.facts for fmt, e in exports.items()}
    assert facts["chatgpt"] == facts["claude"] == facts["simplified"] and facts["chatgpt"]
    assert exports["chatgpt"].truth.decoys == exports["claude"].truth.decoys


def test_fact_sentences_keep_the_first_person_forms() -> None:
    truth = generate(80, seed=2, fact_rate=0.5).truth
    starts = {
        "preferences": "I really prefer ",
        "projects": "I'm building ",
        "dates": "My ",
        "beliefs": "I strongly believe ",
        "decisions": "We decided to ",
    }
    assert {f.category for f in truth.facts} == set(starts)
    for fact in truth.facts + truth.decoys:
        assert fact.text.startswith(starts[fact.category]) and fact.text.endswith(".")
    assert all(
        ", a side project written with " in f.text for f in truth.facts if f.category == "projects"
    )
    assert all(" is on " in f.text for f in truth.facts if f.category == "dates")
    assert all(" because " in f.text for f in truth.facts if f.category == "decisions")


def test_target_size_shards_and_account_files(tmp_path: Path) -> None:
    out = tmp_path / "export.zip"
    truth = write_export(out, Options(target_mb=0.5, seed=3), zipped=True, shards=3)
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        shards = [json.loads(archive.read(f"conversations-{k:03d}.json")) for k in range(3)]
    assert {"user.json", "chat.html"} <= set(names)
    size = sum(len(json.dumps(s, ensure_ascii=False).encode()) for s in shards)
    assert 0.5 * 1024 * 1024 <= size < 0.7 * 1024 * 1024
    assert sum(len(s) for s in shards) == truth.conversations > 3


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, facts = tmp_path / "claude.json", tmp_path / "facts.json"
    args = ["--format", "claude", "--conversations", "7", "--seed", "1", "--fact-rate", "0.6"]
    assert main([*args, "-o", str(out), "--facts-out", str(facts)]) == 0
    assert "7 conversations" in capsys.readouterr().err
    truth = json.loads(facts.read_text(encoding="utf-8"))
    assert set(truth) == {"facts", "decoys", "memories", "instructions", "absent"}
    assert {"conversation_id", "category", "text"} == set(truth["facts"][0])
    assert len(json.loads(out.read_text(encoding="utf-8"))) == 7
    # And as a module, the way the Makefile and the benchmarks run it.
    module = subprocess.run(
        [sys.executable, "-m", "tests.gen_export", *args, "-o", "-"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    assert module.stdout == out.read_bytes()


def test_the_bundled_sample_is_what_make_sample_writes(tmp_path: Path) -> None:
    """``worker/samples/sample-export.zip`` is rebuilt by ``make sample``, never edited by hand."""
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = next(line for line in makefile.splitlines() if "-m tests.gen_export" in line)
    args = shlex.split(recipe.split("-m tests.gen_export", 1)[1])
    out = args.index("-o")
    assert args[out + 1] == "$(SAMPLE)" and "SAMPLE := worker/samples/sample-export.zip" in makefile
    args[out + 1] = str(tmp_path / "sample.zip")
    assert main(args) == 0
    with (
        zipfile.ZipFile(tmp_path / "sample.zip") as rebuilt,
        zipfile.ZipFile(REPO / "worker" / "samples" / "sample-export.zip") as bundled,
    ):
        assert rebuilt.namelist() == bundled.namelist()
        for name in bundled.namelist():
            assert rebuilt.read(name) == bundled.read(name), name


def test_pastes_are_code_logs_and_documents_that_come_back_with_facts_beside_them() -> None:
    persona = Persona(7)
    scripts = [ScriptWriter(7, i, 0.15, persona).write() for i in range(300)]
    turns = [t for s in scripts for t in s.kept if t.role == "user"]
    pasted = [t for t in turns if t.paste is not None]
    texts = [t.paste.text for t in pasted if t.paste is not None]
    assert any("def " in p and "    return " in p for p in texts)  # code
    assert any("Traceback (most recent call last):" in p for p in texts)  # logs
    assert any(p.startswith("# ") and "\n\n## " in p for p in texts)  # documents
    # Pasted again: in the same conversation, and the persona's files in several.
    assert len(texts) - len(set(texts)) >= 20
    assert (
        sum(
            1
            for s in scripts
            for f in persona.files
            if any(t.paste is not None and t.paste.text == f.text for t in s.kept)
        )
        >= 5
    )
    # Close to half of what users send (long messages are cut at 5,000 characters).
    own = sum(len(t.text) + len(t.after) for t in turns)
    paste_chars = sum(min(len(p), 5000) for p in texts)
    assert 0.35 < paste_chars / (own + paste_chars) < 0.6
    # Facts sit in the user's words before and after pastes, and now and then in their notes.
    facts = {f.text for s in scripts for f in s.facts}
    before = [t for t in pasted if any(f in t.text for f in facts)]
    after = [t for t in pasted if any(f in t.after for f in facts)]
    inside = [t for t in pasted if t.paste is not None and any(f in t.paste.text for f in facts)]
    assert before and after and inside
    assert all(t.paste is not None and t.paste.kind in ("md", "txt") for t in inside)
    # Nothing pasted speaks in the first person but the facts planted in it.
    for p in texts:
        rest = p
        for f in facts:
            rest = rest.replace(f, "")
        assert not re.search(r"\b(I|I'm|my|we|We|My)\b", rest), rest[:200]
