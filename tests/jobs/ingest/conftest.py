"""Helpers for the ingestion tests: generated exports, hand-made trees, small archives."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobs.ingest.model import Conversation
from jobs.ingest.reader import Limits, ReadStats, read_export
from tests.gen_export import Options, Planted, Truth, write_export

LIMITS = Limits(
    max_download_bytes=512 * 1024**2,
    max_uncompressed_bytes=2 * 1024**3,
    max_zip_members=1000,
    max_zip_ratio=200.0,
)


def read_all(path: Path, limits: Limits = LIMITS) -> tuple[list[Conversation], ReadStats]:
    stats = ReadStats()
    return list(read_export(path, limits, stats)), stats


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def write_zip(path: Path, members: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def write_gzip(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# --------------------------------------------------------------------------- gen_export


@dataclass(frozen=True)
class Generated:
    path: Path
    truth: Truth

    @property
    def facts(self) -> list[Planted]:
        return self.truth.facts

    @property
    def decoys(self) -> list[Planted]:
        return self.truth.decoys


GenExport = Callable[..., Generated]


@pytest.fixture(scope="session")
def gen_export(tmp_path_factory: pytest.TempPathFactory) -> GenExport:
    """Write a generated export (``tests/gen_export.py``), cached per options for the session.

    Takes :class:`tests.gen_export.Options` fields plus ``zipped`` and ``shards``.
    """
    cache: dict[tuple[object, ...], Generated] = {}
    root = tmp_path_factory.mktemp("generated")

    def run(*, zipped: bool = False, shards: int = 0, **options: Any) -> Generated:
        key = (zipped, shards, *sorted(options.items()))
        if key not in cache:
            out = root / f"export-{len(cache)}{'.zip' if zipped else '.json'}"
            truth = write_export(out, Options(**options), zipped=zipped, shards=shards)
            cache[key] = Generated(out, truth)
        return cache[key]

    return run


def assert_facts_and_no_decoys(convs: Iterable[Conversation], generated: Generated) -> None:
    """Every planted fact is in a user message of its conversation; no decoy is anywhere.

    A decoy whose sentence was also planted as a real fact in the same
    conversation is legitimately present, so it is not held against the parser.
    Saved memories and custom instructions come out as their own kinds of
    message, and no UI scaffolding (placeholders, citation markers, hidden
    messages) reaches the text.
    """
    truth = generated.truth
    user_text: dict[str, str] = {}
    all_text: dict[str, str] = {}
    kinds: dict[str, set[tuple[str, str, str | None]]] = {}
    for conv in convs:
        user_text[conv.id] = "\n".join(m.text for m in conv.messages if m.role == "user")
        all_text[conv.id] = "\n".join(m.text for m in conv.messages)
        kinds[conv.id] = {
            (m.kind, m.text, m.time.date().isoformat() if m.time else None)
            for m in conv.messages
            if m.kind != "text"
        }
    assert truth.facts, "the generator planted no facts"
    missing = [f for f in truth.facts if f.text not in user_text.get(f.conversation_id, "")]
    assert not missing, f"{len(missing)} planted facts lost, e.g. {missing[:3]}"
    real = {(f.conversation_id, f.text) for f in truth.facts}
    leaked = [
        d
        for d in truth.decoys
        if (d.conversation_id, d.text) not in real and d.text in all_text.get(d.conversation_id, "")
    ]
    assert not leaked, f"{len(leaked)} decoys from abandoned branches leaked, e.g. {leaked[:3]}"
    lost_memories = [
        m
        for m in truth.memories
        if ("memory", m["text"], m["date"]) not in kinds.get(str(m["conversation_id"]), set())
    ]
    assert not lost_memories, f"{len(lost_memories)} saved memories lost: {lost_memories[:3]}"
    lost_instructions = [
        i
        for i in truth.instructions
        if not any(
            kind == "instructions" and text == i["text"]
            for kind, text, _ in kinds.get(i["conversation_id"], set())
        )
    ]
    assert not lost_instructions, f"instructions lost: {lost_instructions[:3]}"
    shown = [a for a in truth.absent if a["text"] in all_text.get(a["conversation_id"], "")]
    assert not shown, f"{len(shown)} pieces of UI scaffolding in the text, e.g. {shown[:3]}"


# --------------------------------------------------------------------------- ChatGPT trees


def gpt_message(
    role: str,
    text: str | None = None,
    *,
    content: dict[str, Any] | None = None,
    time: float | None = 1_700_000_000.0,
    recipient: str = "all",
    hidden: bool = False,
    weight: float = 1.0,
) -> dict[str, Any]:
    return {
        "author": {"role": role, "name": None, "metadata": {}},
        "create_time": time,
        "content": content or {"content_type": "text", "parts": [text or ""]},
        "metadata": {"is_visually_hidden_from_conversation": True} if hidden else {},
        "recipient": recipient,
        "weight": weight,
    }


def gpt_conversation(
    chain: list[dict[str, Any]],
    *,
    conv_id: str = "conv-1",
    branches: dict[int, list[dict[str, Any]]] | None = None,
    current: str | bool | None = True,
    title: str | None = "A title",
) -> dict[str, Any]:
    """A mapping tree: ``chain`` is the canonical path under an empty root.

    ``branches[i]`` hangs an abandoned chain off canonical node ``i``.
    ``current=True`` points ``current_node`` at the last canonical node.
    """
    mapping: dict[str, dict[str, Any]] = {
        "root": {"id": "root", "message": None, "parent": None, "children": []}
    }
    parent = "root"
    ids: list[str] = []
    for i, message in enumerate(chain):
        node_id = f"n{i}"
        mapping[node_id] = {"id": node_id, "message": message, "parent": parent, "children": []}
        mapping[parent]["children"].append(node_id)
        ids.append(node_id)
        parent = node_id
    for at, messages in (branches or {}).items():
        parent = ids[at]
        for j, message in enumerate(messages):
            node_id = f"b{at}-{j}"
            mapping[node_id] = {
                "id": node_id,
                "message": message,
                "parent": parent,
                "children": [],
            }
            mapping[parent]["children"].append(node_id)
            parent = node_id
    conv: dict[str, Any] = {
        "id": conv_id,
        "title": title,
        "create_time": 1_700_000_000.0,
        "update_time": 1_700_000_500.0,
        "mapping": mapping,
    }
    if current is True:
        conv["current_node"] = ids[-1] if ids else "root"
    elif current is not False:
        conv["current_node"] = current
    return conv
