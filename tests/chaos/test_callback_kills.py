"""Chaos: workers are SIGKILLed between the commit that writes a callback event and its POST.

Two worker processes serve imports that end every way: completed, failed (the
export is missing) and cancelled. The callback receiver answers slowly
(``ANSWER_SECONDS``), so every POST stays in flight that long. Two windows
between the commit and a delivered POST are hit:

* **in flight**: as soon as the receiver holds a delivery of an event kind not
  hit yet, the worker holding that event's lease (``import_events.leased_by``,
  host:pid) is SIGKILLed and replaced. Its lease runs out
  (``FULLPASS_CALLBACK_TIMEOUT`` + 10 s) and another worker sends the event
  again, with the same ``webhook-id``;
* **no sender at all**: every worker is SIGKILLed, an import is cancelled
  (the event is committed with nobody to send it), and new workers start.

Afterwards every import ended as it should, there is one event per import,
each delivered; every delivery the receiver got is correctly signed; by
``webhook-id`` the receiver saw each event exactly once, and raw deliveries
exceed that only by one per event that was in flight in a killed worker.
"""

from __future__ import annotations

import base64
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.conftest import FleetFactory
from tests.chaos.harness import (
    Fleet,
    export_file,
    probe,
    record_figures,
    submit_export,
    wait_all_final,
)
from tests.chaos.services import SlowStorage
from tests.conftest import query
from tests.helpers import insert_import
from tests.webhooks import WebhookReceiver

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(b"chaos-callback-signing-key-0123").decode()
ANSWER_SECONDS = 2.0
TIMEOUT_SECONDS = 4.0
GOOD_IMPORTS = 3
KINDS = ("import.completed", "import.failed", "import.cancelled")


def event_rows(dsn: str) -> list[dict[str, Any]]:
    return probe(
        dsn,
        "select id::text as id, import_id, kind, attempts, lease, leased_by, delivered_at,"
        " failed_at, last_error from public.import_events order by created_at",
    )


def holder(fleet: Fleet, leased_by: str | None) -> Any:
    """The live worker process whose sender holds a lease (``host:pid``)."""
    if not leased_by:
        return None
    pid = int(leased_by.rsplit(":", 1)[1])
    return next((wp for wp in fleet.live() if wp.proc.pid == pid), None)


def test_a_sigkilled_sender_neither_loses_nor_repeats_an_event(
    audited_dsn: str, tmp_path: Path, storage: SlowStorage, fleet_factory: FleetFactory
) -> None:
    dsn = audited_dsn
    cache = tmp_path.parent / "chaos-exports"
    sources = [export_file(cache, 15, seed) for seed in range(1, GOOD_IMPORTS + 1)]
    with WebhookReceiver(secret=SECRET, delay=ANSWER_SECONDS) as receiver:
        fleet = fleet_factory(
            concurrency=2,
            FULLPASS_CALLBACK_URL=receiver.url + "/callback",
            FULLPASS_CALLBACK_SECRET=SECRET,
            FULLPASS_CALLBACK_TIMEOUT=str(TIMEOUT_SECONDS),
            FULLPASS_CALLBACK_RETRY_BASE_SECONDS="0.5",
        )
        for slot in range(2):
            fleet.start(slot)
        started = time.monotonic()

        good = [submit_export(dsn, storage.root, s)[0] for s in sources]
        missing = uuid.uuid4()
        bad = insert_import(dsn, missing, f"user-imports/{missing}/gone.zip")
        stopped = insert_import(dsn, uuid.uuid4(), f"user-imports/{uuid.uuid4()}/x.zip")
        query(dsn, "select public.cancel_import(%s)", (stopped,))

        kills: list[dict[str, Any]] = []
        #: event id -> kills of a worker that held it (claimed, not yet recorded)
        held_by_killed: dict[str, int] = {}
        #: the events whose POST was in flight when their sender was killed
        targeted: set[str] = set()

        def kill(victims: list[Any], window: str, target: str | None = None) -> None:
            names = set()
            for wp in victims:
                fleet.kill(wp)
                names.add(f"{socket.gethostname()}:{wp.proc.pid}")
            # Dead now: what they held stays as they left it.
            held = [r for r in event_rows(dsn) if r["lease"] and r["leased_by"] in names]
            for r in held:
                held_by_killed[r["id"]] = held_by_killed.get(r["id"], 0) + 1
            if target is not None:
                targeted.add(target)
            kills.append(
                {
                    "t": round(time.monotonic() - started, 2),
                    "window": window,
                    "slots": sorted(wp.slot for wp in victims),
                    "held": sorted(r["kind"] for r in held),
                }
            )

        # In flight: kill the sender of the first delivery of each kind.
        hit: set[str] = set()
        deadline = time.monotonic() + 120
        while hit != set(KINDS):
            assert time.monotonic() < deadline, (hit, event_rows(dsn), kills)
            rows = {r["id"]: r for r in event_rows(dsn)}
            with receiver.lock:
                flying = set(receiver.in_flight)
            for event_id in sorted(flying):
                row = rows.get(event_id)
                if row is None or row["kind"] in hit or not row["lease"]:
                    continue
                victim = holder(fleet, row["leased_by"])
                if victim is None:
                    continue
                kill([victim], "in flight", target=event_id)
                hit.add(row["kind"])
                fleet.start(victim.slot, wait_registered=False)
                break
            time.sleep(0.02)

        # No sender at all: the event is committed while every worker is dead.
        kill(fleet.live(), "no sender")
        orphan_user = uuid.uuid4()
        orphan = insert_import(dsn, orphan_user, f"user-imports/{orphan_user}/x.zip")
        query(dsn, "select public.cancel_import(%s)", (orphan,))
        time.sleep(1.0)
        assert receiver.per_id()[_event_of(dsn, orphan)["id"]] == 0
        for slot in range(2):
            fleet.start(slot, wait_registered=False)

        ids = [*good, bad, stopped, orphan]
        rows = wait_all_final(dsn, ids, timeout=120, fleet=fleet)
        deadline = time.monotonic() + 90
        while not all(e["delivered_at"] for e in event_rows(dsn)):
            assert time.monotonic() < deadline, event_rows(dsn)
            time.sleep(0.2)
        time.sleep(ANSWER_SECONDS + 1)  # nothing more arrives
        elapsed = time.monotonic() - started
        raw = receiver.per_id("/callback")
        deliveries = receiver.on("/callback")

    assert {i: r["status"] for i, r in rows.items()} == {
        **dict.fromkeys(good, "complete"),
        bad: "failed",
        stopped: "cancelled",
        orphan: "cancelled",
    }
    events = event_rows(dsn)
    assert sorted(e["import_id"] for e in events) == sorted(ids)  # one event per import
    assert all(e["delivered_at"] and not e["failed_at"] for e in events), events
    assert all(d.verified for d in deliveries), [d.problem for d in deliveries if not d.verified]
    # Exactly once by webhook-id; raw repeats only for what was in flight in a killed worker.
    assert set(raw) == {e["id"] for e in events}
    assert len({d.json["id"] for d in deliveries}) == len(events)
    for e in events:
        n = raw[e["id"]]
        # Sent again only after a worker holding it was killed; never without a claim.
        assert n <= 1 + held_by_killed.get(e["id"], 0), (e, raw, held_by_killed)
        assert n <= e["attempts"], e
        if e["id"] in targeted:  # it had reached the receiver: it was sent again
            assert n >= 2, (e, raw)
    assert raw[_event_of(dsn, orphan)["id"]] == 1
    record_figures(
        "callback_kills",
        {
            "workers": 2,
            "events": len(events),
            "event_kinds": sorted({e["kind"] for e in events}),
            "kills": kills,
            "deliveries_raw": sum(raw.values()),
            "deliveries_unique": len(raw),
            "repeats_after_kill_in_flight": sum(raw.values()) - len(raw),
            "events_held_by_killed_workers": len(held_by_killed),
            "receiver_answer_s": ANSWER_SECONDS,
            "callback_timeout_s": TIMEOUT_SECONDS,
            "duration_s": round(elapsed, 1),
        },
    )


def _event_of(dsn: str, import_id: uuid.UUID) -> dict[str, Any]:
    rows = query(
        dsn, "select id::text as id from public.import_events where import_id = %s", (import_id,)
    )
    assert len(rows) == 1, rows
    return rows[0]
