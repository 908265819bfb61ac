"""Helpers for the ingestion tests: generated exports, hand-made trees, small archives."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobs.ingest.model import Conversation
from jobs.ingest.reader import Limits, ReadStats, read_export

REPO = Path(__file__).resolve().parents[3]
GEN_EXPORT = REPO.parent / "shared" / "tools" / "gen_export.py"

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
    facts: list[dict[str, str]]
    decoys: list[dict[str, str]]


GenExport = Callable[..., Generated]


@pytest.fixture(scope="session")
def gen_export(tmp_path_factory: pytest.TempPathFactory) -> GenExport:
    """Run ``gen_export.py`` (cached per argument list for the whole session)."""
    if not GEN_EXPORT.exists():
        pytest.skip(f"generator not found at {GEN_EXPORT}")
    cache: dict[tuple[str, ...], Generated] = {}
    root = tmp_path_factory.mktemp("generated")

    def run(*args: str, suffix: str = ".json") -> Generated:
        if args in cache:
            return cache[args]
        out = root / f"export-{len(cache)}{suffix}"
        facts = root / f"facts-{len(cache)}.json"
        subprocess.run(
            [sys.executable, str(GEN_EXPORT), *args, "-o", str(out), "--facts-out", str(facts)],
            check=True,
            capture_output=True,
        )
        truth = json.loads(facts.read_text(encoding="utf-8"))
        cache[args] = Generated(out, truth["facts"], truth["decoys"])
        return cache[args]

    return run


def assert_facts_and_no_decoys(convs: Iterable[Conversation], generated: Generated) -> None:
    """Every planted fact is in a user message of its conversation; no decoy is anywhere.

    A decoy whose sentence was also planted as a real fact in the same
    conversation is legitimately present, so it is not held against the parser.
    """
    user_text: dict[str, str] = {}
    all_text: dict[str, str] = {}
    for conv in convs:
        user_text[conv.id] = "\n".join(m.text for m in conv.messages if m.role == "user")
        all_text[conv.id] = "\n".join(m.text for m in conv.messages)
    assert generated.facts, "the generator planted no facts"
    missing = [
        f for f in generated.facts if f["text"] not in user_text.get(f["conversation_id"], "")
    ]
    assert not missing, f"{len(missing)} planted facts lost, e.g. {missing[:3]}"
    real = {(f["conversation_id"], f["text"]) for f in generated.facts}
    leaked = [
        d
        for d in generated.decoys
        if (d["conversation_id"], d["text"]) not in real
        and d["text"] in all_text.get(d["conversation_id"], "")
    ]
    assert not leaked, f"{len(leaked)} decoys from abandoned branches leaked, e.g. {leaked[:3]}"


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
