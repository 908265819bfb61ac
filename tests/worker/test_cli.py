"""The ``fullpass`` command line, run as the operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import USER_A, USER_B, query
from tests.helpers import SAMPLE, import_row, jobs_of
from worker import migrate, operator
from worker.cli import main
from worker.settings import get_settings


@pytest.fixture
def env(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    values = {
        "DATABASE_URL": db_dsn,
        "FULLPASS_HOME": str(tmp_path / "home"),
        "FULLPASS_STORAGE_DIR": str(tmp_path / "storage"),
        "FULLPASS_LLM": "offline",
        "FULLPASS_HEARTBEAT_SECONDS": "0.5",
        "FULLPASS_MIN_CONVERSATIONS": "0",
    }
    for key in ("ANTHROPIC_API_KEY", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_status_requeue_cancel(
    env: dict[str, str], db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "submit", str(SAMPLE), "--user", str(USER_A))
    assert code == 0
    import_id = uuid.UUID(out.strip())
    stored = Path(env["FULLPASS_STORAGE_DIR"]) / "user-imports" / str(USER_A) / SAMPLE.name
    assert stored.read_bytes() == SAMPLE.read_bytes()
    row = import_row(db_dsn, import_id)
    assert row["storage_path"] == f"user-imports/{USER_A}/{SAMPLE.name}"
    assert len(jobs_of(db_dsn, import_id)) == 1

    code, _, err = run(capsys, "submit", str(SAMPLE), "--user", str(USER_A))
    assert code == 1
    assert "already has a full pass in progress" in err

    code, out, _ = run(capsys, "status")
    assert code == 0 and str(import_id) in out and "pending" in out
    code, out, _ = run(capsys, "status", str(import_id))
    assert code == 0
    for stage in ("download", "chunk", "extract", "finalize"):
        assert stage in out

    code, out, _ = run(capsys, "requeue", str(import_id), "--from", "chunk")
    assert code == 0 and out.startswith("requeued as job ")
    # Nothing ran yet: the unfinished download comes first, then chunk and what follows.
    assert import_row(db_dsn, import_id)["stage"] == "download"

    code, out, _ = run(capsys, "cancel", str(import_id))
    assert (code, out.strip()) == (0, "cancelled")
    code, out, _ = run(capsys, "cancel", str(import_id))
    assert code == 0 and "already finished" in out

    code, _, err = run(capsys, "requeue", "not-a-uuid")
    assert code == 1 and "not a valid import id" in err
    code, _, err = run(capsys, "status", str(uuid.uuid4()))
    assert code == 1 and "does not exist" in err
    code, _, err = run(capsys, "submit", "/nonexistent/export.zip", "--user", str(USER_B))
    assert code == 1 and "no such file" in err


def test_status_output_is_clean_in_a_terminal_and_when_piped(
    env: dict[str, str], db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "submit", str(SAMPLE), "--user", str(USER_A))
    import_id = uuid.UUID(out.strip())

    # The progress bar has a line of its own, the stage table starts below it.
    progress = query(
        db_dsn, "select * from public.import_progress where import_id = %s", (import_id,)
    )
    stages = query(db_dsn, "select * from public.import_stages where import_id = %s", (import_id,))
    console = Console(force_terminal=True, width=120, record=True)
    console.print(operator.import_panel(progress[0], stages))
    lines = console.export_text().splitlines()
    bar = next(line for line in lines if "━" in line)
    assert set(bar.strip()) == {"━"}, bar
    assert lines[lines.index(bar) + 1].split()[:2] == ["stage", "status"]

    # Piped, --watch prints plain lines (no redraw codes), then the final panel.
    run(capsys, "cancel", str(import_id))
    code, out, _ = run(capsys, "status", str(import_id), "--watch")
    assert code == 1
    assert "\x1b" not in out and "\r" not in out
    first = out.splitlines()[0].split()
    assert first[1:4] == ["cancelled", "stage", "1/8"], out
    assert any(line.split()[:2] == ["stage", "status"] for line in out.splitlines())


def test_migrate_downgrade_steps_down_and_refuses_what_is_not_fullpass(
    env: dict[str, str], db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "migrate", "--downgrade", "0002x")
    assert code == 1 and "unknown revision '0002x'" in err
    code, out, _ = run(capsys, "migrate", "--downgrade", "0001")
    assert (code, out.strip()) == (0, "database at revision 0001")
    assert query(db_dsn, "select to_regclass('public.imports') as t") == [{"t": None}]
    code, _, err = run(capsys, "migrate", "--downgrade", "0002")
    assert code == 1 and "newer than 0001" in err
    code, out, _ = run(capsys, "migrate", "--downgrade")
    assert (code, out.strip()) == (0, "database at revision base: fullpass removed")
    code, _, err = run(capsys, "migrate", "--downgrade")
    assert code == 1 and "not at a fullpass revision" in err

    # another alembic history (the app's own, say) in the same version table is left alone
    query(db_dsn, "insert into alembic_version values ('c0ffee')")
    code, _, err = run(capsys, "migrate", "--downgrade")
    assert code == 1 and "revision 'c0ffee', which is not one of fullpass's" in err
    assert query(db_dsn, "select version_num from alembic_version") == [{"version_num": "c0ffee"}]
    query(db_dsn, "delete from alembic_version")

    code, out, _ = run(capsys, "migrate")
    assert (code, out.strip()) == (0, f"database at revision {migrate.head()}")


def test_inspect_prints_stats_and_jsonl(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "inspect", str(SAMPLE))
    assert code == 0
    assert "40" in out  # conversations
    code, out, _ = run(capsys, "inspect", str(SAMPLE), "--jsonl")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) > 40
    keys = {
        "conversation_id",
        "chunk_index",
        "total_chunks",
        "chunk_tier",
        "token_count",
        "content",
        "content_hash",
    }
    assert all(keys <= set(line) for line in lines)
    code, _, err = run(capsys, "inspect", "/nonexistent.zip")
    assert code == 1 and "no such file" in err


def test_health(
    env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "health")
    report = json.loads(out)
    assert code == 1 and report["database"] is True
    assert any("heartbeat" in p for p in report["problems"]), report["problems"]

    monkeypatch.setenv(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"
    )
    get_settings.cache_clear()
    code, out, _ = run(capsys, "health")
    report = json.loads(out)
    assert code == 1 and report["database"] is False


def test_worker_process_completes_an_import_and_stops_on_sigterm(
    env: dict[str, str], db_dsn: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "submit", str(SAMPLE), "--user", str(USER_A))
    import_id = uuid.UUID(out.strip())
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker", "--concurrency", "2"],
        env={**os.environ, **env, "FULLPASS_LOG_FORMAT": "json"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while import_row(db_dsn, import_id)["status"] not in ("complete", "failed"):
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        code, out, _ = run(capsys, "health")
        assert code == 0, out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert import_row(db_dsn, import_id)["status"] == "complete"
    entries = [
        json.loads(line)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    done = [e for e in entries if e["message"] == "stage done"]
    assert {e["stage"] for e in done} >= {"download", "chunk", "extract", "finalize"}
    assert all(
        e["import_id"] == str(import_id) and "duration_s" in e and e["attempt"] == 1 for e in done
    )
    assert query(db_dsn, "select count(*) as n from procrastinate_workers") == [{"n": 0}]

    code, out, _ = run(capsys, "memory", str(import_id))
    assert code == 0 and "## Preferences" in out


def _children(pid: int) -> list[str]:
    """Command lines of ``pid``'s child processes."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_starting_worker_has_its_export_reader_ready_before_the_first_import(
    env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker", "--concurrency", "1"],
        env={**os.environ, **env, "FULLPASS_LOG_FORMAT": "json"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while "worker starting" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        servers = [c for c in _children(proc.pid) if "multiprocessing.forkserver" in c]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert len(servers) == 1, _children(proc.pid)
    # The reader's modules and the worker's own main module load once, in the
    # server, not in every import's reader.
    assert "'jobs.chunk'" in servers[0] and "'worker.cli'" in servers[0]


def test_submit_from_chunks_starts_a_backfill(
    env: dict[str, str], db_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "submit", "--user", str(USER_A))
    assert code == 1 and "--from-chunks" in err
    code, out, _ = run(capsys, "submit", "--from-chunks", "--user", str(USER_A))
    assert code == 0
    row = import_row(db_dsn, uuid.UUID(out.strip()))
    assert (row["source"], row["storage_path"], row["status"]) == ("chunks", None, "pending")
