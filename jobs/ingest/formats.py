"""Stream conversations out of an export's JSON and normalise every format.

The JSON is parsed with ijson one conversation at a time, so memory stays flat
whatever the export's size. Each conversation is then turned into a
:class:`Conversation` of plain user/assistant messages, whichever of the three
formats it came in (ChatGPT ``mapping`` trees, Claude ``chat_messages`` linked by
``parent_message_uuid``, the simplified ``messages`` list). Both trees keep
every edit and retry; only the branch the user kept is read, in its order.
What the user wrote about themselves is kept even where the UI hides it
(ChatGPT's custom instructions and saved memories, Claude attachments).

Leniency is deliberate and bounded: an unusable conversation or message is
skipped and counted in :class:`ReadStats` (exports are full of content types we
do not care about), but a file that is not JSON, is cut short, or has the wrong
top-level shape fails the import with :class:`BadInput`, because reading half
an export would silently drop the user's history.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import ijson

from jobs.ingest.containers import GuardedStream
from jobs.ingest.model import Conversation, Message, MessageKind, Role
from worker.errors import BadInput


def _pick_backend() -> Any:
    """The C (yajl2_c) backend when it is installed: it is ~10x faster than pure Python."""
    try:
        return ijson.get_backend("yajl2_c")
    except ImportError:
        return ijson


BACKEND: Final = _pick_backend()

#: Bytes handed to the parser per read.
READ_SIZE: Final = 256 * 1024
#: A message longer than this is cut (counted as ``text_truncated``): nobody's
#: durable facts live past the first 200k characters of one message.
MAX_MESSAGE_CHARS: Final = 200_000
#: One attachment or artifact kept inside a message is cut past this (counted as
#: ``attachment_truncated``), so that one pasted book leaves room for the
#: message's own words and for the other attachments.
MAX_ATTACHMENT_CHARS: Final = 50_000
#: Deeper JSON is refused before the parser sees it: ijson's memory grows with
#: the square of the nesting depth, and real exports nest about a dozen levels.
MAX_JSON_DEPTH: Final = 512
#: One JSON string longer than this is refused before it is built in memory.
MAX_JSON_STRING_BYTES: Final = 32 * 1024 * 1024
#: Distinct skip reasons kept; more are lumped together so stats stay small.
MAX_SKIP_REASONS: Final = 64
#: Problem descriptions (skipped conversations) kept for the error log.
MAX_PROBLEMS: Final = 20
MAX_ID_CHARS: Final = 256
MAX_TITLE_CHARS: Final = 1_000

_HEAD_BYTES: Final = 64 * 1024
_JSON_WS: Final = b" \t\r\n"
_UTF8_BOM: Final = b"\xef\xbb\xbf"
_UTF16_BOMS: Final = (b"\xff\xfe", b"\xfe\xff")
_FIRST_KEY = re.compile(rb'\{\s*"((?:[^"\\]|\\.){0,200})"\s*:\s*(.)', re.DOTALL)
#: First keys that mean the top-level object is one conversation, not a wrapper.
_CONVERSATION_KEYS: Final = frozenset(
    {
        "id",
        "uuid",
        "title",
        "name",
        "mapping",
        "current_node",
        "conversation_id",
        "create_time",
        "update_time",
        "created_at",
        "updated_at",
        "chat_messages",
        "messages",
    }
)


@dataclass
class ReadStats:
    """What reading an export found and left out (shown by ``inspect`` and saved on the stage)."""

    format: str = "unknown"
    container: str = "unknown"
    conversations: int = 0
    messages: int = 0
    skipped_conversations: int = 0
    skipped_items: dict[str, int] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    #: Conversation entries met so far (kept, skipped and empty): the ordinal of the next one.
    entries: int = 0
    json_bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def skip(self, reason: str, count: int = 1) -> None:
        """Count skipped items; reasons past :data:`MAX_SKIP_REASONS` share one bucket."""
        if count <= 0:
            return
        if reason not in self.skipped_items and len(self.skipped_items) >= MAX_SKIP_REASONS:
            reason = "other"
        self.skipped_items[reason] = self.skipped_items.get(reason, 0) + count

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def note_format(self, fmt: str) -> None:
        self.format = fmt if self.format in ("unknown", fmt) else "mixed"

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["skipped_items"] = dict(sorted(self.skipped_items.items()))
        return out


class _Garbage(Exception):
    """A conversation entry that cannot be used; it is skipped, not fatal."""


# --------------------------------------------------------------------------- streaming


class _NestingGuard:
    """Watches the raw bytes for absurd nesting depth and endless strings.

    It works on whole buffers with C-speed methods (no per-byte Python loop):
    escape sequences are dropped, every byte but quotes and
    brackets is deleted, strings are cut out, and what is left, a run of
    brackets, is folded by removing innermost ``[]`` pairs. The bound it
    computes can over-estimate the real depth (at most threefold), never under.
    """

    _NOT_STRUCTURAL: Final = bytes(b for b in range(256) if b not in b'[]{}"')
    _UNIFY: Final = bytes.maketrans(b"{}", b"[]")
    #: A backslash and the byte it escapes (one pass, left to right, so ``\\"``
    #: is an escaped backslash before a real quote).
    _ESCAPE: Final = re.compile(rb"\\.", re.DOTALL)

    def __init__(self, name: str) -> None:
        self._name = name
        self._carry = b""
        self._in_string = False
        self._string_run = 0
        self._depth = 0

    def feed(self, data: bytes, offset: int) -> None:
        chunk = self._carry + data if self._carry else data
        body = chunk.rstrip(b"\\")  # a backslash run is judged with the byte after it
        self._carry = chunk[len(body) :]
        s = self._ESCAPE.sub(b"", body).translate(None, self._NOT_STRUCTURAL)
        saw_quote = b'"' in s
        # Dropping adjacent quote pairs removes empty strings and empty gaps between
        # strings; neither holds a bracket, and the parity of later quotes is kept.
        s = s.replace(b'""', b"")
        if b'"' in s:
            parts = s.split(b'"')
            s = b"".join(parts[1::2] if self._in_string else parts[0::2])
            if len(parts) % 2 == 0:
                self._in_string = not self._in_string
        elif self._in_string:
            s = b""  # the whole buffer is inside one string
        self._check_string(len(data), saw_quote, offset)
        s = s.translate(self._UNIFY)
        passes = 0
        while b"[]" in s:
            s = s.replace(b"[]", b"")
            passes += 1
            if passes > MAX_JSON_DEPTH:
                self._too_deep(offset)
        closers = len(s) - len(s.lstrip(b"]"))
        openers = len(s) - closers
        if self._depth + openers + passes > MAX_JSON_DEPTH:
            self._too_deep(offset)
        self._depth = max(self._depth - closers, 0) + openers

    def _check_string(self, size: int, saw_quote: bool, offset: int) -> None:
        if not self._in_string:
            self._string_run = 0
            return
        self._string_run = self._string_run + size if not saw_quote else size
        if self._string_run > MAX_JSON_STRING_BYTES:
            raise BadInput(
                f"{self._name}: a JSON string runs past {MAX_JSON_STRING_BYTES:,} bytes "
                f"(near byte {offset:,}); refusing the export"
            )

    def _too_deep(self, offset: int) -> None:
        raise BadInput(
            f"{self._name}: JSON nested more than {MAX_JSON_DEPTH} levels deep near byte "
            f"{offset:,}; this is not a chat export"
        )


class _JsonReader:
    """File-like view of a member for ijson: lets the shape be peeked, guards every byte."""

    def __init__(self, source: GuardedStream) -> None:
        self._src = source
        self.name = source.name
        self._pending = b""
        self._guard = _NestingGuard(source.name)
        #: Bytes handed to the parser (or skipped as leading whitespace).
        self.offset = 0

    def head(self) -> bytes:
        """The first bytes of the JSON text (leading whitespace and BOM dropped), not consumed."""
        while len(self._pending) < _HEAD_BYTES:
            data = self._src.read(_HEAD_BYTES)
            if not data:
                break
            if self.offset == 0 and not self._pending:
                if data.startswith(_UTF16_BOMS):
                    raise BadInput(f"{self.name}: file is UTF-16 encoded; expected UTF-8 JSON")
                if data.startswith(_UTF8_BOM):
                    data = data[len(_UTF8_BOM) :]
                    self.offset += len(_UTF8_BOM)
            self._pending += data
            if not self._pending.strip(_JSON_WS):
                # Only whitespace so far: drop it rather than hold it in memory.
                self.offset += len(self._pending)
                self._pending = b""
        stripped = self._pending.lstrip(_JSON_WS)
        self.offset += len(self._pending) - len(stripped)
        self._pending = stripped
        return self._pending

    def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        if self._pending:
            if n < 0:
                data, self._pending = self._pending, b""
            else:
                data, self._pending = self._pending[:n], self._pending[n:]
        else:
            data = self._src.read(n)
        if data:
            self._guard.feed(data, self.offset)
            self.offset += len(data)
        return data


def _json_error(exc: Exception) -> str:
    """The first line of a parser error (the rest quotes the export's bytes, which are private)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"text is not valid UTF-8 ({exc.reason})"
    arg: object = exc.args[0] if exc.args else exc
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if re.search(r"utf-?8", first, re.IGNORECASE):
        return f"text is not valid UTF-8 ({first.rstrip('.')})"
    return first.rstrip(".")


def _value_kind(head: bytes) -> str:
    first = head[0]
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (a ZIP inside gzip or ZIP? upload the export's own ZIP)"
    if head.startswith(b"\x1f\x8b"):
        return "gzip data (compressed twice? upload the export once compressed)"
    if first in b"-0123456789":
        return "a number"
    if first == ord('"'):
        return "a string"
    if first in b"tf":
        return "a boolean"
    if first == ord("n"):
        return "null"
    if first == ord("<"):
        return "HTML or XML (chat.html?)"
    return f"not JSON (first byte 0x{first:02x})"


def iter_conversations(source: GuardedStream, stats: ReadStats) -> Iterator[Conversation]:
    """Yield the usable conversations of one JSON stream, counting what is skipped."""
    reader = _JsonReader(source)
    head = reader.head()
    if not head:
        raise BadInput(f"{source.name}: no JSON in the file (it is empty)")
    first = head[0]
    top_keys: list[str] = []
    keyed = False  # an object whose first key did not tell: the keys are checked after
    items: Iterator[object]
    if first == ord("["):
        items = BACKEND.items(reader, "item", use_float=True, buf_size=READ_SIZE)
    elif first == ord("{"):
        match = _FIRST_KEY.match(head)
        key = match.group(1).decode("utf-8", "replace") if match else None
        if key == "conversations" and match is not None and match.group(2) == b"[":
            items = BACKEND.items(reader, "conversations.item", use_float=True, buf_size=READ_SIZE)
        elif key in _CONVERSATION_KEYS:
            # One conversation, or several one after the other (JSON Lines).
            items = BACKEND.items(
                reader, "", use_float=True, buf_size=READ_SIZE, multiple_values=True
            )
        else:
            keyed = True
            items = BACKEND.items(_recording_top_keys(reader, top_keys), "conversations.item")
    else:
        raise BadInput(
            f"{source.name}: top-level JSON value is {_value_kind(head)}; "
            f"expected a list of conversations"
        )
    read_here = 0
    try:
        for item in items:
            read_here += 1
            ordinal = stats.entries
            stats.entries += 1
            conv = _normalise_entry(item, ordinal, source.name, stats)
            if conv is not None:
                yield conv
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise BadInput(
            f"{source.name}: invalid JSON before byte {reader.offset:,} "
            f"({_json_error(exc)}) after {read_here:,} conversations were read; "
            f"the export is truncated or corrupt, ask for a fresh export"
        ) from None
    finally:
        stats.json_bytes += reader.offset
    if keyed and "conversations" not in top_keys:
        shown = ", ".join(_reason_label(k) for k in top_keys[:10]) or "none"
        raise BadInput(
            f"{source.name}: top-level JSON object has no 'conversations' list (keys: {shown})"
        )


def _recording_top_keys(reader: _JsonReader, keys: list[str]) -> Iterator[tuple[str, str, Any]]:
    """Parser events, noting the top-level keys (for a wrapper whose first key is not ours)."""
    for prefix, event, value in BACKEND.parse(reader, use_float=True, buf_size=READ_SIZE):
        if event == "map_key" and prefix == "" and len(keys) < 50:
            keys.append(str(value))
        yield prefix, event, value


def _normalise_entry(
    item: object, ordinal: int, member: str, stats: ReadStats
) -> Conversation | None:
    try:
        conv = normalise_conversation(item, ordinal, stats)
    except (_Garbage, TypeError, ValueError, AttributeError, KeyError) as exc:
        reason = str(exc) if isinstance(exc, _Garbage) else f"unexpected {type(exc).__name__}"
        stats.skipped_conversations += 1
        stats.problem(f"{member}: conversation #{ordinal}{_id_hint(item)} skipped: {reason}")
        return None
    if not conv.messages:
        stats.skip("empty_conversation")
        return None
    stats.conversations += 1
    stats.messages += len(conv.messages)
    return conv


def _id_hint(item: object) -> str:
    if isinstance(item, dict):
        for key in ("id", "uuid", "conversation_id"):
            value = item.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool):
                return f" (id {str(value)[:64]!r})"
    return ""


# --------------------------------------------------------------------------- normalising


def normalise_conversation(item: object, ordinal: int, stats: ReadStats) -> Conversation:
    """One export entry as a :class:`Conversation` (raises ``_Garbage`` when unusable)."""
    if not isinstance(item, dict):
        raise _Garbage(f"entry is {type(item).__name__}, not an object")
    if "mapping" in item:
        stats.note_format("chatgpt")
        messages = _chatgpt_messages(item, stats)
    elif "chat_messages" in item:
        stats.note_format("claude")
        messages = _claude_messages(item, stats)
    elif "messages" in item:
        stats.note_format("simplified")
        messages = _simplified_messages(item, stats)
    else:
        raise _Garbage("no mapping, chat_messages or messages field")
    created = _first_time(item, ("create_time", "created_at"), stats)
    updated = _first_time(item, ("update_time", "updated_at"), stats)
    times = [m.time for m in messages if m.time is not None]
    return Conversation(
        id=_conversation_id(item, ordinal),
        title=_clean_label(item.get("title", item.get("name")), MAX_TITLE_CHARS),
        created_at=created or (min(times) if times else None),
        updated_at=updated or (max(times) if times else None) or created,
        messages=messages,
    )


def _conversation_id(item: dict[str, Any], ordinal: int) -> str:
    for key in ("id", "conversation_id", "uuid"):
        value = item.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            cleaned = _clean_label(value, MAX_ID_CHARS)
            if cleaned:
                return cleaned
    # Deterministic, so re-reading the same export gives the same chunk ids.
    return f"conversation-{ordinal}"


def _first_time(item: dict[str, Any], keys: tuple[str, ...], stats: ReadStats) -> datetime | None:
    for key in keys:
        if item.get(key) is not None:
            return parse_time(item[key], stats)
    return None


# ChatGPT -------------------------------------------------------------------------------

#: Content types that are not conversation text (tool I/O, reasoning, browsing, errors).
CHATGPT_SKIPPED_CONTENT: Final = frozenset(
    {
        "code",
        "execution_output",
        "thoughts",
        "reasoning_recap",
        "tether_quote",
        "tether_browsing_display",
        "tether_browsing_code",
        "system_error",
        "sonic_webpage",
        "computer_output",
        "super_widget",
        "app_pairing_content",
    }
)
_TEXT_PARTS: Final = frozenset({"text", "multimodal_text"})
#: Non-string parts of ``multimodal_text`` whose ``text`` is what the user said.
_TEXT_PART_TYPES: Final = frozenset({"audio_transcription", "text"})


def _parent(node: dict[str, Any]) -> str | None:
    parent = node.get("parent")
    return parent if isinstance(parent, str) else None


def canonical_path(
    mapping: dict[str, Any], current: object, skip: Callable[[str], None]
) -> list[str]:
    """Node ids of the branch the user saw: ``current_node`` up to the root, reversed.

    Siblings off this path are abandoned edits and regenerations. Walks are
    iterative and remember visited nodes, so deep trees and parent cycles are safe.
    """
    if isinstance(current, str) and isinstance(mapping.get(current), dict):
        start: str | None = current
    else:
        skip("missing_current_node" if current is None else "invalid_current_node")
        start = _deepest_leaf(mapping)
    path: list[str] = []
    seen: set[str] = set()
    node_id = start
    while node_id is not None:
        if node_id in seen:
            skip("parent_cycle")
            break
        node = mapping.get(node_id)
        if not isinstance(node, dict):
            skip("dangling_parent")
            break
        seen.add(node_id)
        path.append(node_id)
        node_id = _parent(node)
    path.reverse()
    return path


def _deepest_leaf(mapping: dict[str, Any]) -> str | None:
    """The leaf farthest from its root (ties: the latest message, then the last listed)."""
    nodes = {k: v for k, v in mapping.items() if isinstance(v, dict)}
    depth: dict[str, int] = {}
    for node_id in nodes:
        chain: list[str] = []
        on_chain: set[str] = set()
        cur: str | None = node_id
        while cur is not None and cur not in depth and cur not in on_chain and cur in nodes:
            on_chain.add(cur)
            chain.append(cur)
            cur = _parent(nodes[cur])
        base = depth[cur] if cur is not None and cur in depth else -1
        for step in reversed(chain):
            base += 1
            depth[step] = base
    has_child = {p for v in nodes.values() if (p := _parent(v)) is not None}
    leaves = [k for k in nodes if k not in has_child] or list(nodes)
    if not leaves:
        return None
    order = {k: i for i, k in enumerate(nodes)}

    def rank(node_id: str) -> tuple[int, float, int]:
        message = nodes[node_id].get("message")
        when = message.get("create_time") if isinstance(message, dict) else None
        stamp = float(when) if isinstance(when, int | float) and math.isfinite(when) else -math.inf
        return depth.get(node_id, 0), stamp, order[node_id]

    return max(leaves, key=rank)


def _chatgpt_messages(item: dict[str, Any], stats: ReadStats) -> list[Message]:
    mapping = item.get("mapping")
    if not isinstance(mapping, dict):
        raise _Garbage("'mapping' is not an object")
    path = canonical_path(mapping, item.get("current_node"), stats.skip)
    on_path = set(path)
    stats.skip(
        "abandoned_branch",
        sum(
            1
            for node_id, node in mapping.items()
            if node_id not in on_path and isinstance(node, dict) and node.get("message")
        ),
    )
    out: list[Message] = []
    for node_id in path:
        raw = mapping[node_id].get("message")
        if raw is None:
            continue
        if not isinstance(raw, dict):
            stats.skip("malformed_message")
            continue
        out.extend(_chatgpt_message(raw, stats))
    return out


def _chatgpt_message(raw: dict[str, Any], stats: ReadStats) -> list[Message]:
    """The messages one node stands for: none, one, or several (instructions, memories)."""
    author = raw.get("author")
    role = author.get("role") if isinstance(author, dict) else None
    content = raw.get("content")
    if not isinstance(content, dict):
        stats.skip("malformed_message")
        return []
    ctype = content.get("content_type")
    when = parse_time(raw.get("create_time"), stats)
    # Hidden in the UI, but both are about the user: checked before the hidden rule.
    if ctype == "user_editable_context":
        return _custom_instructions(content, when, stats)
    if ctype == "model_editable_context":
        return _memory_snapshot(content, stats)
    recipient = raw.get("recipient") or "all"
    if role == "assistant" and recipient == "bio":
        # ChatGPT's memory tool: the assistant saving a fact about the user.
        text = _parts_text(content, stats)
        if not text and isinstance(content.get("text"), str):
            text = content["text"]
        return _listed(_message("assistant", text, when, "memory", stats))
    if role not in ("user", "assistant"):
        stats.skip(f"{role}_message" if role in ("system", "tool") else "unknown_role")
        return []
    if recipient != "all":
        stats.skip("tool_call")
        return []
    metadata = raw.get("metadata")
    hidden = isinstance(metadata, dict) and metadata.get("is_visually_hidden_from_conversation")
    if hidden or raw.get("weight") == 0:
        stats.skip("hidden_message")
        return []
    if ctype in _TEXT_PARTS:
        return _listed(_message(role, _parts_text(content, stats), when, "text", stats))
    if ctype in CHATGPT_SKIPPED_CONTENT:
        stats.skip(f"content:{ctype}")
    else:
        stats.skip(f"unknown_content:{_reason_label(ctype)}")
    return []


def _listed(message: Message | None) -> list[Message]:
    return [] if message is None else [message]


def _custom_instructions(
    content: dict[str, Any], when: datetime | None, stats: ReadStats
) -> list[Message]:
    """The user's profile and their instructions: one message each, in their own words."""
    fields = [content.get(key) for key in ("user_profile", "user_instructions")]
    texts = [users_own_words(f) for f in fields if isinstance(f, str) and f.strip()]
    if not texts:
        stats.skip("empty_message")
    return [m for t in texts if (m := _message("user", t, when, "instructions", stats))]


#: How ChatGPT introduces the custom instructions it wraps in a code fence
#: ("The user provided the following information about themselves. ...").
_WRAPPER_START = re.compile(r"\s*the user provided\b", re.IGNORECASE)
_FENCE: Final = "```"


def users_own_words(text: str) -> str:
    """A custom-instructions field without ChatGPT's wrapper and fences, all else kept.

    The wrapper is the sentences before the first fence; the user's text runs
    from there to the *last* fence, because it may hold fences of its own. Text
    after the last fence is unusual but the user's, so it is kept too.
    """
    stripped = text.strip()
    first = stripped.find(_FENCE)
    last = stripped.rfind(_FENCE)
    if first < 0 or last == first:
        return stripped
    if first == 0 and last == len(stripped) - len(_FENCE):
        return stripped[len(_FENCE) : last].strip()  # the whole field is fenced
    if not _WRAPPER_START.match(stripped):
        return stripped
    inner = stripped[first + len(_FENCE) : last].strip()
    after = stripped[last + len(_FENCE) :].strip()
    return f"{inner}\n{after}" if after else inner


def _memory_snapshot(content: dict[str, Any], stats: ReadStats) -> list[Message]:
    """ChatGPT's saved memories as it held them then: one dated message per memory.

    ``repository`` and its sibling fields describe connected code, not the user,
    so only ``model_set_context`` is read.
    """
    snapshot = content.get("model_set_context")
    memories = saved_memories(snapshot) if isinstance(snapshot, str) else []
    out = [
        m
        for text, when in memories
        if (m := _message("assistant", text, when, "memory", stats)) is not None
    ]
    if not out:
        stats.skip("empty_memory_snapshot")
    return out


#: A numbered or bulleted list item: "1. ", "12) ", "- ", "* ", "• ".
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,4}[.)]|[-*\u2022])\s+")
#: A date in front ("[2024-05-02]. ") or at the end (" (2024-03-01)") of a memory.
_LEADING_DATE = re.compile(r"^\[(\d{4}-\d{2}-\d{2})\]\.?\s*")
_TRAILING_DATE = re.compile(r"\s*[(\[](\d{4}-\d{2}-\d{2})[)\]]\.?$")


def saved_memories(snapshot: str) -> list[tuple[str, datetime | None]]:
    """Each memory of a ``model_set_context`` snapshot, with its date when it has one.

    Seen shapes: ``1. [2024-05-02]. Is a vegetarian.`` (numbered, dated, blank
    lines between), ``- Prefers dark mode (2024-03-01)``, and plain lines.
    Headings (``# Model Set Context``) are dropped. In a list, an unmarked line
    continues the item above it, so a memory that wraps is kept whole.
    """
    lines = [line.strip() for line in snapshot.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    listed = any(_LIST_ITEM.match(line) for line in lines)
    items: list[str] = []
    for line in lines:
        marker = _LIST_ITEM.match(line)
        if marker:
            items.append(line[marker.end() :])
        elif listed and items:
            items[-1] = f"{items[-1]}\n{line}"
        else:
            items.append(line)
    return [dated for item in items if (dated := _dated(item))[0]]


def _dated(item: str) -> tuple[str, datetime | None]:
    for pattern in (_LEADING_DATE, _TRAILING_DATE):
        match = pattern.search(item)
        if match:
            try:
                day = datetime.strptime(match.group(1), "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                continue
            return (item[: match.start()] + item[match.end() :]).strip(), day
    return item.strip(), None


def _parts_text(content: dict[str, Any], stats: ReadStats) -> str:
    parts = content.get("parts")
    if not isinstance(parts, list):
        return ""
    texts: list[str] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif (
            isinstance(part, dict)
            and part.get("content_type") in _TEXT_PART_TYPES
            and isinstance(part.get("text"), str)
        ):
            texts.append(part["text"])
        elif part is not None:
            stats.skip("non_text_part")
    return "\n".join(t for t in texts if t)


# Claude --------------------------------------------------------------------------------

_CLAUDE_SENDERS: Final[dict[object, Role]] = {
    "human": "user",
    "user": "user",
    "assistant": "assistant",
}


def _claude_messages(item: dict[str, Any], stats: ReadStats) -> list[Message]:
    raw_messages = item.get("chat_messages")
    if not isinstance(raw_messages, list):
        raise _Garbage("'chat_messages' is not a list")
    nodes: list[_ClaudeNode] = []
    for raw in raw_messages:
        if isinstance(raw, dict):
            nodes.append(_ClaudeNode.of(raw, stats))
        else:
            stats.skip("malformed_message")
    thread = _claude_thread(nodes, item.get("current_leaf_message_uuid"), stats)
    out: list[Message] = []
    for node in thread:
        role = _CLAUDE_SENDERS.get(node.raw.get("sender"))
        if role is None:
            stats.skip("unknown_role")
            continue
        message = _message(role, _claude_text(node.raw, stats), node.time, "text", stats)
        if message is not None:
            out.append(message)
    return out


@dataclass(frozen=True, slots=True)
class _ClaudeNode:
    raw: dict[str, Any]
    uuid: str | None
    parent: str | None
    time: datetime | None

    @classmethod
    def of(cls, raw: dict[str, Any], stats: ReadStats) -> _ClaudeNode:
        uuid, parent = raw.get("uuid"), raw.get("parent_message_uuid")
        return cls(
            raw,
            uuid if isinstance(uuid, str) else None,
            parent if isinstance(parent, str) else None,
            parse_time(raw.get("created_at"), stats),
        )

    @property
    def stamp(self) -> float:
        return self.time.timestamp() if self.time is not None else -math.inf


def _claude_thread(
    nodes: list[_ClaudeNode], current: object, stats: ReadStats
) -> list[_ClaudeNode]:
    """The messages the user kept, in conversation order.

    ``chat_messages`` holds every branch (edits, retries) in no useful order.
    Each message names its parent; the root's parent is a sentinel
    (``00000000-0000-4000-8000-000000000000``), so any parent that is not among
    the messages ends the walk. Exports from before parent links existed are a
    single thread: they are put in ``created_at`` order.
    """
    if not any(node.parent is not None for node in nodes):
        return _chronological(nodes)
    index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node.uuid is not None:
            index.setdefault(node.uuid, i)
    parent_of = [index.get(node.parent) if node.parent is not None else None for node in nodes]
    start = index.get(current) if isinstance(current, str) else None
    if start is None:
        start = _latest_leaf(nodes, parent_of)
    path: list[int] = []
    seen: set[int] = set()
    step: int | None = start
    while step is not None:
        if step in seen:
            stats.skip("parent_cycle")
            break
        seen.add(step)
        path.append(step)
        step = parent_of[step]
    path.reverse()
    stats.skip("abandoned_branch", len(nodes) - len(path))
    return [nodes[i] for i in path]


def _latest_leaf(nodes: list[_ClaudeNode], parent_of: list[int | None]) -> int:
    """The leaf created last (ties: the last in the file): where the kept branch ends.

    When every message is some message's parent (a cycle), the latest message
    stands in for the leaf.
    """
    parents = {p for p in parent_of if p is not None}
    leaves = [i for i in range(len(nodes)) if i not in parents] or list(range(len(nodes)))

    return max(leaves, key=lambda i: (nodes[i].stamp, i))


def _chronological(nodes: list[_ClaudeNode]) -> list[_ClaudeNode]:
    """Nodes by ``created_at``; one without a time stays after those before it in the file."""
    keys: list[float] = []
    latest = -math.inf
    for node in nodes:
        if node.time is not None:
            latest = max(latest, node.stamp)
        keys.append(node.stamp if node.time is not None else latest)
    order = sorted(range(len(nodes)), key=lambda i: (keys[i], i))
    return [nodes[i] for i in order]


def _claude_text(raw: dict[str, Any], stats: ReadStats) -> str:
    """What the message showed: its text blocks and artifacts, then its attachments.

    The flat ``text`` field serves messages without content blocks. When the
    blocks hold a tool call, ``text`` is a UI placeholder written in place of
    the tool's output ("... isn't yet supported on mobile."), never the answer,
    so it is not used.
    """
    parts: list[str] = []
    used_tool = False
    blocks = raw.get("content")
    if isinstance(blocks, list):
        for block in blocks:
            if not isinstance(block, dict):
                stats.skip("malformed_block")
            elif block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif block.get("type") == "tool_use":
                used_tool = True
                parts.append(_artifact_text(block.get("input"), stats))
            else:
                stats.skip(f"content:{_reason_label(block.get('type'))}")
    text = "\n\n".join(p for p in parts if p.strip())
    flat = raw.get("text")
    if not text.strip() and isinstance(flat, str) and flat.strip():
        if used_tool:
            stats.skip("tool_placeholder_text")
        else:
            text = flat
    return _with_attachments(text, raw.get("attachments"), stats)


def _artifact_text(tool_input: object, stats: ReadStats) -> str:
    """An artifact as the user saw it: its title and content, when a tool call has them."""
    title = tool_input.get("title") if isinstance(tool_input, dict) else None
    content = tool_input.get("content") if isinstance(tool_input, dict) else None
    if not isinstance(content, str) or not content.strip():
        stats.skip("content:tool_use")
        return ""
    name = _clean_label(title, MAX_TITLE_CHARS)
    heading = f"[Artifact: {name}]" if name else "[Artifact]"
    return f"{heading}\n{_capped(content, stats)}"


def _with_attachments(text: str, attachments: object, stats: ReadStats) -> str:
    """``text`` followed by each attachment's extracted text, under a line naming the file.

    Pasted text and uploaded documents are the user's own material. Each one is
    capped, and once the message is full the rest are left out (and counted).
    """
    if not isinstance(attachments, list) or not attachments:
        return text
    parts = [text] if text.strip() else []
    size = len(text)
    for attachment in attachments:
        extracted = attachment.get("extracted_content") if isinstance(attachment, dict) else None
        if not isinstance(extracted, str) or not extracted.strip():
            stats.skip("attachment_without_text")
            continue
        if size > MAX_MESSAGE_CHARS:
            stats.skip("attachment_truncated")
            continue
        name = _clean_label(attachment.get("file_name"), MAX_TITLE_CHARS)
        part = f"[Attachment: {name}]" if name else "[Attachment]"
        part = f"{part}\n{_capped(extracted.strip(), stats)}"
        parts.append(part)
        size += len(part) + 2
    return "\n\n".join(parts)


def _capped(text: str, stats: ReadStats) -> str:
    if len(text) <= MAX_ATTACHMENT_CHARS:
        return text
    stats.skip("attachment_truncated")
    return text[:MAX_ATTACHMENT_CHARS]


# Simplified ----------------------------------------------------------------------------

_SIMPLE_ROLES: Final[dict[object, Role]] = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
}


def _simplified_messages(item: dict[str, Any], stats: ReadStats) -> list[Message]:
    raw_messages = item.get("messages")
    if not isinstance(raw_messages, list):
        raise _Garbage("'messages' is not a list")
    out: list[Message] = []
    for raw in raw_messages:
        if not isinstance(raw, dict):
            stats.skip("malformed_message")
            continue
        speaker = _simple_speaker(raw)
        role = _SIMPLE_ROLES.get(speaker)
        if role is None:
            stats.skip(f"{speaker}_message" if speaker in ("system", "tool") else "unknown_role")
            continue
        when = _first_time(raw, ("create_time", "created_at", "timestamp", "time"), stats)
        content = raw.get("content")
        if content is None:
            content = raw.get("text")
        message = _message(role, _simple_text(content, stats), when, "text", stats)
        if message is not None:
            out.append(message)
    return out


def _simple_speaker(raw: dict[str, Any]) -> str | None:
    """Who speaks, lower-cased: ``role``, else ``author`` (a name or ``{"role": ...}``),
    else ``sender``, as the tools that write such files name it."""
    for key in ("role", "author", "sender"):
        value = raw.get(key)
        if isinstance(value, dict):
            value = value.get("role")
        if isinstance(value, str):
            return value.strip().lower()
    return None


def _simple_text(content: object, stats: ReadStats) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if isinstance(content.get("text"), str):
            return str(content["text"])
        return _parts_text(content, stats)
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                stats.skip("non_text_part")
        return "\n".join(t for t in texts if t)
    if content is not None:
        stats.skip("malformed_message")
    return ""


# Shared --------------------------------------------------------------------------------


def _message(
    role: Role, text: str, when: datetime | None, kind: MessageKind, stats: ReadStats
) -> Message | None:
    cleaned = clean_text(text, stats)
    if not cleaned:
        stats.skip("empty_message")
        return None
    return Message(role=role, text=cleaned, time=when, kind=kind)


def clean_text(text: str, stats: ReadStats) -> str:
    """Text safe to store: capped, no NULs or lone surrogates (Postgres rejects both), LF only.

    ChatGPT's citation markers go too: see :func:`strip_markers`.
    """
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS]
        stats.skip("text_truncated")
    return _sanitise(text).strip()


#: ChatGPT marks citations and other UI widgets with private-use characters:
#: ``\ue200cite\ue202turn0search0\ue201`` is a footnote whose payload only the UI
#: understands, and lone markers of the same block (``\ue203``...``\ue206``)
#: frame quoted text, which is kept. The span length bound keeps the pattern
#: linear on hostile text.
_MARKER_SPAN = re.compile("[ \t]*\ue200[^\ue200\ue201]{0,1000}\ue201")
_MARKER_CHAR = re.compile("[\ue200-\ue2ff]")
_MARKER_LEAD_BYTE: Final = "\ue200".encode()[:1]


def strip_markers(text: str) -> str:
    """``text`` without ChatGPT's citation spans and stray marker characters."""
    if _MARKER_CHAR.search(text) is None:
        return text
    return _MARKER_CHAR.sub("", _MARKER_SPAN.sub("", text))


def _sanitise(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:
            encoded = text.encode("utf-8", "replace")
            text = encoded.decode("utf-8")
        # Every marker character starts with this byte in UTF-8: a byte search
        # is far cheaper than the pattern on text that holds none.
        if _MARKER_LEAD_BYTE in encoded:
            text = strip_markers(text)
    return text


def _clean_label(value: object, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    return " ".join(_sanitise(value[: limit * 2]).split())[:limit]


def _reason_label(value: object) -> str:
    """A skip reason built from export data: short and printable, whatever the data."""
    if not isinstance(value, str) or not value:
        return "missing" if value is None or value == "" else type(value).__name__
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value[:40])


_EPOCH_MS_THRESHOLD: Final = 1e11  # seconds past this are year 5138: the value is in ms


def parse_time(value: object, stats: ReadStats) -> datetime | None:
    """An aware UTC datetime from epoch seconds/ms or ISO 8601; garbage is counted, not fatal."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError("boolean timestamp")
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            try:
                value = float(text)
            except ValueError:
                parsed = datetime.fromisoformat(text)
                if parsed.tzinfo is None:
                    return parsed.replace(tzinfo=UTC)
                return parsed.astimezone(UTC)
        if isinstance(value, int | float):
            seconds = float(value)
            if not math.isfinite(seconds):
                raise ValueError("non-finite timestamp")
            if abs(seconds) > _EPOCH_MS_THRESHOLD:
                seconds /= 1000.0
            return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        pass
    stats.skip("bad_timestamp")
    return None
