"""read_export end to end on generated exports (every container and format) and broken files."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from jobs.ingest.chunker import ChunkConfig
from jobs.ingest.inspect import inspect_export
from jobs.ingest.reader import ReadStats, read_export
from worker.errors import BadInput

from .conftest import (
    LIMITS,
    GenExport,
    assert_facts_and_no_decoys,
    read_all,
    write_json,
    write_zip,
)

SEED: dict[str, Any] = {"conversations": 120, "seed": 11, "fact_rate": 0.3}


def test_chatgpt_json_keeps_facts_and_drops_decoys(gen_export: GenExport) -> None:
    generated = gen_export(**SEED)
    truth = generated.truth
    assert truth.decoys and truth.memories and truth.instructions and truth.absent
    convs, stats = read_all(generated.path)
    assert stats.format == "chatgpt" and stats.container == "json"
    assert stats.conversations == 120 and stats.skipped_conversations == 0
    assert stats.messages == sum(len(c.messages) for c in convs)
    assert not stats.problems
    assert_facts_and_no_decoys(convs, generated)
    kinds = {m.kind for c in convs for m in c.messages}
    assert kinds == {"text", "memory", "instructions"}
    assert all(m.role in ("user", "assistant") for c in convs for m in c.messages)
    assert all(c.created_at is not None and c.created_at.tzinfo for c in convs)


def test_chatgpt_zip(gen_export: GenExport) -> None:
    generated = gen_export(**SEED, zipped=True)
    convs, stats = read_all(generated.path)
    assert stats.container == "zip"
    assert stats.members == [f"{generated.path.name}:conversations.json"]
    assert len(convs) == 120
    assert_facts_and_no_decoys(convs, generated)


def test_sharded_chatgpt_zip_reads_every_shard_in_order(gen_export: GenExport) -> None:
    whole = gen_export(**SEED)
    generated = gen_export(**SEED, zipped=True, shards=4)
    convs, stats = read_all(generated.path)
    assert [m.split(":")[1] for m in stats.members] == [
        f"conversations-{i:03d}.json" for i in range(4)
    ]
    expected, _ = read_all(whole.path)
    assert [c.id for c in convs] == [c.id for c in expected]
    assert_facts_and_no_decoys(convs, generated)


@pytest.mark.parametrize("fmt", ["claude", "simplified"])
def test_other_formats_keep_facts(gen_export: GenExport, fmt: str) -> None:
    generated = gen_export(**SEED, fmt=fmt)
    convs, stats = read_all(generated.path)
    assert stats.format == fmt
    assert len(convs) == 120
    assert_facts_and_no_decoys(convs, generated)
    if fmt == "claude":  # edits and retries, artifacts and attachments were generated
        assert stats.skipped_items["abandoned_branch"] and generated.truth.absent
        assert any("[Attachment" in m.text for c in convs for m in c.messages)


def test_claude_zip(gen_export: GenExport) -> None:
    generated = gen_export(**SEED, fmt="claude", zipped=True)
    convs, stats = read_all(generated.path)
    assert (stats.format, stats.container) == ("claude", "zip")
    assert_facts_and_no_decoys(convs, generated)


def test_same_conversations_whatever_the_container(gen_export: GenExport, tmp_path: Path) -> None:
    generated = gen_export(**SEED)
    raw = generated.path.read_bytes()
    gz = tmp_path / "export.bin"
    gz.write_bytes(gzip.compress(raw))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_bytes(b'{"conversations": ' + raw + b"}")
    baseline, _ = read_all(generated.path)
    for path, container in ((gz, "gzip"), (wrapped, "json")):
        convs, stats = read_all(path)
        assert stats.container == container
        assert convs == baseline


def test_stats_as_dict_is_json_ready(gen_export: GenExport) -> None:
    _, stats = read_all(gen_export(**SEED).path)
    data = stats.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["skipped_items"]["system_message"] == 120
    assert list(data["skipped_items"]) == sorted(data["skipped_items"])


def test_read_export_streams(gen_export: GenExport, tmp_path: Path) -> None:
    """Conversations arrive before the end of the file has been read (here: is corrupt)."""
    raw = gen_export(**SEED).path.read_bytes()
    path = tmp_path / "cut.json"
    path.write_bytes(raw[: len(raw) * 3 // 4])
    stats = ReadStats()
    iterator = read_export(path, LIMITS, stats)
    assert next(iterator).messages
    assert stats.conversations == 1
    with pytest.raises(BadInput, match="truncated"):
        list(iterator)
    assert 1 < stats.conversations < 120


def test_empty_list_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="contains no conversations"):
        read_all(write_json(tmp_path / "e.json", []))


def test_all_garbage_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"none of the 3 conversations could be read.*#0"):
        read_all(write_json(tmp_path / "e.json", [1, {"mapping": 2}, "x"]))


def test_no_text_anywhere_is_bad_input(tmp_path: Path) -> None:
    data = [{"id": "a", "messages": [{"role": "system", "content": "x"}]}]
    with pytest.raises(BadInput, match="holds any user or assistant text"):
        read_all(write_json(tmp_path / "e.json", data))


def test_truncated_zip_member_names_the_member(gen_export: GenExport, tmp_path: Path) -> None:
    raw = gen_export(**SEED).path.read_bytes()
    path = write_zip(tmp_path / "cut.zip", {"conversations.json": raw[: len(raw) // 2]})
    with pytest.raises(BadInput, match=r"cut\.zip:conversations\.json: invalid JSON .* after \d+"):
        read_all(path)


def test_shard_with_garbage_fails_after_earlier_shards(tmp_path: Path) -> None:
    good = json.dumps([{"id": "a", "messages": [{"role": "user", "content": "x"}]}])
    path = write_zip(
        tmp_path / "e.zip",
        {"conversations-000.json": good, "conversations-001.json": "[{]"},
    )
    stats = ReadStats()
    got = []
    with pytest.raises(BadInput, match=r"conversations-001\.json"):
        got.extend(read_export(path, LIMITS, stats))
    assert [c.id for c in got] == ["a"]


def test_zip_bomb_through_read_export(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("conversations.json", b"[" + b" " * 40_000_000 + b"]")
    with pytest.raises(BadInput, match="zip bomb"):
        read_all(path)


def test_limits_apply_to_read_export(gen_export: GenExport) -> None:
    generated = gen_export(**SEED)
    with pytest.raises(BadInput, match="MAX_UNCOMPRESSED"):
        read_all(generated.path, dataclasses.replace(LIMITS, max_uncompressed_bytes=100_000))


def test_inspect_jsonl_and_summary(gen_export: GenExport) -> None:
    generated = gen_export(**SEED)
    out = io.StringIO()
    stats = inspect_export(generated.path, limits=LIMITS, config=ChunkConfig(), jsonl=True, out=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert stats.conversations == 120
    assert {line["conversation_id"] for line in lines} == {
        c.id for c in read_all(generated.path)[0]
    }
    assert set(lines[0]) == {
        "conversation_id",
        "chunk_index",
        "total_chunks",
        "chunk_tier",
        "token_count",
        "content",
        "content_hash",
    }
    summary = io.StringIO()
    inspect_export(generated.path, limits=LIMITS, config=ChunkConfig(), jsonl=False, out=summary)
    text = summary.getvalue()
    assert "format:          chatgpt" in text
    assert f"chunks (medium):  {len(lines):,} chunks" in text
    assert "system_message" in text and "time:" in text
