"""Fetch an import's export file into a local temp file.

``storage_path`` (``<bucket>/<user_id>/<file...>``) comes from a row the user
inserted, so it is validated before it touches a URL or the file system: it must
stay inside the user's own folder. The file then comes from Supabase Storage
(object download over HTTP, streamed) or, without Supabase settings, from
``$FULLPASS_STORAGE_DIR``. Either way it is copied into ``dest_dir`` while it is
hashed and measured, and the download size limit applies to bytes actually
received, whatever the server announced.

The service-role key is sent only as request headers; it never appears in an
error message or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote

import httpx

from worker.errors import BadInput, NeedsOperator, Transient
from worker.redact import redact, register_secrets
from worker.retry import retry_async
from worker.settings import Settings

log = logging.getLogger(__name__)

#: Download attempts, and the backoff base between them (1, 2, 4 s ... ±25 %).
ATTEMPTS = 4
RETRY_BASE_SECONDS = 1.0
#: A server's ``Retry-After`` is honoured up to this many seconds.
MAX_RETRY_AFTER: Final = 60.0
CONNECT_TIMEOUT: Final = 10.0
READ_TIMEOUT: Final = 60.0
COPY_BUFFER: Final = 1024 * 1024
MAX_STORAGE_PATH: Final = 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class FetchedExport:
    path: Path
    size: int
    sha256: str
    source: Literal["local", "supabase"]


def validate_storage_path(storage_path: str, user_id: str) -> tuple[str, str]:
    """``(bucket, object_path)`` of a storage path inside ``user_id``'s own folder.

    Raises :class:`BadInput` for anything that could point elsewhere: ``..`` or
    ``.`` segments, absolute paths, empty segments, backslashes, control
    characters, or a folder other than the user's.
    """
    shown = repr(storage_path)[:200]
    if not storage_path:
        raise BadInput("storage_path is empty")
    if len(storage_path) > MAX_STORAGE_PATH:
        raise BadInput(f"storage_path is longer than {MAX_STORAGE_PATH} characters")
    if _CONTROL.search(storage_path):
        raise BadInput(f"storage_path {shown} contains control characters")
    if "\\" in storage_path:
        raise BadInput(f"storage_path {shown} contains a backslash")
    if storage_path.startswith("/"):
        raise BadInput(f"storage_path {shown} is absolute; expected <bucket>/<user_id>/<file>")
    segments = storage_path.split("/")
    if any(segment == "" for segment in segments):
        raise BadInput(f"storage_path {shown} has an empty path segment")
    if any(segment in (".", "..") for segment in segments):
        raise BadInput(f"storage_path {shown} contains a '.' or '..' segment")
    if len(segments) < 3:
        raise BadInput(f"storage_path {shown} must look like <bucket>/<user_id>/<file>")
    if not _same_user(segments[1], user_id):
        raise BadInput(f"storage_path {shown} is outside the folder of user {user_id}")
    return segments[0], "/".join(segments[1:])


def _same_user(folder: str, user_id: str) -> bool:
    if folder == user_id:
        return True
    try:
        return uuid.UUID(folder) == uuid.UUID(user_id)
    except ValueError:
        return False


async def fetch_export(
    storage_path: str, user_id: str, settings: Settings, dest_dir: Path
) -> FetchedExport:
    """Copy the export at ``storage_path`` into a new file in ``dest_dir``.

    Raises :class:`BadInput` (missing, unsafe path, too large),
    :class:`Transient` (storage unreachable or failing after retries) or
    :class:`NeedsOperator` (storage refused the key: an operator must fix it).
    """
    bucket, object_path = validate_storage_path(storage_path, user_id)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if settings.uses_supabase_storage:
        return await _fetch_supabase(storage_path, bucket, object_path, settings, dest_dir)
    return await asyncio.to_thread(
        _copy_local, storage_path, bucket, object_path, settings, dest_dir
    )


# --------------------------------------------------------------------------- local


def _copy_local(
    storage_path: str, bucket: str, object_path: str, settings: Settings, dest_dir: Path
) -> FetchedExport:
    limit = settings.max_download_bytes
    fd = _open_below(settings.resolved_storage_dir, [bucket, *object_path.split("/")], storage_path)
    with os.fdopen(fd, "rb") as src:
        declared = os.fstat(src.fileno()).st_size
        if declared > limit:
            raise _too_large(storage_path, declared, limit)
        with _new_file(dest_dir) as (target, sink):
            digest = hashlib.sha256()
            size = 0
            while block := src.read(COPY_BUFFER):
                size += len(block)
                if size > limit:
                    raise _too_large(storage_path, size, limit)
                digest.update(block)
                sink.write(block)
    return FetchedExport(path=target, size=size, sha256=digest.hexdigest(), source="local")


def _open_below(root: Path, parts: list[str], storage_path: str) -> int:
    """Open ``root/parts...`` for reading without following any link below ``root``.

    The path was validated as ``<bucket>/<user>/<file>``, but a link inside
    the storage directory (``<user>/l.json -> ../<other>/export.json``, or a
    linked folder) would still lead into another user's files. Each component
    is opened relative to the previous one with ``O_NOFOLLOW``, so no link is
    ever followed, not even one swapped in between a check and the open. The
    storage root itself may be a link (an operator's choice).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(root.resolve(), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        raise BadInput(f"export file not found: {storage_path}") from None
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nxt = os.open(
                    part, flags | (0 if last else getattr(os, "O_DIRECTORY", 0)), dir_fd=fd
                )
            except FileNotFoundError:
                raise BadInput(f"export file not found: {storage_path}") from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(fd, part):
                    raise BadInput(
                        f"storage_path {storage_path!r} goes through a symbolic link ({part!r});"
                        " links are refused"
                    ) from None
                if exc.errno in (errno.ENOTDIR, errno.EISDIR):
                    raise BadInput(f"export file not found: {storage_path}") from None
                raise
            os.close(fd)
            fd = nxt
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadInput(f"export file not found: {storage_path}")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def _new_file(dest_dir: Path) -> Iterator[tuple[Path, _Sink]]:
    """A fresh file in ``dest_dir``, removed again if the body fails."""
    fd, name = tempfile.mkstemp(prefix="export-", suffix=".download", dir=dest_dir)
    path = Path(name)
    try:
        with _Sink(fd) as sink:
            yield path, sink
    except BaseException:
        path.unlink(missing_ok=True)
        raise


class _Sink:
    """Unbuffered writes to a file descriptor (blocks are large; the OS caches them)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)


def _too_large(storage_path: str, size: int, limit: int) -> BadInput:
    return BadInput(
        f"export {storage_path} is over the download limit: {size:,} bytes > {limit:,} "
        f"(FULLPASS_MAX_DOWNLOAD_BYTES)"
    )


# --------------------------------------------------------------------------- supabase


def object_url(supabase_url: str, bucket: str, object_path: str) -> str:
    """The Storage API URL of an object (each segment percent-encoded)."""
    return (
        f"{supabase_url.rstrip('/')}/storage/v1/object/"
        f"{quote(bucket, safe='')}/{quote(object_path, safe='/')}"
    )


async def _fetch_supabase(
    storage_path: str, bucket: str, object_path: str, settings: Settings, dest_dir: Path
) -> FetchedExport:
    if settings.supabase_url is None or settings.supabase_service_role_key is None:
        raise NeedsOperator("Supabase Storage is not configured")
    key = settings.supabase_service_role_key.get_secret_value()
    register_secrets([key])
    url = object_url(settings.supabase_url, bucket, object_path)
    headers = {"Authorization": f"Bearer {key}", "apikey": key}
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)

    def on_retry(exc: BaseException, attempt: int, delay: float) -> None:
        log.warning(
            "download of %s failed (attempt %d/%d: %s); retrying in %.1fs",
            storage_path,
            attempt,
            ATTEMPTS,
            redact(str(exc)),
            delay,
        )

    def retry_after(exc: BaseException) -> float | None:
        wait = exc.retry_after if isinstance(exc, Transient) else None
        return None if wait is None else min(wait, MAX_RETRY_AFTER)

    # Redirects are not followed: they would carry the key's headers to another host.
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        try:
            return await retry_async(
                lambda: _download_once(
                    client, url, headers, storage_path, settings.max_download_bytes, dest_dir
                ),
                attempts=ATTEMPTS,
                base=RETRY_BASE_SECONDS,
                cap=MAX_RETRY_AFTER,
                retryable=lambda exc: isinstance(exc, Transient),
                retry_after=retry_after,
                on_retry=on_retry,
            )
        except Transient as exc:
            raise Transient(
                f"could not download {storage_path} from storage after {ATTEMPTS} attempts:"
                f" {redact(str(exc))}",
                retry_after=exc.retry_after,
            ) from None


async def _download_once(
    client: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    storage_path: str,
    limit: int,
    dest_dir: Path,
) -> FetchedExport:
    try:
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code != httpx.codes.OK:
                body = await _read_capped(response.aiter_bytes(), 4096)
                raise _status_error(storage_path, response, body)
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise _too_large(storage_path, int(declared), limit)
            with _new_file(dest_dir) as (target, sink):
                digest = hashlib.sha256()
                size = 0
                async for block in response.aiter_bytes(COPY_BUFFER):
                    size += len(block)
                    if size > limit:
                        raise _too_large(storage_path, size, limit)
                    digest.update(block)
                    # Local disk writes of ≤1 MiB: cheaper inline than a thread hop per block.
                    sink.write(block)
            return FetchedExport(
                path=target, size=size, sha256=digest.hexdigest(), source="supabase"
            )
    except httpx.TransportError as exc:
        # Connection refused or reset, timeouts, and bodies cut short mid-transfer.
        raise Transient(f"{type(exc).__name__}: {exc}") from None


async def _read_capped(blocks: AsyncIterator[bytes], cap: int) -> bytes:
    out = b""
    async for block in blocks:
        out += block
        if len(out) >= cap:
            break
    return out[:cap]


def _status_error(storage_path: str, response: httpx.Response, body: bytes) -> Exception:
    status = _effective_status(response.status_code, body)
    if status == httpx.codes.NOT_FOUND:
        return BadInput(f"export not found in storage: {storage_path}")
    if status in (httpx.codes.UNAUTHORIZED, httpx.codes.FORBIDDEN):
        return NeedsOperator(
            f"storage refused the service key (HTTP {status}) for {storage_path}; "
            f"check SUPABASE_SERVICE_ROLE_KEY"
        )
    if status == httpx.codes.TOO_MANY_REQUESTS or status >= 500:
        return Transient(f"HTTP {status}", retry_after=_retry_after(response))
    return NeedsOperator(f"storage answered HTTP {status} for {storage_path}")


def _effective_status(status: int, body: bytes) -> int:
    """Supabase Storage reports some errors as HTTP 400 with the real code in the body."""
    if status != httpx.codes.BAD_REQUEST:
        return status
    try:
        data = json.loads(body)
        code = int(data.get("statusCode"))
    except (ValueError, TypeError, AttributeError):
        return status
    return code if code in (401, 403, 404) else status


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None
