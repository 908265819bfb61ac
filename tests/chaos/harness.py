"""Plumbing for the chaos tests: worker processes, exports, audits, restarts, figures.

Workers are real OS processes (``python -m worker.cli worker``), each with its
own ``FULLPASS_HOME`` (as if on its own machine) and its own log file. The
audit trigger records every committed write to ``chunk_facts`` with the
wall-clock time of the write, which the tests hold against the fake
Messages API's request log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from jobs.domain.transcript import condense_transcript, novel_part
from tests.conftest import REPO, TEST_HOME, query
from tests.fakes.fake_anthropic import (
    FakeAnthropicServer,
    RecordedRequest,
    _first_user_text,
    _tagged,
)
from tests.helpers import gen_export, insert_import
from worker.options import Options

_REGISTERED = re.compile(r"registered as queue worker (\d+)")
RESULTS = REPO / "bench" / "results" / "chaos-last-run.json"
STAGES = ("download", "chunk", "extract", "reduce", "memory", "regenerate", "embed", "finalize")
#: Environment variables of the test process that must not leak into workers.
_SCRUB = ("DATABASE_URL", "TEST_DATABASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


_CONNECTIONS: dict[str, psycopg.Connection[dict[str, Any]]] = {}


def probe(dsn: str, statement: str, params: Any = None) -> list[dict[str, Any]]:
    """Like ``query``, on a kept-open connection (the chaos loops poll often)."""
    for attempt in (1, 2):
        conn = _CONNECTIONS.get(dsn)
        if conn is None or conn.closed:
            conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)
            _CONNECTIONS[dsn] = conn
        try:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            conn.close()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def close_probes() -> None:
    for conn in _CONNECTIONS.values():
        conn.close()
    _CONNECTIONS.clear()


def worker_env(
    dsn: str, tmp_path: Path, fake: FakeAnthropicServer, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of a worker process (the equivalent of ``make_settings``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FULLPASS_") and k not in _SCRUB}
    env.update(
        {
            "DATABASE_URL": dsn,
            "FULLPASS_STORAGE_DIR": str(tmp_path / "storage"),
            "FULLPASS_HEARTBEAT_SECONDS": "0.5",
            "FULLPASS_STALLED_SECONDS": "3",
            "FULLPASS_RETRY_BASE_SECONDS": "0",
            "FULLPASS_MAX_ATTEMPTS": "10",
            "FULLPASS_LOG_FORMAT": "json",
            "FULLPASS_MIN_CONVERSATIONS": "0",
            "PYTHONUNBUFFERED": "1",
            **fake.settings_env(),
            **(extra or {}),
        }
    )
    return env


@dataclass
class WorkerProcess:
    slot: int
    serial: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float
    #: procrastinate's worker id, once it has registered.
    worker_id: int | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Fleet:
    """Worker processes in numbered slots; every process is killed on close."""

    dsn: str
    env: dict[str, str]
    tmp_path: Path
    concurrency: int = 2
    #: What ``python`` runs (a debugging wrapper may stand in for the CLI module).
    python_args: tuple[str, ...] = ("-m", "worker.cli")
    processes: list[WorkerProcess] = field(default_factory=list)
    _serial: int = 0

    def start(self, slot: int, *, wait_registered: bool = True) -> WorkerProcess:
        self._serial += 1
        logs = self.tmp_path / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"worker-{slot}-{self._serial:03d}.log"
        # A replacement starts with an empty disk, like a new machine.
        env = {**self.env, "FULLPASS_HOME": str(self.tmp_path / f"home-{slot}-{self._serial}")}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    *self.python_args,
                    "worker",
                    "--concurrency",
                    str(self.concurrency),
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wp = WorkerProcess(slot, self._serial, proc, log_path, time.monotonic())
        self.processes.append(wp)
        if wait_registered:
            self.wait_registered(wp)
        return wp

    def refresh(self, wp: WorkerProcess, *, force: bool = False) -> int | None:
        """The procrastinate worker id ``wp`` last logged it registered as."""
        if wp.worker_id is not None and not force:
            return wp.worker_id
        found = _REGISTERED.findall(wp.log_path.read_text(errors="replace"))
        if found:
            wp.worker_id = int(found[-1])
        return wp.worker_id

    def wait_registered(self, wp: WorkerProcess, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not wp.alive:
                raise AssertionError(f"worker {wp.slot} exited:\n{tail(wp.log_path)}")
            if (worker_id := self.refresh(wp)) is not None:
                return worker_id
            time.sleep(0.05)
        raise AssertionError(f"worker {wp.slot} did not register:\n{tail(wp.log_path)}")

    def current(self, slot: int) -> WorkerProcess:
        return [p for p in self.processes if p.slot == slot][-1]

    def live(self) -> list[WorkerProcess]:
        slots = sorted({p.slot for p in self.processes})
        return [self.current(s) for s in slots if self.current(s).alive]

    def kill(self, wp: WorkerProcess, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(wp.proc.pid, sig)
        wp.proc.wait(timeout=10)

    def close(self) -> None:
        """SIGKILL every process this fleet started (teardown)."""
        close_probes()
        for wp in self.processes:
            if wp.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(wp.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                wp.proc.wait(timeout=10)

    def exited(self) -> list[WorkerProcess]:
        return [p for p in self.processes if p.proc.poll() is not None]

    def log_lines(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for wp in self.processes:
            for line in wp.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict):
                        entry["_worker"] = f"{wp.slot}/{wp.serial}"
                        out.append(entry)
        return out

    def count_logged(self, fragment: str) -> int:
        return sum(1 for e in self.log_lines() if fragment in str(e.get("message", "")))


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- exports


_EXPORTS: dict[tuple[int, int], Path] = {}


def export_file(cache: Path, conversations: int, seed: int) -> Path:
    """A generated ChatGPT ZIP export (cached per size and seed for the session)."""
    key = (conversations, seed)
    if key not in _EXPORTS or not _EXPORTS[key].exists():
        cache.mkdir(parents=True, exist_ok=True)
        out = cache / f"export-{conversations}-{seed}.zip"
        if not out.exists():
            gen_export(out, conversations=conversations, seed=seed, zipped=True)
        _EXPORTS[key] = out
    return _EXPORTS[key]


def submit_export(
    dsn: str, storage_root: Path, source: Path, options: dict[str, Any] | None = None
) -> tuple[uuid.UUID, uuid.UUID]:
    """Store ``source`` in a new user's folder and insert the import row."""
    user = uuid.uuid4()
    storage_path = f"user-imports/{user}/export.zip"
    target = storage_root / storage_path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return insert_import(dsn, user, storage_path, json.dumps(options or {})), user


# --------------------------------------------------------------------------- database


AUDIT_SQL = """
CREATE TABLE public.chaos_fact_writes (
    import_id uuid NOT NULL,
    chunk_id uuid NOT NULL,
    generation int,
    op text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION public.chaos_audit_fact() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.chaos_fact_writes (import_id, chunk_id, generation, op)
    VALUES (NEW.import_id, NEW.chunk_id,
            (SELECT generation FROM public.imports WHERE id = NEW.import_id), TG_OP);
    RETURN NULL;
END
$$;
CREATE TRIGGER chaos_audit_fact AFTER INSERT OR UPDATE ON public.chunk_facts
    FOR EACH ROW EXECUTE FUNCTION public.chaos_audit_fact();
"""


def install_audit(dsn: str) -> None:
    """Record every committed write to ``chunk_facts`` (test database only)."""
    query(dsn, AUDIT_SQL)


def statuses(dsn: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    rows = probe(
        dsn,
        "select id, status, stage, error, generation, attempts, chunk_count, created_at,"
        " started_at, completed_at from public.imports where id = any(%s)",
        (ids,),
    )
    return {r["id"]: r for r in rows}


def doing_jobs(dsn: str) -> list[dict[str, Any]]:
    return probe(
        dsn,
        "select j.id, j.worker_id, j.task_name, j.args ->> 'import_id' as import_id,"
        " coalesce(j.args ->> 'stage', substr(j.task_name, 10)) as stage,"
        " i.stage as import_stage"
        " from procrastinate_jobs j"
        " left join public.imports i on i.id::text = j.args ->> 'import_id'"
        " where j.status = 'doing'",
    )


def queued_or_running(dsn: str) -> int:
    rows = probe(
        dsn, "select count(*) as n from procrastinate_jobs where status in ('todo', 'doing')"
    )
    return int(rows[0]["n"])


def wait_all_final(
    dsn: str,
    ids: list[uuid.UUID],
    timeout: float,
    fleet: Fleet | None = None,
    finals: tuple[str, ...] = ("complete", "failed", "cancelled"),
) -> dict[uuid.UUID, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = statuses(dsn, ids)
        if all(r["status"] in finals for r in rows.values()):
            return rows
        if time.monotonic() > deadline:
            pending = {str(k): (r["status"], r["stage"], r["error"]) for k, r in rows.items()}
            logs = (
                "\n".join(f"--- {p.log_path.name}\n{tail(p.log_path, 15)}" for p in fleet.processes)
                if fleet
                else ""
            )
            raise AssertionError(f"imports not finished within {timeout}s: {pending}\n{logs}")
        time.sleep(0.2)


def check_chunks_and_facts(dsn: str, import_ids: list[uuid.UUID]) -> dict[str, int]:
    """No duplicate chunks, chunk_count matches, exactly one checkpoint per chunk."""
    dups = query(
        dsn,
        "select import_id, conversation_id, chunk_tier, chunk_index, count(*) as n"
        " from public.conversation_chunks group by 1, 2, 3, 4 having count(*) > 1",
    )
    assert dups == [], f"duplicate chunks: {dups[:5]}"
    totals = {"chunks": 0, "chunk_facts": 0}
    for import_id in import_ids:
        imp = query(dsn, "select chunk_count from public.imports where id = %s", (import_id,))[0]
        n_chunks = query(
            dsn,
            "select count(*) as n from public.conversation_chunks where import_id = %s",
            (import_id,),
        )[0]["n"]
        assert n_chunks == imp["chunk_count"] and n_chunks > 0, (import_id, n_chunks, imp)
        facts = query(
            dsn,
            "select count(*) as n, count(distinct f.chunk_id) as d,"
            " count(*) filter (where c.id is null) as orphans"
            " from public.chunk_facts f"
            " left join public.conversation_chunks c on c.id = f.chunk_id"
            " where f.import_id = %s",
            (import_id,),
        )[0]
        assert facts["n"] == facts["d"] == n_chunks, (import_id, facts, n_chunks)
        assert facts["orphans"] == 0, (import_id, facts)
        totals["chunks"] += n_chunks
        totals["chunk_facts"] += facts["n"]
    return totals


@dataclass
class ExtractionAudit:
    """What the fake served for each chunk, against what was checkpointed.

    An extraction call may carry one chunk or several small ones packed
    together (and a retry may pack them differently): a call is tied to every
    chunk whose condensed transcript it contains.
    """

    import_of: dict[str, uuid.UUID]
    #: chunk id -> successful extraction calls that carried it
    served: Counter[str]
    #: calls that carried a chunk whose checkpoint was already committed
    repeats_after_checkpoint: list[tuple[str, str]]
    writes_per_chunk: Counter[tuple[str, int]]
    unmatched_calls: int
    calls: int
    max_members: int
    index: dict[str, list[tuple[str, str]]] = field(repr=False, default_factory=dict)

    def members(self, call: RecordedRequest) -> set[str]:
        """The chunks one extraction call carried."""
        return _members(_tagged(_first_user_text(call.body), "transcript") or "", self.index)

    def chunks_of(self, import_id: uuid.UUID) -> list[str]:
        return [c for c, i in self.import_of.items() if i == import_id]

    def max_calls_per_chunk(self, import_id: uuid.UUID) -> int:
        return max((self.served[c] for c in self.chunks_of(import_id)), default=0)

    def repeated(self, import_id: uuid.UUID) -> int:
        """Chunk extractions beyond one per chunk (calls in flight at a kill, re-asked)."""
        return sum(max(0, self.served[c] - 1) for c in self.chunks_of(import_id))


def audit_extractions(
    dsn: str,
    fake: FakeAnthropicServer,
    import_ids: list[uuid.UUID],
    *,
    generation: int | None = None,
    since: float | None = None,
) -> ExtractionAudit:
    """Tie the fake's successful extraction calls to chunks and their checkpoint writes.

    A chunk's extraction may be repeated only while it has no checkpoint: a
    successful call carrying a chunk that *started* after the chunk's first
    committed ``chunk_facts`` write was paid for twice. ``generation`` and
    ``since`` (wall-clock time) restrict the audit to one run of a requeued
    import: its writes of that generation, the calls started after ``since``.
    """
    offset = time.time() - time.monotonic()  # the fake records monotonic times
    import_of: dict[str, uuid.UUID] = {}
    index: dict[str, list[tuple[str, str]]] = {}
    variants: list[tuple[str, str]] = []  # a chunk's id, and text it may have gone out as
    for import_id in import_ids:
        # Published chunks, or a pass's staged ones (a cancelled or failed pass publishes none).
        rows = query(
            dsn,
            "select distinct id::text as id, conversation_id, chunk_index, content from ("
            " select id, conversation_id, chunk_index, content from public.conversation_chunks"
            " where import_id = %s"
            " union all"
            " select id, conversation_id, chunk_index, content from public.import_chunks"
            " where import_id = %s) c"
            " order by conversation_id, chunk_index",
            (import_id, import_id),
        )
        previous: dict[str, Any] | None = None
        for r in rows:
            # A chunk goes out whole, or without the overlap it shares with the
            # chunk before it when both were extracted in the same run.
            texts = [r["content"]]
            if (
                previous is not None
                and previous["conversation_id"] == r["conversation_id"]
                and previous["chunk_index"] == r["chunk_index"] - 1
            ):
                texts.append(novel_part(previous["content"], r["content"]))
            previous = r
            for transcript in {v for text in texts for v in _as_sent(text)} - {""}:
                import_of[r["id"]] = import_id
                variants.append((r["id"], transcript))
    # Text that several chunks may have gone out as (a chunk that is all
    # overlap with the one before it, a paste sent before left as a marker)
    # names none of them: it is matched, as SHARED, and counted for no chunk.
    owners: dict[str, set[str]] = {}
    for chunk_id, transcript in variants:
        owners.setdefault(transcript, set()).add(chunk_id)
    for transcript, ids in owners.items():
        owner = next(iter(ids)) if len(ids) == 1 else SHARED
        index.setdefault(transcript[:_PREFIX], []).append((owner, transcript))
    writes = query(
        dsn,
        "select chunk_id::text as chunk_id, generation, at from public.chaos_fact_writes"
        " where import_id = any(%s) order by at",
        (import_ids,),
    )
    writes_per_chunk: Counter[tuple[str, int]] = Counter()
    first_write: dict[str, float] = {}
    for w in writes:
        writes_per_chunk[(w["chunk_id"], w["generation"])] += 1
        if generation is None or w["generation"] == generation:
            first_write.setdefault(w["chunk_id"], w["at"].timestamp())
    served: Counter[str] = Counter()
    repeats: list[tuple[str, str]] = []
    unmatched = 0
    max_members = 0
    calls = [
        c for c in fake.calls("extract", ok=True) if since is None or c.started + offset >= since
    ]
    for call in calls:
        members = _members(_tagged(_first_user_text(call.body), "transcript") or "", index)
        unmatched += not members
        max_members = max(max_members, len(members))
        started = call.started + offset
        for chunk_id in members - {SHARED}:
            served[chunk_id] += 1
            if chunk_id in first_write and started > first_write[chunk_id]:
                repeats.append((chunk_id, datetime.fromtimestamp(started, UTC).isoformat()))
    return ExtractionAudit(
        import_of, served, repeats, writes_per_chunk, unmatched, len(calls), max_members, index
    )


_PREFIX = 48
#: What text several chunks may have gone out as is matched as.
SHARED = "shared"


class _Everything(set[str]):
    """A set of pastes already sent that holds every paste."""

    def __contains__(self, item: object) -> bool:
        return True


def _as_sent(text: str) -> set[str]:
    """How a chunk's text may have gone out: whole, with long pastes cut, or them sent before."""
    paste_chars = Options().paste_chars
    return {
        condense_transcript(text),
        condense_transcript(text, paste_chars=paste_chars),
        condense_transcript(text, paste_chars=paste_chars, seen=_Everything()),
    }


def _members(text: str, index: dict[str, list[tuple[str, str]]]) -> set[str]:
    """Chunks whose condensed transcript is one member of ``text``.

    A member is the whole text, or what follows a member's header line up to
    the next header (or the end): the start or end of a longer transcript is
    not a chunk of its own.
    """
    found: set[str] = set()
    starts = [0, *(m.end() for m in _HEADER.finditer(text))]
    for p in starts:
        for chunk_id, transcript in index.get(text[p : p + _PREFIX], ()):
            end = p + len(transcript)
            if text.startswith(transcript, p) and (
                end == len(text) or text.startswith(_NEXT_MEMBER, end)
            ):
                found.add(chunk_id)
    return found


#: What follows a member of a packed call that is not its last.
_NEXT_MEMBER = "\n\nSystem: new conversation ["
#: The header line of a member of a packed call.
_HEADER = re.compile(r"^System: new conversation \[c\d+\].*\n", re.M)


# --------------------------------------------------------------------------- postgres


def restart_postgres(server_dsn: str, down_seconds: float = 0.0) -> float:
    """Restart the test server, fast shutdown (every session is cut).

    With ``down_seconds``, the server stays stopped that long before it starts
    again. Returns the seconds the whole operation took.
    """
    started = time.monotonic()
    if os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL"):
        params = conninfo_to_dict(server_dsn)
        host = str(params.get("host") or "")
        if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
            raise RuntimeError(f"cannot restart a remote PostgreSQL ({host})")
        cluster = [_cluster_version(str(params.get("port") or "5432")), "main"]
        ctl = ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster]
        if down_seconds:
            _run([*ctl, "stop", "-m", "fast"])
            time.sleep(down_seconds)
            _run([*ctl, "start"])
        else:
            _run([*ctl, "restart", "-m", "fast"])
    else:
        pgdata = TEST_HOME / "pgdata"
        # postmaster.opts: the server's command line (binary of the right major version).
        postgres, *opts = shlex.split((pgdata / "postmaster.opts").read_text())
        pg_ctl = [
            str(Path(postgres).with_name("pg_ctl")),
            "-D",
            str(pgdata),
            "-l",
            str(pgdata / "log"),
            "-w",
            "-t",
            "60",
        ]
        # The server runs as the `pgserver` system user when we are root.
        user = "pgserver" if os.geteuid() == 0 else None
        if down_seconds:
            # `start` needs the options the server was started with (socket dir...).
            if "-D" in opts:
                del opts[opts.index("-D") : opts.index("-D") + 2]
            _run([*pg_ctl, "stop", "-m", "fast"], user)
            time.sleep(down_seconds)
            _run([*pg_ctl, "-o", shlex.join(opts), "start"], user)
        else:
            _run([*pg_ctl, "restart", "-m", "fast"], user)
    return time.monotonic() - started


def _run(cmd: list[str], user: str | None = None) -> None:
    subprocess.run(
        cmd,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=90,
        user=user,
    )


def _cluster_version(port: str) -> str:
    out = subprocess.run(["pg_lsclusters", "-h"], check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == port:
            return parts[0]
    raise RuntimeError(f"no local cluster on port {port}")


def database_kind() -> str:
    if os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL"):
        return "system-postgresql"
    return "embedded-postgresql"


# --------------------------------------------------------------------------- figures


def record_figures(test: str, figures: dict[str, Any]) -> None:
    """Merge one test's figures into ``bench/results/chaos-last-run.json``."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if RESULTS.exists():
        with contextlib.suppress(ValueError):
            data = json.loads(RESULTS.read_text())
    kind = database_kind()
    data.setdefault("runs", {}).setdefault(kind, {})[test] = {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **figures,
    }
    data["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    print(f"\n[{test} on {kind}] " + json.dumps(figures, sort_keys=True, default=str))
