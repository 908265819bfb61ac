"""Fetching exports: path validation, the local directory, and a real HTTP Storage server."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker import storage
from worker.errors import BadInput, NeedsOperator, Transient
from worker.settings import Settings
from worker.storage import fetch_export, object_url, validate_storage_path

USER = "aaaaaaaa-0000-4000-8000-000000000001"
KEY = "service-role-key-THAT-MUST-NOT-LEAK"

Behaviour = Callable[[BaseHTTPRequestHandler], None]


# --------------------------------------------------------------------------- path validation


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"user-imports/{USER}/export.zip", ("user-imports", f"{USER}/export.zip")),
        (f"b/{USER}/2024/my export.json", ("b", f"{USER}/2024/my export.json")),
        (f"b/{USER.upper()}/x.zip", ("b", f"{USER.upper()}/x.zip")),
    ],
)
def test_valid_storage_paths(path: str, expected: tuple[str, str]) -> None:
    assert validate_storage_path(path, USER) == expected


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        (f"/b/{USER}/x.zip", "absolute"),
        (f"b/{USER}/../other/x.zip", r"'\.\.'"),
        (f"../{USER}/x.zip", r"'\.\.'"),
        (f"b/./{USER}/x.zip", r"'\.'"),
        (f"b//{USER}/x.zip", "empty path segment"),
        (f"b/{USER}/", "empty path segment"),
        (f"b\\{USER}\\x.zip", "backslash"),
        (f"b/{USER}/x\x00.zip", "control"),
        (f"b/{USER}/x\n.zip", "control"),
        (f"b/{USER}/x\x85.zip", "control"),
        ("b/bbbbbbbb-0000-4000-8000-000000000002/x.zip", "outside the folder"),
        (f"b/{USER}", "must look like"),
        (f"b/{USER}/" + "x" * 2000, "longer than"),
    ],
)
def test_invalid_storage_paths(path: str, reason: str) -> None:
    with pytest.raises(BadInput, match=reason):
        validate_storage_path(path, USER)


def test_object_url_encodes_segments() -> None:
    url = object_url("https://x.supabase.co/", "user imports", f"{USER}/a b#?.zip")
    assert url == f"https://x.supabase.co/storage/v1/object/user%20imports/{USER}/a%20b%23%3F.zip"


# --------------------------------------------------------------------------- local directory


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return Settings(FULLPASS_STORAGE_DIR=tmp_path / "storage", FULLPASS_HOME=tmp_path / "home")


def _put(settings: Settings, rel: str, data: bytes) -> Path:
    path = settings.resolved_storage_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def test_local_copy(local_settings: Settings, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    _put(local_settings, f"b/{USER}/export.zip", data)
    dest = tmp_path / "work"
    fetched = await fetch_export(f"b/{USER}/export.zip", USER, local_settings, dest)
    assert fetched.source == "local"
    assert fetched.size == len(data)
    assert fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert fetched.path.parent == dest and fetched.path.read_bytes() == data


async def test_local_missing_file(local_settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=f"export file not found: b/{USER}/nope.zip"):
        await fetch_export(f"b/{USER}/nope.zip", USER, local_settings, tmp_path / "work")


async def test_local_symlink_out_of_the_storage_dir_is_refused(
    local_settings: Settings, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    link = local_settings.resolved_storage_dir / "b" / USER / "export.zip"
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)
    with pytest.raises(BadInput, match="symbolic link"):
        await fetch_export(f"b/{USER}/export.zip", USER, local_settings, tmp_path / "work")


OTHER = "bbbbbbbb-0000-4000-8000-000000000002"


@pytest.mark.parametrize(
    "layout",
    ["file-link-to-another-user", "dir-link-to-another-user", "user-folder-is-a-link"],
)
async def test_links_cannot_reach_another_users_folder(
    local_settings: Settings, tmp_path: Path, layout: str
) -> None:
    root = local_settings.resolved_storage_dir / "user-imports"
    victim = _put(local_settings, f"user-imports/{OTHER}/export.json", b'[{"title": "B"}]')
    mine = root / USER
    if layout == "file-link-to-another-user":
        mine.mkdir(parents=True)
        (mine / "l.json").symlink_to(Path("..") / OTHER / "export.json")
        path = f"user-imports/{USER}/l.json"
    elif layout == "dir-link-to-another-user":
        mine.mkdir(parents=True)
        (mine / "d").symlink_to(victim.parent)
        path = f"user-imports/{USER}/d/export.json"
    else:
        mine.symlink_to(victim.parent)
        path = f"user-imports/{USER}/export.json"
    with pytest.raises(BadInput, match="symbolic link"):
        await fetch_export(path, USER, local_settings, tmp_path / "work")
    assert not list((tmp_path / "work").glob("*"))


async def test_a_storage_root_behind_a_link_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real-storage"
    (real / "b" / USER).mkdir(parents=True)
    (real / "b" / USER / "export.json").write_bytes(b"[]")
    (tmp_path / "storage").symlink_to(real)
    settings = Settings(FULLPASS_STORAGE_DIR=tmp_path / "storage", FULLPASS_HOME=tmp_path / "h")
    fetched = await fetch_export(f"b/{USER}/export.json", USER, settings, tmp_path / "work")
    assert fetched.size == 2


async def test_local_size_limit_leaves_nothing_behind(tmp_path: Path) -> None:
    settings = Settings(FULLPASS_STORAGE_DIR=tmp_path / "s", FULLPASS_MAX_DOWNLOAD_BYTES=1000)
    _put(settings, f"b/{USER}/big.json", b"x" * 1001)
    dest = tmp_path / "work"
    with pytest.raises(BadInput, match="over the download limit"):
        await fetch_export(f"b/{USER}/big.json", USER, settings, dest)
    assert not list(dest.iterdir())


# --------------------------------------------------------------------------- Storage over HTTP


@dataclass
class StorageServer:
    """A scripted stand-in for Supabase Storage's object endpoint."""

    script: list[Behaviour] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    def next(self) -> Behaviour:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def ok(body: bytes, *, chunked: bool = False) -> Behaviour:
    def run(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        if chunked:
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for start in range(0, len(body), 65536):
                piece = body[start : start + 65536]
                h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            h.wfile.write(b"0\r\n\r\n")
        else:
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

    return run


def status(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Behaviour:
    def run(h: BaseHTTPRequestHandler) -> None:
        h.send_response(code)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return run


def drop_mid_body(body: bytes) -> Behaviour:
    def run(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)
        h.close_connection = True

    return run


@pytest.fixture
def server() -> Iterator[StorageServer]:
    state = StorageServer()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            state.next()(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_retry_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "RETRY_BASE_SECONDS", 0.0)


def supabase(url: str, tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        SUPABASE_URL=url, SUPABASE_SERVICE_ROLE_KEY=KEY, FULLPASS_HOME=tmp_path / "home", **extra
    )


PATH = f"user-imports/{USER}/my export.zip"


async def test_streamed_download_sends_the_key_as_headers(
    server: StorageServer, tmp_path: Path
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    server.script = [ok(data, chunked=True)]
    fetched = await fetch_export(PATH, USER, supabase(server.url, tmp_path), tmp_path / "w")
    assert fetched.source == "supabase"
    assert (fetched.size, fetched.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert fetched.path.read_bytes() == data
    [(path, headers)] = server.requests
    assert path == f"/storage/v1/object/user-imports/{USER}/my%20export.zip"
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["apikey"] == KEY


@pytest.mark.parametrize(
    "behaviour",
    [
        status(404, b'{"error": "not found"}'),
        status(400, json.dumps({"statusCode": "404", "error": "not_found"}).encode()),
    ],
    ids=["http-404", "supabase-400-with-404"],
)
async def test_not_found(server: StorageServer, tmp_path: Path, behaviour: Behaviour) -> None:
    server.script = [behaviour]
    with pytest.raises(BadInput, match=f"export not found in storage: {PATH}"):
        await fetch_export(PATH, USER, supabase(server.url, tmp_path), tmp_path / "w")
    assert len(server.requests) == 1


@pytest.mark.parametrize("code", [401, 403])
async def test_refused_key_is_not_retried_and_not_leaked(
    server: StorageServer, tmp_path: Path, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    server.script = [status(code, json.dumps({"message": "bad jwt"}).encode())]
    with pytest.raises(NeedsOperator) as caught:
        await fetch_export(PATH, USER, supabase(server.url, tmp_path), tmp_path / "w")
    assert type(caught.value) is NeedsOperator
    assert f"HTTP {code}" in str(caught.value)
    assert KEY not in str(caught.value) and KEY not in caplog.text
    assert len(server.requests) == 1


async def test_server_errors_are_retried_then_transient(
    server: StorageServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server.script = [status(500)]
    dest = tmp_path / "w"
    with pytest.raises(Transient, match="after 4 attempts: HTTP 500") as caught:
        await fetch_export(PATH, USER, supabase(server.url, tmp_path), dest)
    assert len(server.requests) == 4
    assert KEY not in str(caught.value) and KEY not in caplog.text
    assert "retrying" in caplog.text
    assert not list(dest.iterdir())


async def test_body_cut_mid_way_is_retried(server: StorageServer, tmp_path: Path) -> None:
    data = os.urandom(512 * 1024)
    server.script = [drop_mid_body(data), status(503), status(429), ok(data)]
    dest = tmp_path / "w"
    fetched = await fetch_export(PATH, USER, supabase(server.url, tmp_path), dest)
    assert fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert len(server.requests) == 4
    assert list(dest.iterdir()) == [fetched.path]  # the partial attempt left nothing behind


async def test_unreachable_storage_is_transient(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(Transient, match="ConnectError"):
        await fetch_export(PATH, USER, supabase(f"http://127.0.0.1:{port}", tmp_path), tmp_path)


async def test_declared_size_over_limit(server: StorageServer, tmp_path: Path) -> None:
    server.script = [ok(b"x" * 5000)]
    settings = supabase(server.url, tmp_path, FULLPASS_MAX_DOWNLOAD_BYTES=4096)
    with pytest.raises(BadInput, match="over the download limit: 5,000"):
        await fetch_export(PATH, USER, settings, tmp_path / "w")
    assert len(server.requests) == 1


async def test_streamed_size_over_limit(server: StorageServer, tmp_path: Path) -> None:
    server.script = [ok(b"x" * 300_000, chunked=True)]
    settings = supabase(server.url, tmp_path, FULLPASS_MAX_DOWNLOAD_BYTES=100_000)
    dest = tmp_path / "w"
    with pytest.raises(BadInput, match="over the download limit"):
        await fetch_export(PATH, USER, settings, dest)
    assert not list(dest.iterdir())


async def test_redirects_are_not_followed(server: StorageServer, tmp_path: Path) -> None:
    server.script = [status(302, headers={"Location": "http://elsewhere.invalid/x"})]
    with pytest.raises(NeedsOperator, match="HTTP 302"):
        await fetch_export(PATH, USER, supabase(server.url, tmp_path), tmp_path / "w")


async def test_path_is_validated_before_any_request(server: StorageServer, tmp_path: Path) -> None:
    server.script = [ok(b"[]")]
    with pytest.raises(BadInput, match="outside the folder"):
        await fetch_export(
            "user-imports/someone-else/x.zip", USER, supabase(server.url, tmp_path), tmp_path
        )
    assert server.requests == []
