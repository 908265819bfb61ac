"""The normalised shapes every export format is turned into."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Role = Literal["user", "assistant"]
#: ``text``: an ordinary message; ``memory``: a fact ChatGPT saved about the user
#: (assistant → ``bio``, or one entry of its saved-memory snapshot);
#: ``instructions``: the user's custom instructions (their profile, or how to answer).
MessageKind = Literal["text", "memory", "instructions"]
Tier = Literal["micro", "medium", "macro"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    text: str
    time: datetime | None = None
    kind: MessageKind = "text"


@dataclass(slots=True)
class Conversation:
    id: str
    title: str
    created_at: datetime | None
    updated_at: datetime | None
    messages: list[Message] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One searchable segment of one conversation (a row of ``conversation_chunks``)."""

    id: str  # deterministic uuid: same export, same ids
    conversation_id: str
    title: str
    content: str
    token_count: int
    chunk_index: int
    total_chunks: int
    chunk_tier: Tier
    message_count: int
    is_recent: bool
    created_at: datetime | None
    content_hash: str
    #: The saved memories and custom instructions that start in this chunk:
    #: facts about the user by construction (each is filed once, with the
    #: first chunk that holds it).
    saved: tuple[Message, ...] = ()
