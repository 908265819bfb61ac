"""Containers: detection by content, member selection and the size / zip-bomb guards."""

from __future__ import annotations

import dataclasses
import gzip
import zipfile
from pathlib import Path

import pytest

from jobs.ingest.containers import Limits, open_json_streams, sniff
from worker.errors import BadInput
from worker.settings import Settings

from .conftest import LIMITS, write_gzip, write_zip, zip_bytes

DOC = b'[{"id": "a", "messages": [{"role": "user", "content": "hi"}]}]'


def drain(path: Path, limits: Limits = LIMITS) -> dict[str, bytes]:
    """Every stream's name and full content."""
    out: dict[str, bytes] = {}
    for stream in open_json_streams(path, limits):
        chunks = []
        while block := stream.read(7919):
            chunks.append(block)
        out[stream.name] = b"".join(chunks)
    return out


def test_limits_from_settings() -> None:
    settings = Settings(
        FULLPASS_MAX_DOWNLOAD_BYTES=10,
        FULLPASS_MAX_UNCOMPRESSED_BYTES=20,
        FULLPASS_MAX_ZIP_MEMBERS=30,
        FULLPASS_MAX_ZIP_RATIO=40.0,
    )
    assert Limits.from_settings(settings) == Limits(10, 20, 30, 40.0)


def test_detection_is_by_content_not_name(tmp_path: Path) -> None:
    zipped = write_zip(tmp_path / "export.json", {"conversations.json": DOC})
    gzipped = write_gzip(tmp_path / "export.zip", DOC)
    plain = tmp_path / "export.gz"
    plain.write_bytes(DOC)
    assert (sniff(zipped), sniff(gzipped), sniff(plain)) == ("zip", "gzip", "json")
    for path in (zipped, gzipped, plain):
        assert list(drain(path).values()) == [DOC]


def test_plain_and_gzip_streams_are_named_after_the_file(tmp_path: Path) -> None:
    assert drain(write_gzip(tmp_path / "x.json.gz", DOC)) == {"x.json.gz": DOC}


@pytest.mark.parametrize(
    ("magic", "what"),
    [(b"Rar!\x1a\x07\x00", "RAR"), (b"7z\xbc\xaf\x27\x1c", "7-Zip"), (b"%PDF-1.7", "PDF")],
)
def test_other_archives_are_named_in_the_error(tmp_path: Path, magic: bytes, what: str) -> None:
    path = tmp_path / "export.zip"
    path.write_bytes(magic + b"\x00" * 64)
    with pytest.raises(BadInput, match=what):
        drain(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(b"")
    with pytest.raises(BadInput, match="empty"):
        drain(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not found"):
        drain(tmp_path / "nope.json")


def test_zip_reads_only_the_conversations_member(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "e.zip",
        {
            "user.json": b"{}",
            "chat.html": b"<html></html>",
            "conversations.json": DOC,
            "message_feedback.json": b"[]",
        },
    )
    assert drain(path) == {"e.zip:conversations.json": DOC}


def test_sharded_zip_is_read_in_numeric_order(tmp_path: Path) -> None:
    members: dict[str, bytes | str] = {
        "conversations-010.json": b"[10]",
        "conversations-002.json": b"[2]",
        "conversations-001.json": b"[1]",
        "export_manifest.json": b"{}",
    }
    path = write_zip(tmp_path / "e.zip", members)
    assert list(drain(path).values()) == [b"[1]", b"[2]", b"[10]"]


def test_conversations_json_wins_over_shards_and_nesting_is_found(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "e.zip",
        {
            "__MACOSX/export/._conversations.json": b"junk",
            "export/conversations-000.json": b"[0]",
            "export/conversations.json": DOC,
            "export/deeper/conversations.json": b"[]",
        },
    )
    assert drain(path) == {"e.zip:export/conversations.json": DOC}


def test_zip_with_json_lines_of_conversations_is_read(tmp_path: Path) -> None:
    lines = DOC[1:-1] + b"\n" + DOC[1:-1] + b"\n"
    path = write_zip(tmp_path / "e.zip", {"export/conversations.jsonl": lines, "user.json": b"{}"})
    assert drain(path) == {"e.zip:export/conversations.jsonl": lines}
    both = write_zip(
        tmp_path / "both.zip", {"conversations.jsonl": lines, "conversations.json": DOC}
    )
    assert drain(both) == {"both.zip:conversations.json": DOC}


def test_zip_without_conversations_lists_what_it_found(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "e.zip", {"user.json": b"{}", "chat.html": b"<html/>"})
    with pytest.raises(BadInput, match=r"no conversations\.json.*user\.json, chat\.html"):
        drain(path)


@pytest.mark.parametrize(
    "evil", ["../evil.json", "a/../../evil.json", "/etc/passwd", "C:/x.json", "a\\..\\b.json"]
)
def test_zip_with_unsafe_member_names_is_refused(tmp_path: Path, evil: str) -> None:
    path = write_zip(tmp_path / "e.zip", {"conversations.json": DOC, evil: b"[]"})
    with pytest.raises(BadInput, match="unsafe path"):
        drain(path)


def test_zip_member_count_limit(tmp_path: Path) -> None:
    members: dict[str, bytes | str] = {f"f{i}.txt": b"" for i in range(20)}
    members["conversations.json"] = DOC
    path = write_zip(tmp_path / "e.zip", members)
    with pytest.raises(BadInput, match="21 members"):
        drain(path, dataclasses.replace(LIMITS, max_zip_members=20))


def test_zip_bomb_is_refused_from_its_headers(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "bomb.zip", {"conversations.json": b"[" + b" " * 50_000_000 + b"]"})
    assert path.stat().st_size < 200_000
    with pytest.raises(BadInput, match="zip bomb"):
        drain(path)


def test_gzip_bomb_is_refused_while_streaming(tmp_path: Path) -> None:
    path = write_gzip(tmp_path / "bomb.gz", b"[" + b" " * 30_000_000 + b"]")
    with pytest.raises(BadInput, match="zip bomb"):
        drain(path)


def test_uncompressed_total_is_enforced_on_bytes_read(tmp_path: Path) -> None:
    plain = tmp_path / "big.json"
    plain.write_bytes(b"[" + b"1," * 5000 + b"1]")
    with pytest.raises(BadInput, match="MAX_UNCOMPRESSED"):
        drain(plain, dataclasses.replace(LIMITS, max_uncompressed_bytes=4096))


def test_uncompressed_total_counts_all_shards(tmp_path: Path) -> None:
    members: dict[str, bytes | str] = {
        f"conversations-{i:03d}.json": b"[" + b"0," * 1000 + b"0]" for i in range(3)
    }
    path = write_zip(tmp_path / "e.zip", members)
    with pytest.raises(BadInput, match="MAX_UNCOMPRESSED"):
        drain(path, dataclasses.replace(LIMITS, max_uncompressed_bytes=5000))


def test_download_size_limit(tmp_path: Path) -> None:
    plain = tmp_path / "e.json"
    plain.write_bytes(DOC)
    with pytest.raises(BadInput, match="MAX_DOWNLOAD"):
        drain(plain, dataclasses.replace(LIMITS, max_download_bytes=10))


def test_truncated_zip_is_bad_input(tmp_path: Path) -> None:
    data = zip_bytes({"conversations.json": DOC * 100})
    path = tmp_path / "cut.zip"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="truncated"):
        drain(path)


def test_corrupt_zip_member_data_is_bad_input(tmp_path: Path) -> None:
    data = bytearray(zip_bytes({"conversations.json": DOC * 100}))
    data[60:80] = b"\xff" * 20  # inside the deflate stream of the only member
    path = tmp_path / "bad.zip"
    path.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="corrupt"):
        drain(path)


def test_truncated_gzip_is_bad_input(tmp_path: Path) -> None:
    data = gzip.compress(DOC * 1000)
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInput, match="truncated"):
        drain(path)


def test_unsupported_zip_compression_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("conversations.json", DOC)
    with pytest.raises(BadInput, match="compression method"):
        drain(path)


def test_streams_are_closed_one_by_one(tmp_path: Path) -> None:
    members: dict[str, bytes | str] = {f"conversations-{i:03d}.json": b"[]" for i in range(3)}
    path = write_zip(tmp_path / "e.zip", members)
    streams = open_json_streams(path, LIMITS)
    first = next(streams)
    assert first.read() == b"[]"
    second = next(streams)
    with pytest.raises(ValueError):
        first.read()  # the previous member was closed when the next one was asked for
    streams.close()
    with pytest.raises(ValueError):
        second.read()
