"""The completion callback: written by the transaction that ends an import, sent once, signed.

A local receiver (``tests/webhooks.py``) checks every delivery's Standard
Webhooks signature with the secret, with the ``standardwebhooks`` verifier
and with an HMAC of its own. Payloads are held against the database.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from jobs import registry
from jobs.context import StageContext, StageResult
from tests.conftest import USER_A, USER_B, make_settings, query, wait_for
from tests.helpers import import_row, insert_import, running_worker, submit, wait_status
from tests.test_security import PATH_A, denied, session
from tests.webhooks import WebhookReceiver, check_signature
from worker import maintenance, outbox
from worker.settings import Settings

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
#: Every field of the body.
FIELDS = {
    "id",
    "event",
    "timestamp",
    "user_id",
    "import_id",
    "generation",
    "status",
    "stage",
    "error",
    "soulprint_ready",
    "memory_building",
    "memory_ready",
    "chunks_embedded",
    "processing_time",
    "conversations",
    "chunks",
    "facts",
}


def callback_settings(dsn: str, tmp_path: Path, url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "FULLPASS_CALLBACK_URL": url,
        "FULLPASS_CALLBACK_SECRET": SECRET,
        "FULLPASS_CALLBACK_RETRY_BASE_SECONDS": 0.2,
        "FULLPASS_CALLBACK_TIMEOUT": 5,
        **overrides,
    }
    return make_settings(dsn, tmp_path, **values)


@contextlib.asynccontextmanager
async def sending(
    pool: AsyncConnectionPool[Any], settings: Settings, dsn: str, senders: int = 1
) -> AsyncIterator[None]:
    """``senders`` callback loops, as workers run them, in this event loop."""
    tasks = [
        asyncio.create_task(outbox.loop(pool, settings, dsn), name=f"sender {i}")
        for i in range(senders)
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def events(dsn: str, import_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    where = "" if import_id is None else " where import_id = %(id)s"
    return query(dsn, f"select * from import_events{where} order by created_at", {"id": import_id})


def cancelled_import(dsn: str, user: uuid.UUID = USER_A) -> uuid.UUID:
    """An import of ``user`` inserted and cancelled while still queued."""
    path = PATH_A.replace(str(USER_A), str(user))
    import_id = insert_import(dsn, user, path)
    assert query(dsn, "select public.cancel_import(%s) as c", (import_id,)) == [{"c": True}]
    return import_id


def database_view(dsn: str, import_id: uuid.UUID) -> dict[str, Any]:
    """What the payload must say, read from the database now."""
    imp = import_row(dsn, import_id)
    profile = query(
        dsn,
        "select coalesce(bool_or(soulprint_text is not null), false) as s,"
        " coalesce(bool_or(memory_md is not null), false) as m"
        " from user_profiles where user_id = %s",
        (imp["user_id"],),
    )[0]
    has_embedding = query(
        dsn,
        "select 1 from information_schema.columns where table_schema = 'public'"
        " and table_name = 'conversation_chunks' and column_name = 'embedding'",
    )
    embedded = (
        query(
            dsn,
            "select count(*) as n from conversation_chunks"
            " where user_id = %s and embedding is not null",
            (imp["user_id"],),
        )[0]["n"]
        if has_embedding
        else 0
    )
    building = query(
        dsn,
        "select exists (select 1 from imports where user_id = %s"
        " and status in ('pending', 'processing')) as b",
        (imp["user_id"],),
    )[0]["b"]
    kind = {"complete": "import.completed", "failed": "import.failed"}.get(
        imp["status"], "import.cancelled"
    )
    elapsed = imp["completed_at"] - (imp["started_at"] or imp["created_at"])
    return {
        "event": kind,
        "timestamp": imp["completed_at"]
        .astimezone(UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "user_id": str(imp["user_id"]),
        "import_id": str(import_id),
        "generation": imp["generation"],
        "status": imp["status"],
        "stage": imp["stage"],
        "error": None if imp["status"] == "complete" else imp["error"],
        "soulprint_ready": profile["s"],
        "memory_building": building,
        "memory_ready": profile["m"],
        "chunks_embedded": embedded,
        "processing_time": pytest.approx(elapsed.total_seconds(), abs=0.002),
        "conversations": imp["conversation_count"],
        "chunks": imp["chunk_count"],
        "facts": imp["fact_count"],
    }


def assert_delivered_once(
    hooks: WebhookReceiver, dsn: str, import_id: uuid.UUID, path: str = "/done"
) -> dict[str, Any]:
    """One event for the import, delivered once, signed; its body (checked against the DB)."""
    rows = events(dsn, import_id)
    assert len(rows) == 1, rows
    event = rows[0]
    assert event["delivered_at"] is not None and event["failed_at"] is None, event
    assert event["attempts"] == 1 and event["lease"] is None
    mine = [d for d in hooks.on(path) if d.webhook_id == str(event["id"])]
    assert len(mine) == 1, hooks.per_id()
    delivery = mine[0]
    assert delivery.verified is True, delivery.problem
    assert delivery.headers["content-type"] == "application/json"
    body = delivery.json
    assert set(body) == FIELDS
    assert body["id"] == str(event["id"]) and body == event["payload"]
    assert {k: v for k, v in body.items() if k != "id"} == database_view(dsn, import_id)
    return dict(body)


# --------------------------------------------------------------------------- signing


def test_the_secret_forms_the_spec_allows_and_those_it_does_not() -> None:
    key = bytes(range(32))
    b64 = base64.b64encode(key).decode()
    for form in (f"whsec_{b64}", b64, f"v1,whsec_{b64}", f" whsec_{b64}\n", b64.rstrip("=")):
        assert outbox.signing_key(form) == key, form
    for bad in ("not base64 at all!", "whsec_" + base64.b64encode(b"short").decode(), "", "whsec_"):
        with pytest.raises(outbox.CallbackSecretError) as caught:
            outbox.signing_key(bad)
        assert "FULLPASS_CALLBACK_SECRET" in str(caught.value)
        assert not bad or bad.strip() not in str(caught.value).replace("whsec_ ", "")


def test_the_headers_verify_with_the_library_and_by_hand() -> None:
    webhook = outbox.Webhook(outbox.signing_key(SECRET))
    body = outbox.body_of({"b": 1, "a": "é"})
    at = datetime.now(UTC).replace(microsecond=0)
    headers = outbox.signed_headers(webhook, "evt-1", body, at)
    assert headers["webhook-id"] == "evt-1"
    assert headers["webhook-timestamp"] == str(int(at.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")
    assert check_signature(SECRET, headers, body) is None
    assert check_signature(SECRET, headers, body + b" ") is not None
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    assert check_signature(other, headers, body) is not None
    assert "webhook-signature" not in outbox.signed_headers(None, "evt-1", body, at)


async def test_a_bad_secret_stops_the_worker_at_start(db_dsn: str, tmp_path: Path) -> None:
    settings = callback_settings(
        db_dsn, tmp_path, "http://127.0.0.1:9/x", FULLPASS_CALLBACK_SECRET="whsec_abc"
    )
    with pytest.raises(outbox.CallbackSecretError):
        async with running_worker(settings) as worker:
            await asyncio.wait_for(worker, timeout=30)


# --------------------------------------------------------------------------- through a worker


async def test_a_completed_import_is_called_back_once_signed_with_the_databases_state(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the NOTIFY the sender would look only every minute: the callback is prompt.
    monkeypatch.setattr(outbox, "POLL_SECONDS", 60.0)
    with WebhookReceiver(secret=SECRET) as hooks:
        settings = callback_settings(db_dsn, tmp_path, hooks.url + "/done")
        import_id = submit(settings, USER_A)
        async with running_worker(settings) as worker:
            row = await wait_status(db_dsn, import_id, ("complete",), worker=worker)
            await wait_for(lambda: events(db_dsn, import_id)[0]["delivered_at"], timeout=10)
            await asyncio.sleep(0.5)  # nothing more arrives
        body = assert_delivered_once(hooks, db_dsn, import_id)
    assert body["event"] == "import.completed" and body["status"] == "complete"
    assert body["soulprint_ready"] is True and body["memory_ready"] is True
    assert body["memory_building"] is False and body["error"] is None
    assert body["conversations"] == 40 and body["chunks"] == row["chunk_count"] > 40
    delivered = hooks.on("/done")[0].at
    assert delivered - row["completed_at"].timestamp() < 5.0


async def test_a_failed_import_is_called_back_once_and_operators_still_alerted(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(ctx: StageContext) -> StageResult:
        raise RuntimeError("boom")

    monkeypatch.setitem(registry.STAGE_FUNCTIONS, "memory", broken)
    with WebhookReceiver(secret=SECRET) as hooks, WebhookReceiver() as alerts:
        settings = callback_settings(
            db_dsn,
            tmp_path,
            hooks.url + "/done",
            FULLPASS_ALERT_WEBHOOK=alerts.url + "/alert",
            FULLPASS_MAX_ATTEMPTS=2,
        )
        import_id = submit(settings, USER_A)
        async with running_worker(settings) as worker:
            await wait_status(db_dsn, import_id, ("failed",), worker=worker)
            await wait_for(lambda: events(db_dsn, import_id)[0]["delivered_at"], timeout=10)
            await asyncio.sleep(0.5)
        body = assert_delivered_once(hooks, db_dsn, import_id)
    assert body["event"] == "import.failed" and body["status"] == "failed"
    assert body["stage"] == "memory" and body["error"] == "memory: RuntimeError: boom"
    # The earlier stages' work is there; the v2 profile is not.
    assert body["soulprint_ready"] is False and body["memory_ready"] is False
    assert body["conversations"] == 40 and body["chunks"] > 40
    assert [a.json["event"] for a in alerts.on("/alert")] == ["import_failed"]


async def test_a_cancelled_import_is_called_back_once(db_dsn: str, tmp_path: Path) -> None:
    with WebhookReceiver(secret=SECRET) as hooks:
        settings = callback_settings(db_dsn, tmp_path, hooks.url + "/done")
        import_id = cancelled_import(db_dsn)
        async with running_worker(settings):
            await wait_for(lambda: events(db_dsn, import_id)[0]["delivered_at"], timeout=10)
            await asyncio.sleep(0.5)
        body = assert_delivered_once(hooks, db_dsn, import_id)
    assert body["event"] == "import.cancelled" and body["status"] == "cancelled"
    assert body["error"] == "cancelled by operator" and body["generation"] == 2
    assert body["conversations"] is None and body["chunks_embedded"] == 0


# --------------------------------------------------------------------------- retries


async def test_a_failing_receiver_gets_retries_with_backoff_then_it_is_delivered(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    with WebhookReceiver(secret=SECRET, statuses=[500, 500, 200]) as hooks:
        settings = callback_settings(db_dsn, tmp_path, hooks.url + "/done")
        import_id = cancelled_import(db_dsn)
        async with sending(pool, settings, db_dsn):
            await wait_for(lambda: events(db_dsn, import_id)[0]["delivered_at"], timeout=15)
            await asyncio.sleep(0.5)
        deliveries = hooks.on("/done")
    event = events(db_dsn, import_id)[0]
    assert [d.status for d in deliveries] == [500, 500, 200]
    assert {d.webhook_id for d in deliveries} == {str(event["id"])}
    assert all(d.verified for d in deliveries)  # re-signed at each attempt
    assert len({d.body for d in deliveries}) == 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(deliveries)]
    # backoff: 0.2 s, then 0.4 s (±25 %)
    assert 0.15 <= gaps[0] < 1.5 and 0.3 <= gaps[1] < 2.0, gaps
    assert event["attempts"] == 3 and event["last_error"] == "HTTP 500"
    assert event["delivered_at"] is not None and event["failed_at"] is None


async def test_retry_after_is_honoured(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    with WebhookReceiver(secret=SECRET, statuses=[429], headers={"Retry-After": "2"}) as hooks:
        settings = callback_settings(db_dsn, tmp_path, hooks.url + "/done")
        import_id = cancelled_import(db_dsn)
        async with sending(pool, settings, db_dsn):
            await wait_for(lambda: events(db_dsn, import_id)[0]["delivered_at"], timeout=15)
        deliveries = hooks.on("/done")
    assert [d.status for d in deliveries] == [429, 200]
    assert deliveries[1].at - deliveries[0].at >= 1.9


async def test_the_sender_gives_up_after_the_attempts(
    db_dsn: str,
    tmp_path: Path,
    pool: AsyncConnectionPool[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with WebhookReceiver(503, secret=SECRET) as hooks:
        settings = callback_settings(
            db_dsn, tmp_path, hooks.url + "/done", FULLPASS_CALLBACK_ATTEMPTS=3
        )
        import_id = cancelled_import(db_dsn)
        with caplog.at_level(logging.INFO, logger="fullpass.outbox"):
            async with sending(pool, settings, db_dsn):
                await wait_for(lambda: events(db_dsn, import_id)[0]["failed_at"], timeout=15)
                await asyncio.sleep(1.0)  # nothing more is sent
        deliveries = hooks.on("/done")
    event = events(db_dsn, import_id)[0]
    assert [d.status for d in deliveries] == [503, 503, 503]
    assert event["attempts"] == 3 and event["delivered_at"] is None
    assert event["last_error"] == "HTTP 503" and event["lease"] is None
    given_up = [r for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 1 and given_up[0].levelno == logging.ERROR
    assert getattr(given_up[0], "event_id", None) == str(event["id"])
    retried = [r for r in caplog.records if "next attempt in" in r.getMessage()]
    assert len(retried) == 2


async def test_an_unreachable_or_silent_receiver_is_retried_within_the_deadline(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    with WebhookReceiver(secret=SECRET, delay=3.0) as slow:
        settings = callback_settings(
            db_dsn,
            tmp_path,
            slow.url + "/done",
            FULLPASS_CALLBACK_TIMEOUT=0.5,
            FULLPASS_CALLBACK_ATTEMPTS=2,
        )
        import_id = cancelled_import(db_dsn)
        async with sending(pool, settings, db_dsn):
            await wait_for(lambda: events(db_dsn, import_id)[0]["failed_at"], timeout=15)
    assert events(db_dsn, import_id)[0]["last_error"] == "no complete answer within 0.5s"
    settings = callback_settings(db_dsn, tmp_path, "http://127.0.0.1:9/nobody")
    other = cancelled_import(db_dsn, USER_B)
    async with sending(pool, settings, db_dsn):
        await wait_for(lambda: events(db_dsn, other)[0]["last_error"], timeout=15)
    assert events(db_dsn, other)[0]["last_error"].startswith("unreachable: ConnectError")


async def test_several_senders_send_each_event_once(
    db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "BATCH", 2)
    users = [uuid.uuid4() for _ in range(24)]
    with WebhookReceiver(secret=SECRET, delay=0.05) as hooks:
        settings = callback_settings(db_dsn, tmp_path, hooks.url + "/done")
        pools = [_pool(db_dsn) for _ in range(3)]
        for p in pools:
            await p.open(wait=True)
        try:
            async with contextlib.AsyncExitStack() as stack:
                for p in pools:
                    await stack.enter_async_context(sending(p, settings, db_dsn))
                for user in users:
                    await asyncio.to_thread(cancelled_import, db_dsn, user)
                await wait_for(
                    lambda: (
                        all(e["delivered_at"] for e in events(db_dsn))
                        and len(events(db_dsn)) == len(users)
                    ),
                    timeout=30,
                )
                await asyncio.sleep(0.5)
        finally:
            for p in pools:
                await p.close()
        per_id = hooks.per_id("/done")
    assert len(per_id) == len(users) and set(per_id.values()) == {1}
    assert {e["attempts"] for e in events(db_dsn)} == {1}
    assert len({e["leased_by"] for e in events(db_dsn)}) == 1  # one process here


def _pool(dsn: str) -> AsyncConnectionPool[Any]:
    from worker.service import make_pool

    return make_pool(dsn, max_size=4)


# --------------------------------------------------------------------------- no URL, housekeeping


async def test_without_a_url_nothing_is_sent_and_events_do_not_pile_up(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    with WebhookReceiver(secret=SECRET) as hooks:
        settings = callback_settings(db_dsn, tmp_path, None)
        import_id = cancelled_import(db_dsn)
        async with running_worker(settings):
            await asyncio.sleep(1.5)
    assert hooks.deliveries == []
    (event,) = events(db_dsn, import_id)
    assert event["attempts"] == 0 and event["delivered_at"] is None

    # A day later it is given up, a week after that deleted; so are delivered ones.
    delivered = cancelled_import(db_dsn, USER_B)
    query(
        db_dsn,
        "update import_events set delivered_at = now() - interval '8 days' where import_id = %s",
        (delivered,),
    )
    query(db_dsn, "update import_events set created_at = now() - interval '25 hours'")
    await maintenance.run_once(pool, settings)
    (event,) = events(db_dsn, import_id)
    assert event["failed_at"] is not None
    assert event["last_error"] == "not delivered within 24 h"
    assert events(db_dsn, delivered) == []
    assert await outbox.housekeeping(pool, settings) == (0, 0)
    query(db_dsn, "update import_events set failed_at = now() - interval '7 days 1 minute'")
    assert await outbox.housekeeping(pool, settings) == (0, 1)
    assert events(db_dsn) == []


# --------------------------------------------------------------------------- the trigger


def test_one_event_per_change_whatever_path_makes_it(db_dsn: str) -> None:
    import_id = cancelled_import(db_dsn)
    # Changed again in the same transaction: nobody saw it, no event.
    with psycopg.connect(db_dsn) as conn:
        conn.execute("select public.requeue_import(%s)", (import_id,))
        conn.execute(
            "update imports set status = 'complete', completed_at = now() where id = %s",
            (import_id,),
        )
        conn.execute("select public.requeue_import(%s)", (import_id,))
    # The repair of an import that keeps losing its job fails it: an event.
    query(db_dsn, "delete from procrastinate_jobs")
    query(db_dsn, "select public.fullpass_repair_import(%s, 0)", (import_id,))
    # A complete import run again completes again: a second completion, a later generation.
    query(db_dsn, "select public.requeue_import(%s)", (import_id,))
    query(
        db_dsn,
        "update imports set status = 'complete', completed_at = now() where id = %s",
        (import_id,),
    )
    query(db_dsn, "update imports set updated_at = now() where id = %s", (import_id,))
    rows = events(db_dsn, import_id)
    assert [(r["kind"], r["generation"]) for r in rows] == [
        ("import.cancelled", 2),
        ("import.failed", 4),
        ("import.completed", 5),
    ]
    assert rows[1]["payload"]["error"].endswith("not repaired again")


def test_the_payload_of_a_skipped_pass_reflects_the_database(db_dsn: str) -> None:
    """Stages skipped, nothing published: complete, no memory ready, none building."""
    query(
        db_dsn, "insert into user_profiles (user_id, soulprint_text) values (%s, 'v1')", (USER_A,)
    )
    import_id = insert_import(db_dsn, USER_A, PATH_A)
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "update import_stages set status = 'skipped' where import_id = %s"
            " and stage not in ('download', 'chunk')",
            (import_id,),
        )
        conn.execute(
            "update imports set status = 'complete', started_at = now() - interval '2 seconds',"
            " completed_at = now(), conversation_count = 3, chunk_count = 4 where id = %s",
            (import_id,),
        )
    (event,) = events(db_dsn, import_id)
    body = event["payload"]
    assert body == {"id": str(event["id"]), **database_view(db_dsn, import_id)}
    assert (body["soulprint_ready"], body["memory_ready"], body["memory_building"]) == (
        True,
        False,
        False,
    )
    assert body["processing_time"] == pytest.approx(2.0, abs=0.01)
    assert (body["conversations"], body["chunks"], body["error"]) == (3, 4, None)


def test_the_payload_is_computed_at_commit(db_dsn: str) -> None:
    """The profile written after the status, and a new pass started, in the same transaction."""
    first = insert_import(db_dsn, USER_A, PATH_A)
    with psycopg.connect(db_dsn) as conn:
        conn.execute("select public.cancel_import(%s)", (first,))
        conn.execute(
            "update user_profiles set soulprint_text = 's', memory_md = 'm' where user_id = %s",
            (USER_A,),
        )
        conn.execute(
            "insert into imports (user_id, storage_path) values (%s, %s)", (USER_A, PATH_A)
        )
    body = events(db_dsn, first)[0]["payload"]
    assert (body["soulprint_ready"], body["memory_ready"], body["memory_building"]) == (
        True,
        True,
        True,
    )


def test_chunks_embedded_counts_the_users_embeddings_with_or_without_pgvector(
    db_dsn: str,
) -> None:
    column = query(
        db_dsn,
        "select format_type(atttypid, atttypmod) as t from pg_attribute where attrelid ="
        " 'conversation_chunks'::regclass and attname = 'embedding' and not attisdropped",
    )
    first = cancelled_import(db_dsn)
    assert events(db_dsn, first)[0]["payload"]["chunks_embedded"] == 0
    if column:  # pgvector: fill some with a vector of the column's size
        dims = int(column[0]["t"].split("(")[1].rstrip(")"))
        value = "[" + ",".join(["0.5"] * dims) + "]"
    else:  # no pgvector: the app's own column of another type counts the same
        query(db_dsn, "alter table conversation_chunks add column embedding real[]")
        value = "{0.5}"
    for user, embedded in ((USER_A, True), (USER_A, True), (USER_A, False), (USER_B, True)):
        query(
            db_dsn,
            sql.SQL(
                "insert into conversation_chunks (user_id, content, embedding) values (%s, 'x', {})"
            ).format(sql.Literal(value) if embedded else sql.SQL("null")),
            (user,),
        )
    query(db_dsn, "select public.requeue_import(%s)", (first,))
    query(db_dsn, "select public.cancel_import(%s)", (first,))
    assert events(db_dsn, first)[-1]["payload"]["chunks_embedded"] == 2


def test_an_app_table_that_cannot_be_read_never_keeps_an_import_from_ending(db_dsn: str) -> None:
    query(db_dsn, "alter table user_profiles drop column memory_md")
    query(db_dsn, "alter table conversation_chunks add column if not exists embedding real[]")
    query(db_dsn, "alter table conversation_chunks rename column user_id to owner_id")
    import_id = cancelled_import(db_dsn)
    assert import_row(db_dsn, import_id)["status"] == "cancelled"
    body = events(db_dsn, import_id)[0]["payload"]
    assert (body["soulprint_ready"], body["memory_ready"], body["chunks_embedded"]) == (
        None,
        None,
        None,
    )
    assert body["status"] == "cancelled" and body["memory_building"] is False


# --------------------------------------------------------------------------- roles, secrets


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_the_api_roles_cannot_touch_the_events(db_dsn: str, role: str) -> None:
    mine = cancelled_import(db_dsn)
    cancelled_import(db_dsn, USER_B)
    user = USER_A if role == "authenticated" else None
    with session(db_dsn, role, user) as conn:
        denied(conn, "select * from public.import_events")
        denied(conn, "select count(*) from public.import_events where import_id = %s", (mine,))
        denied(
            conn,
            "insert into public.import_events (import_id, user_id, generation, kind, payload)"
            " values (%s, %s, 1, 'import.completed', '{}')",
            (mine, USER_A),
        )
        denied(conn, "update public.import_events set delivered_at = now()")
        denied(conn, "delete from public.import_events")
        denied(conn, "truncate public.import_events")
        denied(conn, "select public.imports_final_event()")
    with session(db_dsn, "service_role") as conn:
        rows = conn.execute("select import_id from public.import_events").fetchall()
        assert len(rows) == 2
        conn.execute("update public.import_events set attempts = attempts")


def test_ending_an_import_as_service_role_writes_the_event(db_dsn: str) -> None:
    import_id = insert_import(db_dsn, USER_A, PATH_A)
    with session(db_dsn, "service_role") as conn:
        conn.execute("select public.cancel_import(%s)", (import_id,))
        conn.commit()
    assert [e["kind"] for e in events(db_dsn, import_id)] == ["import.cancelled"]


async def test_the_secret_reaches_no_log_and_no_row(
    db_dsn: str, tmp_path: Path, pool: AsyncConnectionPool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    from tests.test_security import captured_logs, database_text

    bare = SECRET.removeprefix("whsec_")
    with WebhookReceiver(secret=SECRET, statuses=[500]) as hooks:
        settings = callback_settings(
            db_dsn, tmp_path, hooks.url + "/done", FULLPASS_LOG_FORMAT="json"
        )
        assert SECRET in settings.secrets() and bare in settings.secrets()
        with captured_logs(settings, caplog) as stream:
            from worker.redact import register_secrets

            register_secrets(settings.secrets())
            import_id = cancelled_import(db_dsn)
            async with sending(pool, settings, db_dsn):
                await wait_for(lambda: events(db_dsn, import_id)[0]["delivered_at"], timeout=15)
            logging.getLogger("fullpass.outbox").warning("echo %s", SECRET)
    assert [d.status for d in hooks.on("/done")] == [500, 200]
    for text in (stream.getvalue(), caplog.text, database_text(db_dsn)):
        assert bare not in text
    assert "echo whsec_[REDACTED]" in stream.getvalue() or "echo [REDACTED]" in stream.getvalue()
