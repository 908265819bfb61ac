"""Open an export file and hand out the JSON byte streams inside it.

Uploads arrive with arbitrary names (``export``, ``data.zip.json``...), so the
container is recognised by its first bytes, never by its name: a ZIP (ChatGPT
and Claude exports), gzip, or plain JSON. Everything is streamed: ZIP members
are read straight out of the archive, nothing is extracted to disk.

An export is untrusted input, so every stream is metered while it is read: the
total uncompressed size and the compression ratio are enforced on the bytes
actually produced, not on what the headers claim.
"""

from __future__ import annotations

import gzip
import posixpath
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from worker.errors import BadInput
from worker.settings import Settings

ContainerKind = Literal["zip", "gzip", "json"]

#: A compression ratio says little about tiny streams ("[]" compressed is bigger
#: than "[]"), so the ratio guard only bites past this many output bytes.
RATIO_SLACK_BYTES = 1024 * 1024
#: How many member names a "no conversations file" error lists.
LISTED_NAMES = 8

_SHARD = re.compile(r"conversations-(\d+)\.json", re.IGNORECASE)
#: The member that holds every conversation: JSON, or JSON Lines (one conversation a line).
_MAINS = ("conversations.json", "conversations.jsonl")
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_GZIP_MAGIC = b"\x1f\x8b"
#: Archive types people upload by mistake, named so the error says what was found.
_OTHER_MAGIC = {
    b"Rar!": "a RAR archive",
    b"7z\xbc\xaf": "a 7-Zip archive",
    b"BZh": "a bzip2 file",
    b"\xfd7zXZ": "an xz file",
    b"%PDF": "a PDF document",
}
_SUPPORTED_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size guards for one export (operator settings, see :class:`Settings`)."""

    max_download_bytes: int
    max_uncompressed_bytes: int
    max_zip_members: int
    max_zip_ratio: float

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        return cls(
            max_download_bytes=s.max_download_bytes,
            max_uncompressed_bytes=s.max_uncompressed_bytes,
            max_zip_members=s.max_zip_members,
            max_zip_ratio=s.max_zip_ratio,
        )


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Budget:
    """Uncompressed bytes left for the whole export, shared by all its streams."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, n: int, name: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise BadInput(
                f"{name}: export expands to more than {self.limit:,} bytes uncompressed "
                f"(FULLPASS_MAX_UNCOMPRESSED_BYTES); refusing it"
            )


class GuardedStream:
    """A read-only byte stream that meters what it produces.

    Decompression errors surface on ``read``; they are turned into
    :class:`BadInput` here so that callers (the JSON parser) see one error type
    that already names the member and the position.
    """

    def __init__(
        self,
        raw: Readable,
        *,
        name: str,
        container: ContainerKind,
        budget: _Budget,
        compressed_size: int | None,
        max_ratio: float,
    ) -> None:
        self._raw = raw
        self.name = name
        self.container: ContainerKind = container
        self.bytes_read = 0
        self._budget = budget
        # None: the stream is not compressed, so there is no ratio to watch.
        self._ratio_cap = (
            None
            if compressed_size is None
            else max(max_ratio * compressed_size, float(RATIO_SLACK_BYTES))
        )
        self._max_ratio = max_ratio

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._raw.read(n)
        except BadInput:
            raise
        except (zlib.error, EOFError, zipfile.BadZipFile, OSError) as exc:
            raise BadInput(
                f"{self.name}: compressed data is corrupt or truncated after "
                f"{self.bytes_read:,} bytes ({type(exc).__name__}: {exc})"
            ) from None
        size = len(data)
        self.bytes_read += size
        self._budget.spend(size, self.name)
        if self._ratio_cap is not None and self.bytes_read > self._ratio_cap:
            raise BadInput(
                f"{self.name}: expands more than {self._max_ratio:g}x its compressed size "
                f"(FULLPASS_MAX_ZIP_RATIO): refusing a likely zip bomb"
            )
        return data


def sniff(path: Path) -> ContainerKind:
    """The container kind of ``path`` from its magic bytes (BadInput if it is no export)."""
    with path.open("rb") as f:
        head = f.read(8)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    for magic, what in _OTHER_MAGIC.items():
        if head.startswith(magic):
            raise BadInput(f"{path.name}: this is {what}; upload the export as ZIP, gzip or JSON")
    return "json"


def open_json_streams(path: Path, limits: Limits) -> Iterator[GuardedStream]:
    """Yield the JSON streams of the export at ``path``, one at a time, in order.

    Each stream is closed when the caller asks for the next one (or stops
    iterating), so at most one member is open at once.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadInput(f"export file not found: {path.name}") from None
    if size > limits.max_download_bytes:
        raise BadInput(
            f"{path.name}: export is {size:,} bytes, over the limit of "
            f"{limits.max_download_bytes:,} (FULLPASS_MAX_DOWNLOAD_BYTES)"
        )
    if size == 0:
        raise BadInput(f"{path.name}: export file is empty")
    budget = _Budget(limits.max_uncompressed_bytes)
    kind = sniff(path)
    if kind == "zip":
        yield from _zip_streams(path, limits, budget)
        return
    with ExitStack() as stack:
        raw: Readable
        compressed: int | None = None
        if kind == "gzip":
            raw = stack.enter_context(gzip.GzipFile(path, mode="rb"))
            compressed = size
        else:
            raw = stack.enter_context(path.open("rb"))
        yield GuardedStream(
            raw,
            name=path.name,
            container=kind,
            budget=budget,
            compressed_size=compressed,
            max_ratio=limits.max_zip_ratio,
        )


def _zip_streams(path: Path, limits: Limits, budget: _Budget) -> Iterator[GuardedStream]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BadInput(
            f"{path.name}: starts like a ZIP but its directory cannot be read ({exc}); "
            f"the upload is probably truncated or corrupt"
        ) from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_zip_members:
            raise BadInput(
                f"{path.name}: ZIP has {len(infos):,} members, over the limit of "
                f"{limits.max_zip_members:,} (FULLPASS_MAX_ZIP_MEMBERS)"
            )
        for info in infos:
            _check_member_name(path, info.filename)
        chosen = select_conversation_members(infos)
        if not chosen:
            names = [i.filename for i in infos if not i.is_dir()]
            shown = ", ".join(names[:LISTED_NAMES]) or "nothing"
            more = f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES else ""
            raise BadInput(
                f"{path.name}: ZIP holds no conversations.json (or conversations.jsonl, "
                f"conversations-NNN.json); found {shown}{more}"
            )
        _check_declared_sizes(path, chosen, limits)
        for info in chosen:
            label = f"{path.name}:{info.filename}"
            try:
                member = archive.open(info)
            # zipfile raises NotImplementedError for a compression method it
            # lacks, RuntimeError for an encrypted member: both are bad input.
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as exc:
                raise BadInput(f"{label}: cannot open ZIP member ({exc})") from None
            with member:
                yield GuardedStream(
                    member,
                    name=label,
                    container="zip",
                    budget=budget,
                    compressed_size=info.compress_size,
                    max_ratio=limits.max_zip_ratio,
                )


def _check_member_name(path: Path, name: str) -> None:
    """Refuse archives with names that could escape a directory if ever extracted.

    Real exports never contain such names, so one of them means a crafted file.
    """
    unsafe = (
        name.startswith(("/", "\\"))
        or "\\" in name
        or "\x00" in name
        or re.match(r"^[A-Za-z]:", name) is not None
        or ".." in name.split("/")
    )
    if unsafe:
        raise BadInput(f"{path.name}: ZIP member has an unsafe path {name!r}; refusing the archive")


def select_conversation_members(infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The members holding conversations, in reading order.

    ``conversations.json`` (or ``conversations.jsonl``, one conversation a line)
    wins when present (the shallowest one, in case the export was re-zipped
    inside a folder; ``.json`` before ``.jsonl``); otherwise the ``conversations-NNN.json``
    shards of the shallowest folder that has them, in numeric order. macOS
    resource forks (``__MACOSX/``) are ignored.
    """
    files = [i for i in infos if not i.is_dir() and not i.filename.startswith("__MACOSX/")]

    def depth(i: zipfile.ZipInfo) -> int:
        return i.filename.count("/")

    def main_rank(i: zipfile.ZipInfo) -> int:
        name = posixpath.basename(i.filename).lower()
        return _MAINS.index(name) if name in _MAINS else -1

    mains = [i for i in files if main_rank(i) >= 0]
    if mains:
        return [min(mains, key=lambda i: (depth(i), main_rank(i), i.filename))]
    shards: list[tuple[int, zipfile.ZipInfo]] = []
    for info in files:
        match = _SHARD.fullmatch(posixpath.basename(info.filename))
        if match:
            shards.append((int(match.group(1)), info))
    if not shards:
        return []
    top = min((depth(i), posixpath.dirname(i.filename)) for _, i in shards)[1]
    same_dir = [(n, i) for n, i in shards if posixpath.dirname(i.filename) == top]
    return [i for _, i in sorted(same_dir, key=lambda pair: (pair[0], pair[1].filename))]


def _check_declared_sizes(path: Path, chosen: list[zipfile.ZipInfo], limits: Limits) -> None:
    """Fail fast on what the headers admit; :class:`GuardedStream` catches headers that lie."""
    total = 0
    for info in chosen:
        label = f"{path.name}:{info.filename}"
        if info.flag_bits & 0x1:
            raise BadInput(f"{label}: ZIP member is password-protected")
        if info.compress_type not in _SUPPORTED_ZIP_METHODS:
            raise BadInput(
                f"{label}: unsupported ZIP compression method {info.compress_type} "
                f"(only stored and deflate are accepted)"
            )
        if info.file_size > RATIO_SLACK_BYTES and (
            info.file_size > limits.max_zip_ratio * max(info.compress_size, 1)
        ):
            raise BadInput(
                f"{label}: declares {info.file_size:,} bytes from {info.compress_size:,} "
                f"compressed, a ratio over {limits.max_zip_ratio:g} (FULLPASS_MAX_ZIP_RATIO): "
                f"refusing a likely zip bomb"
            )
        total += info.file_size
    if total > limits.max_uncompressed_bytes:
        raise BadInput(
            f"{path.name}: conversations expand to {total:,} bytes, over the limit of "
            f"{limits.max_uncompressed_bytes:,} (FULLPASS_MAX_UNCOMPRESSED_BYTES)"
        )
