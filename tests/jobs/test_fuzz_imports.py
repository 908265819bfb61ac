"""Fuzz: hundreds of malformed and hostile exports through real imports and one real worker.

Every case is built deterministically from a seeded RNG (and ``tests/gen_export.py``
with fixed seeds): truncated JSON, ZIP and gzip at random offsets, wrong
top-level types, wrong types inside conversations, strings of several MB, small
zip bombs (honest and lying headers), unsafe ZIP member names, non-UTF-8 bytes,
deep nesting, empty files, random bytes, valid exports with garbage
conversations mixed in, gzip of garbage, hostile storage paths. Each is placed
in the storage directory and submitted as its own user's import; a few healthy
imports are submitted in the middle. One in-process worker (concurrency 4,
offline LLM) processes them all.

Each hostile import must end either ``failed`` at ``download`` or ``chunk``,
after one attempt (bad input is not retried), with an error that names the
problem (the pattern of its case; never a traceback or a bare exception
repr), or ``complete`` when only parts were bad, with the planted garbage
counted in the chunk stage's skip counts. The worker must still be running at
the end and the healthy imports must complete. Outcome counts are written to
``bench/results/fuzz-last-run.json``.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import random
import re
import struct
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.conftest import REPO, make_settings, query
from tests.helpers import gen_export, insert_import, running_worker

SEED = 20240607
RESULTS = REPO / "bench" / "results" / "fuzz-last-run.json"
NAMESPACE = uuid.UUID("f0220000-0000-4000-8000-000000000000")
DEADLINE_SECONDS = 150.0
MB = 1024 * 1024
ZIP_TIME = (2024, 1, 1, 0, 0, 0)

Outcome = Literal["failed", "complete"]
Storage = Literal["file", "traversal", "other_user", "missing", "symlink", "directory", "oversize"]

#: Errors of bad input are the stage's own sentences, never an exception's repr.
_EXCEPTION_PREFIX = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b\s*:")

TRUNCATED = r"invalid JSON|truncated|corrupt|not valid UTF-8|no JSON|is empty"
NOT_READ = r"none of the [\d,]+ conversations"
NOT_JSON = r"top-level JSON value is|invalid JSON"
CORRUPT = r"corrupt or truncated"
BROKEN_ZIP = r"starts like a ZIP but its directory cannot be read"
BOMB = r"zip bomb"
UNSAFE = r"ZIP member has an unsafe path"
DEEP = r"nested more than 512 levels"
UTF8 = r"not valid UTF-8"


@dataclass(frozen=True)
class Case:
    category: str
    label: str
    data: bytes
    expect: Outcome
    #: The error must match this (case-insensitive) when the import fails.
    pattern: str = ""
    stage: str = "chunk"
    storage: Storage = "file"
    #: For ``complete``: at least this many conversations kept ...
    min_conversations: int = 1
    #: ... at least this many entries that gave no conversation (planted garbage) ...
    min_skipped_conversations: int = 0
    #: ... and these skip reasons counted at least once.
    skipped_items: tuple[str, ...] = ()
    #: For ``complete``: something must have been skipped (garbage was planted).
    expect_skips: bool = False


@dataclass
class Base:
    """Valid material the hostile cases are cut from (parsed and raw)."""

    chatgpt: list[dict[str, Any]]
    claude: list[dict[str, Any]]
    simplified: list[dict[str, Any]]
    raw: dict[str, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------- containers


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = method
            archive.writestr(info, data)
    return buffer.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def dumps(value: object) -> bytes:
    """UTF-8 JSON; lone surrogates (which UTF-8 cannot carry) stay ``\\uXXXX`` escapes."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value).encode("ascii")


def patch_zip_sizes(data: bytes, file_size: int) -> bytes:
    """Make every header claim ``file_size`` uncompressed bytes (a lying zip bomb)."""
    out = bytearray(data)
    for match in re.finditer(rb"PK\x03\x04", data):
        struct.pack_into("<I", out, match.start() + 22, file_size)
    for match in re.finditer(rb"PK\x01\x02", data):
        struct.pack_into("<I", out, match.start() + 24, file_size)
    return bytes(out)


def patch_zip_flags(data: bytes, flags: int) -> bytes:
    """Set general-purpose flag bits (bit 0: encrypted) in every header."""
    out = bytearray(data)
    for match in re.finditer(rb"PK\x03\x04", data):
        old = struct.unpack_from("<H", out, match.start() + 6)[0]
        struct.pack_into("<H", out, match.start() + 6, old | flags)
    for match in re.finditer(rb"PK\x01\x02", data):
        old = struct.unpack_from("<H", out, match.start() + 8)[0]
        struct.pack_into("<H", out, match.start() + 8, old | flags)
    return bytes(out)


def raw_name_zip(name: bytes, data: bytes, utf8_flag: bool) -> bytes:
    """A one-member ZIP whose name bytes are written verbatim (zipfile would encode them)."""
    placeholder = b"N" * len(name)
    built = zip_of({placeholder.decode(): data}, zipfile.ZIP_STORED)
    built = built.replace(placeholder, name)
    return patch_zip_flags(built, 0x800) if utf8_flag else built


# --------------------------------------------------------------------------- mutations


def canonical_user_node(conv: dict[str, Any]) -> dict[str, Any] | None:
    """A user text message on the conversation's current branch."""
    mapping = conv["mapping"]
    node_id = conv.get("current_node")
    seen: set[str] = set()
    while isinstance(node_id, str) and node_id in mapping and node_id not in seen:
        seen.add(node_id)
        node = mapping[node_id]
        message = node.get("message")
        if (
            isinstance(message, dict)
            and message["author"]["role"] == "user"
            and message["content"].get("content_type") == "text"
            and message.get("recipient", "all") == "all"
        ):
            return message
        node_id = node.get("parent")
    return None


def entry_garbage(rng: random.Random) -> object:
    """An entry that can never be a conversation (counted as skipped, or as empty when
    no message in it can be read)."""
    choices: list[Callable[[], object]] = [
        lambda: rng.randint(-(10**12), 10**12),
        lambda: rng.random() * 1e6,
        lambda: "".join(rng.choice("abc{}[]\"'\\ é€😀") for _ in range(rng.randint(0, 40))),
        lambda: None,
        lambda: True,
        lambda: [1, "two", None, {"mapping": {}}],
        lambda: {},
        lambda: {"title": "no messages at all", "create_time": 1_700_000_000},
        lambda: {"mapping": [1, 2, 3], "title": "mapping is a list"},
        lambda: {"mapping": "nope"},
        lambda: {"chat_messages": "not a list", "uuid": "c"},
        lambda: {"chat_messages": {"0": {"text": "x"}}},
        lambda: {"messages": 12345, "id": "s"},
        lambda: {"messages": {"role": "user", "content": "x"}},
        lambda: {"id": ["unhashable"], "chat_messages": [{"sender": ["x"], "text": "hi"}]},
        lambda: {"messages": [{"role": {"who": "user"}, "content": "hi"}]},
    ]
    return rng.choice(choices)()


def wrong_type_value(rng: random.Random) -> object:
    return rng.choice(
        [
            7,
            -1.5,
            "string",
            "",
            None,
            True,
            [],
            [1, [2, [3]]],
            {},
            {"x": {"y": None}},
            2**62,
            -(2**62),
            1e300,
            "\u0000\ud800",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "0001-01-01T00:00:00+05:00",
            "2024-02-30T25:61:00",
        ]
    )


def mutate_chatgpt(conv: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Put wrong types somewhere inside a ChatGPT conversation (it may stay usable)."""
    conv = json.loads(json.dumps(conv))
    nodes = [n for n in conv["mapping"].values() if isinstance(n, dict)]
    messages = [n["message"] for n in nodes if isinstance(n.get("message"), dict)]
    for _ in range(rng.randint(1, 4)):
        target = rng.choice(["conv", "node", "message", "content", "author"])
        value = wrong_type_value(rng)
        if target == "conv":
            conv[rng.choice(["title", "id", "create_time", "update_time", "current_node"])] = value
        elif target == "node" and nodes:
            rng.choice(nodes)[rng.choice(["parent", "children", "message", "id"])] = value
        elif target == "message" and messages:
            key = rng.choice(["create_time", "recipient", "metadata", "weight", "content"])
            rng.choice(messages)[key] = value
        elif target == "content" and messages:
            content = rng.choice(messages)["content"]
            if isinstance(content, dict):
                content[rng.choice(["parts", "content_type", "text"])] = value
        elif messages:
            author = rng.choice(messages)["author"]
            if isinstance(author, dict):
                author[rng.choice(["role", "name", "metadata"])] = value
    return conv


def mutate_claude(conv: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    conv = json.loads(json.dumps(conv))
    messages = [m for m in conv["chat_messages"] if isinstance(m, dict)]
    for _ in range(rng.randint(1, 3)):
        value = wrong_type_value(rng)
        if messages and rng.random() < 0.8:
            message = rng.choice(messages)
            key = rng.choice(["content", "text", "created_at", "sender"])
            if key == "sender" and isinstance(value, list | dict):
                value = "robot"  # unhashable senders are entry-level garbage, tested apart
            message[key] = value
        else:
            conv[rng.choice(["name", "uuid", "created_at", "updated_at"])] = value
    return conv


def mutate_simplified(conv: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    conv = json.loads(json.dumps(conv))
    messages = [m for m in conv["messages"] if isinstance(m, dict)]
    for _ in range(rng.randint(1, 3)):
        value = wrong_type_value(rng)
        if messages and rng.random() < 0.8:
            message = rng.choice(messages)
            key = rng.choice(["content", "timestamp", "create_time"])
            message[key] = value
        else:
            conv[rng.choice(["title", "id", "create_time"])] = value
    return conv


def mixed_in(valid: list[Any], garbage: list[object], rng: random.Random) -> list[object]:
    out: list[object] = list(valid)
    for item in garbage:
        out.insert(rng.randint(0, len(out)), item)
    return out


def nested(depth: int, inner: bytes = b"1", *, objects: bool = False, pad: int = 0) -> bytes:
    space = b" " * pad
    if objects:
        return (b'{"a":' + space) * depth + inner + b"}" * depth
    return (b"[" + space) * depth + inner + b"]" * depth


# --------------------------------------------------------------------------- cases


def build_cases(base: Base, rng: random.Random) -> list[Case]:
    cases: list[Case] = []

    def add(category: str, label: str, data: bytes, expect: Outcome, **kw: Any) -> None:
        cases.append(Case(category, label, data, expect, **kw))

    gpt, claude, simple = base.chatgpt, base.claude, base.simplified
    raw_gpt, raw_claude, raw_simple = (
        base.raw["chatgpt"],
        base.raw["claude"],
        base.raw["simplified"],
    )
    gpt_zip = zip_of({"conversations.json": raw_gpt, "user.json": b"{}"})

    # Truncated JSON at random offsets (all three formats, plain, zipped, gzipped).
    for fmt, raw in (("chatgpt", raw_gpt), ("claude", raw_claude), ("simplified", raw_simple)):
        end = len(raw.rstrip())
        for i in range(8):
            cut = rng.randrange(1, end - 1)
            add("truncated_json", f"{fmt}@{cut} #{i}", raw[:cut], "failed", pattern=TRUNCATED)
    for i in range(8):
        cut = rng.randrange(4, len(gpt_zip) - 1)
        add("truncated_zip", f"zip@{cut} #{i}", gpt_zip[:cut], "failed", pattern=BROKEN_ZIP)
    for _ in range(8):
        cut = rng.randrange(1, len(raw_gpt.rstrip()) - 1)
        data = zip_of({"conversations.json": raw_gpt[:cut]})
        add("truncated_zip_member", f"member@{cut}", data, "failed", pattern=TRUNCATED)
    gzipped = gz(raw_gpt)
    for _ in range(8):
        cut = rng.randrange(2, len(gzipped) - 1)
        add("truncated_gzip", f"gzip@{cut}", gzipped[:cut], "failed", pattern=CORRUPT)

    # Wrong top-level types.
    top_level: list[tuple[str, bytes, str]] = [
        ("number", b"42", r"top-level JSON value is a number"),
        ("negative", b"-1.5e3", r"top-level JSON value is a number"),
        ("string", b'"conversations"', r"top-level JSON value is a string"),
        ("true", b"true", r"top-level JSON value is a boolean"),
        ("null", b"null", r"top-level JSON value is null"),
        ("html", b"<!DOCTYPE html><html><body>chat</body></html>", r"HTML or XML"),
        ("empty object", b"{}", r"no 'conversations' list \(keys: none\)"),
        ("other keys", dumps({"data": gpt, "version": 2}), r"no 'conversations' list"),
        ("conversations number", b'{"conversations": 5}', r"contains no conversations"),
        ("conversations object", dumps({"conversations": {"a": gpt[0]}}), r"no conversations"),
        ("empty list", b"[]", r"contains no conversations"),
        ("list of numbers", b"[1, 2, 3]", NOT_READ),
        ("list of lists", dumps([gpt]), NOT_READ),
        ("list of nulls", b"[null, null]", NOT_READ),
        ("list of strings", dumps(["a", "b", "c"]), NOT_READ),
        ("single non-conversation", dumps({"id": "x", "title": "t"}), NOT_READ),
        ("user.json", dumps({"id": "user-1", "email": "a@b.c", "phone": None}), NOT_READ),
    ]
    for label, data, pattern in top_level:
        add("wrong_top_level", label, data, "failed", pattern=pattern)

    # Wrong types inside conversations: every entry unusable ...
    for i in range(12):
        garbage = [entry_garbage(rng) for _ in range(rng.randint(1, 12))]
        add(
            "wrong_types_all_bad",
            f"#{i} ({len(garbage)})",
            dumps(garbage),
            "failed",
            pattern=NOT_READ + "|contains no conversations",
        )
    # ... and wrong types sprinkled inside otherwise valid conversations.
    for i in range(12):
        fmt = ("chatgpt", "claude", "simplified")[i % 3]
        source, mutate = {
            "chatgpt": (gpt, mutate_chatgpt),
            "claude": (claude, mutate_claude),
            "simplified": (simple, mutate_simplified),
        }[fmt]
        keep = rng.randint(1, len(source) - 1)
        convs: list[object] = list(source[:keep])
        convs += [mutate(c, rng) for c in source[keep:]]
        planted = rng.randint(1, 4)
        data = dumps(mixed_in(convs, [entry_garbage(rng) for _ in range(planted)], rng))
        add(
            "wrong_types_mixed",
            f"{fmt} #{i}",
            data,
            "complete",
            min_conversations=keep,
            min_skipped_conversations=planted,
            expect_skips=True,
        )

    # Valid exports with random garbage conversations mixed in (each container).
    for i in range(12):
        planted = rng.randint(1, 6)
        garbage = [entry_garbage(rng) for _ in range(planted)]
        fmt = ("chatgpt", "claude", "simplified", "mixed")[i % 4]
        source = {"chatgpt": gpt, "claude": claude, "simplified": simple}.get(
            fmt, gpt[:2] + claude[:2] + simple[:2]
        )
        data = dumps(mixed_in(list(source), garbage, rng))
        container = ("json", "zip", "gzip")[i % 3]
        if container == "zip":
            data = zip_of({"conversations.json": data})
        elif container == "gzip":
            data = gz(data)
        add(
            "garbage_mixed",
            f"{fmt}/{container} +{planted}",
            data,
            "complete",
            min_conversations=len(source),
            min_skipped_conversations=planted,
            expect_skips=True,
        )

    # Strings of a few MB.
    def huge(n_mb: float) -> str:
        sentence = "I keep a huge notebook of ideas, and this line repeats itself. "
        return (sentence * int(n_mb * MB / len(sentence) + 1))[: int(n_mb * MB)]

    big_gpt = json.loads(json.dumps(gpt[:2]))
    message = canonical_user_node(big_gpt[0])
    assert message is not None
    message["content"]["parts"] = [huge(3)]
    add(
        "huge_strings",
        "3 MB ChatGPT message",
        dumps(big_gpt),
        "complete",
        skipped_items=("text_truncated",),
    )
    big_simple = json.loads(json.dumps(simple[:2]))
    big_simple[0]["messages"][0]["content"] = huge(4)
    add(
        "huge_strings",
        "4 MB simplified message (gzip)",
        gz(dumps(big_simple)),
        "complete",
        skipped_items=("text_truncated",),
    )
    big_title = json.loads(json.dumps(claude[:2]))
    big_title[0]["name"] = huge(2)
    big_title[1]["uuid"] = huge(2)
    add("huge_strings", "2 MB title and id", dumps(big_title), "complete")
    big_meta = json.loads(json.dumps(gpt[:2]))
    big_meta[0]["junk"] = {huge(2): huge(1)}
    add(
        "huge_strings",
        "2 MB unknown key",
        zip_of({"conversations.json": dumps(big_meta)}),
        "complete",
    )
    add(
        "huge_strings",
        "3 MB top-level string",
        dumps(huge(3)),
        "failed",
        pattern=r"top-level JSON value is a string",
    )
    add(
        "huge_strings",
        "3 MB top-level key",
        dumps({huge(3): 1}),
        "failed",
        pattern=r"no 'conversations' list",
    )

    # Small zip bombs: honest headers, lying headers, nested, gzip.
    for n_mb in (8, 12, 16):
        data = zip_of({"conversations.json": b"[" + b" " * (n_mb * MB) + b"]"})
        add("zip_bomb", f"{n_mb} MB of spaces", data, "failed", pattern=BOMB)
    repeated = b"[" + b'{"messages": []},' * (MB // 2) + b"{}]"
    add(
        "zip_bomb",
        "8.5 MB of empty conversations",
        zip_of({"conversations.json": repeated}),
        "failed",
        pattern=BOMB,
    )
    for n_mb in (10, 16):
        honest = zip_of({"conversations.json": b"[" + b" " * (n_mb * MB) + b"]"})
        add(
            "zip_bomb",
            f"{n_mb} MB, headers claim 1 kB",
            patch_zip_sizes(honest, 1000),
            "failed",
            pattern=CORRUPT + "|" + BOMB,
        )
    inner = zip_of({"conversations.json": b"[" + b" " * (4 * MB) + b"]"})
    add(
        "zip_bomb",
        "zip in a zip",
        zip_of({"conversations.json": inner}),
        "failed",
        pattern=r"a ZIP archive \(a ZIP inside gzip or ZIP\?",
    )
    for n_mb in (10, 20):
        add(
            "zip_bomb",
            f"gzip of {n_mb} MB of spaces",
            gz(b" " * (n_mb * MB)),
            "failed",
            pattern=r"expands more than 200x|zip bomb",
        )

    # ZIP members whose names could escape a directory.
    for name in (
        "../conversations.json",
        "../../../../tmp/evil.sh",
        "/etc/conversations.json",
        "export/../../conversations.json",
        "C:/Windows/conversations.json",
        "export\\..\\conversations.json",
        "\\\\server\\share\\conversations.json",
        "a/b/../../../c",
    ):
        members = {"conversations.json": raw_gpt, name: b"owned"}
        if name.endswith("conversations.json"):
            members = {name: raw_gpt}
        add("zip_path_traversal", name, zip_of(members), "failed", pattern=UNSAFE)

    # Other hostile archives.
    add(
        "zip_other",
        "no conversations.json",
        zip_of({"user.json": b"{}", "chat.html": b"<html>"}),
        "failed",
        pattern=r"holds no conversations\.json.*found user\.json",
    )
    add(
        "zip_other",
        "empty archive",
        b"PK\x05\x06" + b"\x00" * 18,
        "failed",
        pattern=r"holds no conversations\.json.*found nothing",
    )
    add(
        "zip_other",
        "directories only",
        zip_of({"export/": b"", "export/sub/": b""}),
        "failed",
        pattern=r"holds no conversations\.json",
    )
    add(
        "zip_other",
        "password flag",
        patch_zip_flags(gpt_zip, 0x1),
        "failed",
        pattern=r"password-protected",
    )
    add(
        "zip_other",
        "bzip2 member",
        zip_of({"conversations.json": raw_gpt}, zipfile.ZIP_BZIP2),
        "failed",
        pattern=r"unsupported ZIP compression method 12",
    )
    add(
        "zip_other",
        "lzma member",
        zip_of({"conversations.json": raw_gpt}, zipfile.ZIP_LZMA),
        "failed",
        pattern=r"unsupported ZIP compression method 14",
    )
    many = {f"f{i}.txt": b"" for i in range(10_001)}
    many["conversations.json"] = raw_gpt
    add(
        "zip_other",
        "10,002 members",
        zip_of(many, zipfile.ZIP_STORED),
        "failed",
        pattern=r"members, over the limit of 10,000",
    )
    flipped = bytearray(zip_of({"conversations.json": raw_gpt}))
    middle = len(flipped) // 2
    flipped[middle : middle + 64] = bytes(b ^ 0x5A for b in flipped[middle : middle + 64])
    add("zip_other", "corrupt deflate data", bytes(flipped), "failed", pattern=CORRUPT)
    add(
        "zip_other",
        "invalid UTF-8 member name",
        raw_name_zip(b"conv\xff\xfe.json", raw_gpt, True),
        "failed",
        pattern=BROKEN_ZIP + "|holds no conversations",
    )
    nul_name = zip_of({"conversations.json": raw_gpt}).replace(
        b"conversations.json", b"conv\x00tions.json"
    )
    add(
        "zip_other",
        "NUL in member name",
        nul_name,
        "failed",
        pattern=UNSAFE + "|holds no conversations|" + BROKEN_ZIP,
    )
    sharded = zip_of(
        {
            "conversations-000.json": dumps(gpt[:2]),
            "conversations-001.json": raw_gpt[: len(raw_gpt) // 2],
        }
    )
    add("zip_other", "second shard truncated", sharded, "failed", pattern=TRUNCATED)
    add(
        "zip_other",
        "rar inside zip",
        zip_of({"conversations.json": b"Rar!\x1a\x07\x00junk"}),
        "failed",
        pattern=r"not JSON \(first byte 0x52\)|invalid JSON",
    )

    # Non-UTF-8 bytes.
    latin = dumps(simple[:2]).replace("é".encode(), b"\xe9")
    latin = latin.replace(b'"content": "', b'"content": "caf\xe9 ', 1)
    add("non_utf8", "latin-1 in a message", latin, "failed", pattern=UTF8 + "|invalid JSON")
    cp1252 = dumps(claude[:2]).replace(b'"text": "', b'"text": "\x93quoted\x94 ', 1)
    add("non_utf8", "cp1252 quotes", cp1252, "failed", pattern=UTF8 + "|invalid JSON")
    for label, bad in (
        ("overlong slash", b"\xc0\xaf"),
        ("CESU surrogate", b"\xed\xa0\x80"),
        ("lone continuation", b"\x80\x80"),
        ("truncated sequence", b"\xe2\x82"),
        ("0xff byte", b"\xff"),
        ("shift-jis", "日本語".encode("shift_jis")),
    ):
        data = dumps(gpt[:2]).replace(b'"parts": ["', b'"parts": ["' + bad, 1)
        add("non_utf8", label, data, "failed", pattern=UTF8 + "|invalid JSON")
    add("non_utf8", "byte outside strings", b"[\xff]", "failed", pattern=r"invalid JSON")
    add(
        "non_utf8",
        "UTF-16 LE with BOM",
        b"\xff\xfe" + json.dumps(simple).encode("utf-16-le"),
        "failed",
        pattern=r"UTF-16",
    )
    add(
        "non_utf8",
        "UTF-16 BE with BOM",
        b"\xfe\xff" + json.dumps(simple).encode("utf-16-be"),
        "failed",
        pattern=r"UTF-16",
    )
    add(
        "non_utf8",
        "UTF-16 LE without BOM",
        json.dumps(simple).encode("utf-16-le"),
        "failed",
        pattern=r"invalid JSON",
    )
    add(
        "non_utf8",
        "UTF-32 LE with BOM",
        json.dumps(simple).encode("utf-32"),
        "failed",
        pattern=r"UTF-16|UTF-32",
    )
    escapes = json.loads(json.dumps(simple[:2]))
    escapes[0]["messages"][0]["content"] = "nul\u0000 and a lone high \ud800 surrogate"
    escapes[0]["title"] = "\u0000 cut emoji \ud83d"
    escapes[0]["id"] = "\ud800\u0000"
    add("non_utf8", "NUL and lone high-surrogate escapes", json.dumps(escapes).encode(), "complete")
    # Known limitation: yajl2_c turns a lone *low* surrogate escape into CESU-8 bytes that
    # ijson then fails to decode, so the export is refused (with a specific error).
    low = dumps(simple[:2]).replace(b'"content": "', b'"content": "\\udc00 ', 1)
    add("non_utf8", "lone low-surrogate escape", low, "failed", pattern=UTF8)

    # Deep nesting.
    add("deep_nesting", "100k [", b"[" * 100_000, "failed", pattern=DEEP)
    add("deep_nesting", "600 balanced [", nested(600), "failed", pattern=DEEP)
    add("deep_nesting", "50k objects", nested(50_000, objects=True), "failed", pattern=DEEP)
    add("deep_nesting", "600 padded across buffers", nested(600, pad=2000), "failed", pattern=DEEP)
    deep_conv = dumps(gpt[:1])[:-2] + b', "deep": ' + nested(5000) + b"}]"
    add("deep_nesting", "5000 inside a conversation", deep_conv, "failed", pattern=DEEP)
    add("deep_nesting", "deep in gzip", gz(nested(20_000)), "failed", pattern=DEEP)
    add(
        "deep_nesting",
        "deep in zip",
        zip_of({"conversations.json": nested(20_000)}),
        "failed",
        pattern=DEEP,
    )
    add(
        "deep_nesting",
        "deep in a wrapper",
        b'{"conversations": ' + nested(3000) + b"}",
        "failed",
        pattern=DEEP,
    )
    ok_deep = dumps(gpt[:2])[:-2] + b', "meta": ' + nested(100, pad=1) + b"}]"
    add("deep_nesting", "100 levels inside a conversation (allowed)", ok_deep, "complete")
    brackets = json.loads(json.dumps(simple[:2]))
    brackets[0]["messages"][0]["content"] = "[[[{{{" * 20_000 + '\\"[[[' * 1000 + "\\" * 999
    add("deep_nesting", "brackets inside strings (allowed)", dumps(brackets), "complete")

    # Empty files.
    add("empty", "0 bytes", b"", "failed", pattern=r"export file is empty")
    add("empty", "whitespace", b" \n\t\r\n   ", "failed", pattern=r"no JSON in the file")
    add("empty", "BOM only", b"\xef\xbb\xbf", "failed", pattern=r"no JSON in the file")
    add("empty", "NUL bytes", b"\x00" * 100, "failed", pattern=r"not JSON \(first byte 0x00\)")
    add(
        "empty",
        "empty member",
        zip_of({"conversations.json": b""}),
        "failed",
        pattern=r"no JSON in the file",
    )
    add("empty", "gzip of nothing", gz(b""), "failed", pattern=r"no JSON in the file")
    add(
        "empty",
        "empty wrapper",
        b'{"conversations": []}',
        "failed",
        pattern=r"contains no conversations",
    )
    add(
        "empty",
        "conversations without text",
        dumps([{"messages": []}, {"mapping": {}}]),
        "failed",
        pattern=r"none of the 2 conversations holds any",
    )

    # Random bytes, bare and behind magic numbers that steer them into each parser.
    prefixes: list[tuple[str, bytes, str]] = [
        ("bare", b"", r"not JSON|invalid JSON|top-level|no JSON|this is a|UTF-16|corrupt|ZIP"),
        ("after [", b"[", r"invalid JSON|not valid UTF-8|none of the|nested"),
        ('after {"', b'{"', r"invalid JSON|not valid UTF-8"),
        ("after zip magic", b"PK\x03\x04", BROKEN_ZIP),
        ("after gzip magic", b"\x1f\x8b", CORRUPT),
    ]
    for label, prefix, pattern in prefixes:
        for i in range(6 if label == "bare" else 4):
            noise = rng.randbytes(rng.choice([1, 7, 100, 4096, 70_000, 300_000]))
            add(
                "random_bytes",
                f"{label} #{i} ({len(noise)} B)",
                prefix + noise,
                "failed",
                pattern=pattern,
            )

    # Gzip of garbage.
    add(
        "gzip_garbage",
        "gzip of random bytes",
        gz(rng.randbytes(50_000)),
        "failed",
        pattern=r"not JSON|invalid JSON|top-level|UTF-16|this is a",
    )
    add(
        "gzip_garbage",
        "gzip of truncated JSON",
        gz(raw_gpt[: len(raw_gpt) // 3]),
        "failed",
        pattern=TRUNCATED,
    )
    add(
        "gzip_garbage",
        "gzip of gzip",
        gz(gz(raw_gpt)),
        "failed",
        pattern=r"gzip data \(compressed twice\?",
    )
    add(
        "gzip_garbage",
        "gzip of a zip",
        gz(gpt_zip),
        "failed",
        pattern=r"a ZIP archive \(a ZIP inside gzip or ZIP\?",
    )
    bad_crc = bytearray(gz(raw_simple))
    bad_crc[-8:-4] = bytes(b ^ 0xFF for b in bad_crc[-8:-4])
    add("gzip_garbage", "wrong CRC", bytes(bad_crc), "failed", pattern=CORRUPT)
    bad_len = bytearray(gz(raw_simple))
    bad_len[-4:] = b"\x00\x00\x00\x00"
    add("gzip_garbage", "wrong length", bytes(bad_len), "failed", pattern=CORRUPT)
    scrambled = bytearray(gz(raw_gpt))
    at = len(scrambled) // 2
    scrambled[at : at + 32] = rng.randbytes(32)
    add(
        "gzip_garbage",
        "scrambled deflate",
        bytes(scrambled),
        "failed",
        pattern=CORRUPT + "|" + TRUNCATED,
    )
    add(
        "gzip_garbage",
        "trailing garbage",
        gz(raw_simple) + b"garbage!" * 8,
        "failed",
        pattern=CORRUPT,
    )
    add(
        "gzip_garbage",
        "gzip of HTML",
        gz(b"<html>" + b"x" * 1000),
        "failed",
        pattern=r"HTML or XML",
    )
    header_only = gz(raw_simple)[:10]
    add("gzip_garbage", "header only", header_only, "failed", pattern=CORRUPT)

    # Odd JSON.
    nan = dumps(gpt[:1]).replace(b'"create_time": ', b'"create_time": NaN, "x": ', 1)
    add("odd_json", "NaN timestamp", nan, "failed", pattern=r"invalid JSON")
    add(
        "odd_json",
        "comments",
        b"// exported\n" + raw_simple,
        "failed",
        pattern=r"not JSON \(first byte 0x2f\)|invalid JSON",
    )
    add("odd_json", "trailing garbage", raw_simple + b" garbage", "failed", pattern=r"invalid JSON")
    lines = b"\n".join(dumps(c) for c in simple)
    add("odd_json", "JSON lines", lines, "complete", min_conversations=len(simple))
    add(
        "odd_json",
        "JSON lines as conversations.jsonl in a ZIP",
        zip_of({"export/conversations.jsonl": b"\r\n".join(dumps(c) for c in claude)}),
        "complete",
        min_conversations=len(claude),
    )
    add("odd_json", "JSON lines, last cut", lines[:-7], "failed", pattern=TRUNCATED)
    add("odd_json", "JSON lines, then garbage", lines + b"\n]", "failed", pattern=r"invalid JSON")
    add("odd_json", "trailing comma", dumps(simple)[:-1] + b",]", "failed", pattern=r"invalid JSON")
    add(
        "odd_json",
        "single quotes",
        dumps(simple).replace(b'"', b"'"),
        "failed",
        pattern=r"invalid JSON",
    )
    weird_numbers = json.loads(json.dumps(gpt[:2]))
    weird_numbers[0]["create_time"] = 2**62
    weird_numbers[1]["update_time"] = -(2**62)
    weird_numbers[1]["create_time"] = 1.7e308
    add(
        "odd_json",
        "int64 / double extremes",
        dumps(weird_numbers),
        "complete",
        skipped_items=("bad_timestamp",),
    )
    # Numbers past int64 or double are refused by the parser (use_float=True), by name.
    for label, number in (
        ("2**64", b"18446744073709551616"),
        ("1e400", b"1e400"),
        ("5000-digit integer", b"1" * 5000),
    ):
        data = dumps(gpt[:2]).replace(
            b'"create_time": ', b'"create_time": ' + number + b', "x": ', 1
        )
        add("odd_json", label, data, "failed", pattern=r"overflow")
    dates = json.loads(json.dumps(simple[:3]))
    dates[0]["create_time"] = "0001-01-01T00:00:00Z"
    dates[1]["create_time"] = "9999-12-31T23:59:59.999999Z"
    for m in dates[2]["messages"]:
        m["timestamp"] = rng.choice(["0001-01-01", "9999-12-31T23:59:59+00:00", "1970-01-01"])
    add("odd_json", "dates at year 1 and 9999", dumps(dates), "complete")
    dup = dumps(simple[:2]).replace(b'"messages": ', b'"messages": 5, "messages": ', 1)
    add("odd_json", "duplicate keys", dup, "complete")

    # Other file types uploaded by mistake.
    for label, head, what in (
        ("RAR", b"Rar!\x1a\x07\x01\x00", "a RAR archive"),
        ("7-Zip", b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
        ("bzip2", b"BZh91AY&SY", "a bzip2 file"),
        ("xz", b"\xfd7zXZ\x00\x00", "an xz file"),
        ("PDF", b"%PDF-1.7\n", "a PDF document"),
    ):
        add(
            "wrong_file_type",
            label,
            head + rng.randbytes(2000),
            "failed",
            pattern=f"this is {what}",
        )
    add(
        "wrong_file_type",
        "chat.html",
        b"\n\n  <html><head></head><body>" + raw_simple,
        "failed",
        pattern=r"HTML or XML",
    )

    # Hostile storage paths (fail in download, before any byte is parsed).
    for storage, pattern in (
        ("traversal", r"contains a '\.' or '\.\.' segment"),
        ("other_user", r"is outside the folder of user"),
        ("missing", r"export file not found"),
        ("symlink", r"symbolic link.*refused|leads outside the storage directory"),
        ("directory", r"export file not found"),
        ("oversize", r"over the download limit"),
    ):
        add(
            "storage_path",
            storage,
            raw_simple,
            "failed",
            pattern=pattern,
            stage="download",
            storage=storage,
        )
    return cases


# --------------------------------------------------------------------------- the test


def make_base(work: Path) -> Base:
    work.mkdir(parents=True, exist_ok=True)
    raw: dict[str, bytes] = {}
    for fmt, n, seed in (("chatgpt", 6, 11), ("claude", 5, 12), ("simplified", 5, 13)):
        out = gen_export(work / f"{fmt}.json", fmt=fmt, conversations=n, seed=seed)
        raw[fmt] = out.read_bytes()
    return Base(
        chatgpt=json.loads(raw["chatgpt"]),
        claude=json.loads(raw["claude"]),
        simplified=json.loads(raw["simplified"]),
        raw=raw,
    )


def place(settings: Any, case: Case, user: uuid.UUID, index: int) -> str:
    """Put the case's file in place; return the storage path to submit."""
    root = settings.resolved_storage_dir
    folder = root / "user-imports" / str(user)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"export-{index}"
    path = folder / name
    if case.storage == "file":
        path.write_bytes(case.data)
    elif case.storage == "traversal":
        (root / "user-imports" / "secret.json").write_bytes(case.data)
        return f"user-imports/{user}/../secret.json"
    elif case.storage == "other_user":
        other = uuid.uuid5(NAMESPACE, f"other-{index}")
        (root / "user-imports" / str(other)).mkdir(parents=True, exist_ok=True)
        (root / "user-imports" / str(other) / name).write_bytes(case.data)
        return f"user-imports/{other}/{name}"
    elif case.storage == "missing":
        pass
    elif case.storage == "symlink":
        secret = root.parent / "outside-storage.json"
        secret.write_bytes(case.data)
        path.symlink_to(secret)
    elif case.storage == "directory":
        path.mkdir()
    elif case.storage == "oversize":
        with path.open("wb") as f:  # sparse: nothing is written, the size is checked first
            f.truncate(2 * 1024**3 + 1)
    return f"user-imports/{user}/{name}"


def check(case: Case, row: dict[str, Any], stage: dict[str, Any] | None) -> str | None:
    """What is wrong with the outcome of one case (None: as expected)."""
    status, error = row["status"], row["error"] or ""
    if status != case.expect:
        return f"ended {status} at {row['stage']} ({error[:300]!r}), expected {case.expect}"
    if status == "failed":
        if row["stage"] != case.stage:
            return f"failed at {row['stage']}, expected {case.stage}: {error[:300]!r}"
        if not error.strip():
            return "failed without an error"
        if "Traceback" in error or _EXCEPTION_PREFIX.match(error):
            return f"generic error: {error[:300]!r}"
        if not re.search(case.pattern, error, re.IGNORECASE):
            return f"error does not name the problem ({case.pattern!r}): {error[:300]!r}"
        if row["attempts"] != 1:
            return f"bad input was retried ({row['attempts']} attempts): {error[:200]!r}"
        return None
    output: dict[str, Any] = ((stage or {}).get("output") or {}).get("stats") or {}
    skipped_items: dict[str, int] = output.get("skipped_items") or {}
    # Entries that gave no conversation: refused whole, or without one readable message.
    skipped_conversations = int(output.get("skipped_conversations") or 0) + int(
        skipped_items.get("empty_conversation") or 0
    )
    if (row["conversation_count"] or 0) < case.min_conversations:
        return (
            f"kept {row['conversation_count']} conversations, expected ≥ {case.min_conversations}"
        )
    if skipped_conversations < case.min_skipped_conversations:
        return (
            f"skipped {skipped_conversations} conversations, "
            f"expected ≥ {case.min_skipped_conversations}: {output}"
        )
    if case.expect_skips and skipped_conversations + sum(skipped_items.values()) == 0:
        return f"garbage was planted but nothing was skipped: {output}"
    missing = [r for r in case.skipped_items if not skipped_items.get(r)]
    if missing:
        return f"skip reasons {missing} not counted: {skipped_items}"
    return None


def write_results(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_name(RESULTS.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(RESULTS)


@pytest.mark.slow
async def test_hostile_exports_fail_cleanly_or_complete(db_dsn: str, tmp_path: Path) -> None:
    started = time.monotonic()
    settings = make_settings(
        db_dsn, tmp_path, FULLPASS_MAX_ATTEMPTS=4, FULLPASS_RETRY_BASE_SECONDS=0
    )
    base = make_base(tmp_path / "base")
    cases = build_cases(base, random.Random(SEED))
    assert len(cases) >= 200

    healthy_dir = tmp_path / "healthy"
    healthy_dir.mkdir()
    healthy_files = [
        gen_export(healthy_dir / "chatgpt.zip", conversations=12, zipped=True, seed=3),
        gen_export(healthy_dir / "claude.json", fmt="claude", conversations=8),
        healthy_dir / "simplified.json.gz",
    ]
    simple = gen_export(healthy_dir / "simplified.json", fmt="simplified")
    healthy_files[2].write_bytes(gz(simple.read_bytes()))

    submitted: dict[uuid.UUID, Case] = {}
    healthy: list[uuid.UUID] = []
    built_s = time.monotonic() - started

    def submit_case(index: int, case: Case) -> None:
        user = uuid.uuid5(NAMESPACE, f"user-{index}")
        storage_path = place(settings, case, user, index)
        submitted[insert_import(db_dsn, user, storage_path)] = case

    def all_ids() -> list[uuid.UUID]:
        return [*submitted, *healthy]

    def terminal_rows() -> dict[uuid.UUID, dict[str, Any]]:
        rows = query(
            db_dsn,
            "select id, status, stage, error, attempts, conversation_count, chunk_count"
            " from public.imports where id = any(%s)",
            (all_ids(),),
        )
        return {r["id"]: r for r in rows}

    half = len(cases) // 2
    async with running_worker(settings, concurrency=4) as worker:
        for i, case in enumerate(cases[:half]):
            submit_case(i, case)
        # The healthy imports go in while the worker is busy with hostile ones.
        await asyncio.sleep(1.0)
        for j, path in enumerate(healthy_files):
            user = uuid.uuid5(NAMESPACE, f"healthy-{j}")
            storage_path = f"user-imports/{user}/{path.name}"
            target = settings.resolved_storage_dir / storage_path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
            healthy.append(insert_import(db_dsn, user, storage_path))
        for i, case in enumerate(cases[half:], start=half):
            submit_case(i, case)

        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            rows = terminal_rows()
            pending = [
                i for i, r in rows.items() if r["status"] not in ("complete", "failed", "cancelled")
            ]
            if not pending or worker.done() or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        worker_alive = not worker.done()
        worker_error = None if worker_alive else repr(worker.exception())

    stages = {
        r["import_id"]: r
        for r in query(
            db_dsn,
            "select import_id, output from public.import_stages"
            " where stage = 'chunk' and import_id = any(%s)",
            (all_ids(),),
        )
    }
    problems: list[str] = []
    outcomes: Counter[str] = Counter()
    by_category: dict[str, Counter[str]] = {}
    examples: dict[str, str] = {}
    for import_id, case in submitted.items():
        row = rows[import_id]
        outcome = f"{row['status']}" + (f" at {row['stage']}" if row["status"] == "failed" else "")
        outcomes[outcome] += 1
        by_category.setdefault(case.category, Counter())[outcome] += 1
        if row["status"] == "failed":
            examples.setdefault(case.category, row["error"])
        problem = check(case, row, stages.get(import_id))
        if problem:
            problems.append(f"{case.category} / {case.label}: {problem}")
    for import_id in healthy:
        row = rows[import_id]
        if row["status"] != "complete" or not row["chunk_count"]:
            problems.append(f"healthy import ended {row['status']}: {row['error']!r}")
    if not worker_alive:
        problems.append(f"the worker stopped: {worker_error}")

    write_results(
        {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seed": SEED,
            "hostile_imports": len(submitted),
            "healthy_imports": len(healthy),
            "healthy_complete": sum(rows[i]["status"] == "complete" for i in healthy),
            "outcomes": dict(sorted(outcomes.items())),
            "by_category": {k: dict(sorted(v.items())) for k, v in sorted(by_category.items())},
            "example_errors": dict(sorted(examples.items())),
            "worker_alive": worker_alive,
            "problems": problems,
            "build_seconds": round(built_s, 1),
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
