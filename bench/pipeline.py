"""Benchmark: a full import against the fake Messages API with fixed latency.

    .venv/bin/python bench/pipeline.py [--conversations 2000] [--latency 0.2] [--concurrency 10]
                                       [--worker-concurrency 4] [--reimport PCT]
                                       [--options '{"paste_chars": 0}'] [--sweep] [--keep]

Reports, for the extract (map) stage:
- wall time against the ideal ``calls * latency / concurrency`` (target ≥ 0.9 of ideal);
- LLM calls and input tokens per MB of export against the naive design (every
  chunk sent whole, one call per 2,000-token chunk, no caching): target ≤ 25 %;
- recall of the planted facts (the ground truth of :mod:`tests.gen_export`) in
  the extracted facts (target ≥ 0.98) and decoys found (target 0);
- estimated cost per 90 MB export: the import's ``cost_usd``, which the
  pipeline books at each stage's model's list price (the settings' one table;
  Haiku 4.5 by default: $1 / $5 per million input / output tokens, cache
  reads at 0.1x, writes at 1.25x), and with the map step in batch mode (its
  model's batch discount);
- where the tokens go (``spend``): the map step's prompt by part (the user's
  turns, assistant excerpts, saved memories, labels and headers, the cached
  fixed prompt), what the paste cut took out, the output, the other stages.

``--sweep`` runs it once per ``paste_chars`` value of :data:`SWEEP` and adds
the curve (tokens and cost against recall) to the results.

With ``--reimport PCT`` the same user then imports the same history grown by
PCT % new conversations (the generator's first conversations are the same for
a seed), as people re-export: its cost against the first import's, the chunks
reused, and whether its reduced facts and MEMORY are those of an import of the
grown history by a user with nothing to reuse (run too, for the comparison).

The worker (``fullpass worker``) and the fake server each run in a process of
their own; the fake answers every call after the given latency, its own work
included. The scratch directory, database and embedded server are removed
afterwards unless ``--keep``.

Tokens are counted the way the fake server counts them (4 characters a token)
for both designs, so the comparison is like for like. Results go to
``bench/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from jobs.domain.transcript import condense_transcript, novel_part, turn_spans  # noqa: E402
from tests.fakes.rewording import iso_dates  # noqa: E402
from tests.gen_export import Options, write_export, write_truth  # noqa: E402
from worker import embedded, migrate  # noqa: E402
from worker.llm.anthropic_provider import AnthropicProvider  # noqa: E402
from worker.llm.base import ExtractionInput  # noqa: E402
from worker.options import Options as PasteOptions  # noqa: E402
from worker.settings import ModelPrice, Settings  # noqa: E402

RESULTS = REPO / "bench" / "results" / "pipeline.json"
#: The fake Messages API runs in its own process, as the real one would: in this
#: process its threads would compete with the worker for the GIL.
FAKE_SERVER = """
import json, sys
sys.path.insert(0, sys.argv[2])
from tests.fakes.fake_anthropic import FakeAnthropicServer
with FakeAnthropicServer(latency=float(sys.argv[1])) as fake:
    print(json.dumps(fake.settings_env()), flush=True)
    # One line in: the figures so far, one line out.
    for _ in sys.stdin:
        served = [r for r in fake.requests if r.kind == "extract"]
        times = [r.finished - r.started for r in served if r.finished is not None]
        print(json.dumps({
            "calls": len(served),
            "cache_read": sum(r.cache_read_tokens for r in served),
            "cache_write": sum(r.cache_creation_tokens for r in served),
            "max_in_flight": fake.max_in_flight,
            "mean_call_s": sum(times) / max(len(times), 1),
        }), flush=True)
"""


_WORD = re.compile(r"[^\W_]{3,}")
_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
STOP_WORDS = "really strongly the and for with that this not was are our its"
_STOP = frozenset(STOP_WORDS.split(" "))


def stems(text: str) -> frozenset[str]:
    """Content words cut to 5 letters: "I really prefer X" and "Prefers X" share them.

    Dates count in either form: "March 20, 2026" and "2026-03-20" both give the
    word ``20260320`` (numbers are not cut).
    """
    folded = _ISO.sub(r"\1\2\3", iso_dates(text)).casefold()
    return frozenset(w if w.isdigit() else w[:5] for w in _WORD.findall(folded) if w not in _STOP)


MONTH_NAMES = (
    "january february march april may june july august september october november december"
)
_MONTHS = frozenset(m[:5] for m in MONTH_NAMES.split(" "))


def covers(fact: frozenset[str], planted: frozenset[str]) -> bool:
    """Most of the planted fact's words, and every one of its numbers and months."""
    exact = {w for w in planted if any(c.isdigit() for c in w) or w in _MONTHS}
    return bool(planted) and len(planted & fact) / len(planted) >= 0.75 and exact <= fact


def rows(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def fresh_database(server_dsn: str) -> str:
    name = f"fullpass_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(server_dsn)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def drop_database(server_dsn: str, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def naive_tokens(provider: AnthropicProvider, chunks: list[dict[str, Any]]) -> int:
    """Input tokens if every chunk were sent whole, one call each, without caching."""
    total = 0
    for c in chunks:
        params = provider._extract_params(
            ExtractionInput(c["id"], c["conversation_id"], c["title"], c["content"], None)
        )
        system = "".join(b["text"] for b in params["system"])
        text = (
            json.dumps(params["tools"], sort_keys=True) + system + params["messages"][0]["content"]
        )
        total += -(-len(text) // 4)
    return total


#: Every fact that reaches reduce, by conversation: the map step's, and those
#: the chunks' saved memories and custom instructions were filed as.
FOUND_FACTS = (
    "select c.conversation_id, f.facts from chunk_facts f"
    " join conversation_chunks c on c.id = f.chunk_id where f.import_id = %(import_id)s"
    " union all"
    " select c.conversation_id, s.facts from chunk_saved_facts s"
    " join conversation_chunks c on c.id = s.chunk_id where s.import_id = %(import_id)s"
)


def recall(dsn: str, facts_file: Path, import_id: Any) -> dict[str, Any]:
    planted = json.loads(facts_file.read_text())
    return score(planted, rows(dsn, FOUND_FACTS, {"import_id": import_id}))


def score(planted: dict[str, Any], extracted: list[dict[str, Any]]) -> dict[str, Any]:
    """Planted facts found, and decoys found, among ``extracted`` (rows of FOUND_FACTS)."""
    by_conv: dict[str, list[frozenset[str]]] = {}
    for r in extracted:
        strings = by_conv.setdefault(r["conversation_id"], [])
        for items in r["facts"].values():
            for item in items:
                strings.append(stems(item if isinstance(item, str) else " ".join(item.values())))
    found = sum(
        1
        for f in planted["facts"]
        if any(covers(s, stems(f["text"])) for s in by_conv.get(f["conversation_id"], []))
    )
    real = {(f["conversation_id"], stems(f["text"])) for f in planted["facts"]}
    decoys = [
        d
        for d in planted["decoys"]
        if (d["conversation_id"], stems(d["text"])) not in real
        and any(covers(s, stems(d["text"])) for s in by_conv.get(d["conversation_id"], []))
    ]
    n = len(planted["facts"])
    return {
        "planted": n,
        "found": found,
        "recall": round(found / n, 4) if n else 1.0,
        "decoys_found": len(decoys),
    }


def spend(
    dsn: str,
    import_id: Any,
    options: dict[str, Any],
    served: dict[str, Any],
    extract: dict[str, Any],
    per_mb: float,
    settings: Settings,
) -> dict[str, Any]:
    """Where the tokens go: the map step's prompt by part, its output, the other stages.

    The map step's transcripts are condensed again here as the stage did (same
    order, same options), and split by speaker; what the paste cut took out
    is the difference with the same transcripts condensed without it.
    Token counts are for this export; ``usd_per_90mb`` at each stage's model's
    list prices (the settings' table), online.
    """
    paste_chars = options.get("paste_chars", PasteOptions().paste_chars)
    chunks = rows(
        dsn,
        "select conversation_id, chunk_index, content from conversation_chunks"
        " where import_id = %s order by created_at nulls last, conversation_id, chunk_index",
        (import_id,),
    )
    parts: dict[str, int] = dict.fromkeys(("user", "assistant", "saved", "labels"), 0)
    whole = cut = 0
    seen: set[str] = set()
    previous: dict[str, Any] | None = None
    for c in chunks:
        text = c["content"]
        if (
            previous is not None
            and previous["conversation_id"] == c["conversation_id"]
            and previous["chunk_index"] + 1 == c["chunk_index"]
        ):
            text = novel_part(previous["content"], text)
        previous = c
        transcript = condense_transcript(text, paste_chars=paste_chars, seen=seen)
        whole += len(condense_transcript(text))
        cut += len(transcript)
        for speaker, start, end in turn_spans(transcript):
            key = speaker if speaker in ("user", "assistant") else "saved"
            parts[key] += end - start
        parts["labels"] += len(transcript) - sum(
            end - start for _, start, end in turn_spans(transcript)
        )
    cached = served["cache_read"] + served["cache_write"]
    prompt = extract["input_tokens"] + cached
    tokens = {
        "user_turns": parts["user"] // 4,
        "assistant_excerpts": parts["assistant"] // 4,
        "saved_memories_and_instructions": parts["saved"] // 4,
        "labels_headers_and_wrappers": prompt
        - cached
        - sum(parts.values()) // 4
        + parts["labels"] // 4,
        "fixed_prompt_cached": cached,
        "output": extract["output_tokens"],
    }
    stages = rows(
        dsn,
        "select stage, model, input_tokens, output_tokens from import_stages"
        " where import_id = %s and stage not in ('extract')"
        " and (input_tokens > 0 or output_tokens > 0)",
        (import_id,),
    )
    price = _price(settings, extract["model"])
    usd = {
        "user_turns": tokens["user_turns"] * price.input,
        "assistant_excerpts": tokens["assistant_excerpts"] * price.input,
        "saved_memories_and_instructions": tokens["saved_memories_and_instructions"] * price.input,
        "labels_headers_and_wrappers": tokens["labels_headers_and_wrappers"] * price.input,
        "fixed_prompt_cached": served["cache_read"] * (price.cache_read or price.input * 0.1)
        + served["cache_write"] * (price.cache_write or price.input * 1.25),
        "output": tokens["output"] * price.output,
    }
    for r in stages:
        at = _price(settings, r["model"] or extract["model"])
        usd[r["stage"]] = r["input_tokens"] * at.input + r["output_tokens"] * at.output
    return {
        "paste_chars": paste_chars,
        "extract_prompt_tokens": tokens,
        "pastes_cut_tokens": (whole - cut) // 4,
        "other_stages": {
            r["stage"]: {"input": r["input_tokens"], "output": r["output_tokens"]} for r in stages
        },
        "usd_per_90mb_online": {k: round(v / 1e6 * per_mb, 3) for k, v in usd.items()},
    }


def _price(settings: Settings, model: str) -> ModelPrice:
    price = settings.price_of(model)
    if price is None:
        raise SystemExit(f"no list price for {model}: give it with FULLPASS_MODEL_PRICES")
    return price


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; the scratch directory, database and server go unless ``--keep``."""
    work = Path(tempfile.mkdtemp(prefix="fullpass-bench-"))
    server_dsn = os.environ.get("DATABASE_URL")
    embedded_home = None if server_dsn else work / "home"
    dsn = None
    try:
        if embedded_home is not None:
            server_dsn = embedded.ensure_server(embedded_home)
        assert server_dsn is not None
        dsn = fresh_database(server_dsn)
        return await _measure(args, work, dsn)
    finally:
        if args.keep:
            print(f"kept: database {dsn}, scratch {work}", file=sys.stderr)
        else:
            if dsn is not None and server_dsn is not None:
                drop_database(server_dsn, dsn)
            if embedded_home is not None:
                embedded.stop_server(embedded_home)
            shutil.rmtree(work, ignore_errors=True)


def _place(work: Path, user: uuid.UUID, export: Path) -> str:
    storage_path = f"user-imports/{user}/{export.name}"
    target = work / "storage" / storage_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(export.read_bytes())
    return storage_path


async def _import(
    dsn: str,
    user: uuid.UUID,
    storage_path: str,
    worker: subprocess.Popen[bytes],
    options: dict[str, Any],
) -> tuple[Any, float]:
    """Insert an import with ``options`` and wait until it ends; its id and wall time."""
    import_id = rows(
        dsn,
        "insert into imports (user_id, storage_path, options) values (%s, %s, %s) returning id",
        (user, storage_path, json.dumps(options)),
    )[0]["id"]
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        while True:
            row = conn.execute(
                "select status, error from imports where id = %s", (import_id,)
            ).fetchone()
            assert row is not None
            if row["status"] in ("complete", "failed"):
                break
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited with status {worker.returncode}")
            await asyncio.sleep(0.2)
    if row["status"] != "complete":
        raise SystemExit(f"import failed: {row['error']}")
    return import_id, time.monotonic() - started


def _costs(dsn: str, import_id: Any) -> dict[str, Any]:
    """What the import cost, as the pipeline booked it (each stage at its model's prices)."""
    progress = rows(
        dsn,
        "select cost_usd, reused_chunks, extract_model from import_progress where import_id = %s",
        (import_id,),
    )[0]
    stages = rows(
        dsn,
        "select stage, model, cost_usd, output from import_stages where import_id = %s"
        " order by position",
        (import_id,),
    )
    return {
        "cost_usd": _float(progress["cost_usd"]),
        "reused_chunks": progress["reused_chunks"],
        "stages": {
            r["stage"]: {"model": r["model"], "cost_usd": _float(r["cost_usd"])}
            for r in stages
            if r["model"] is not None
        },
        "extract_calls": next(r["output"].get("calls") for r in stages if r["stage"] == "extract"),
    }


def _float(value: Any) -> float | None:
    return None if value is None else round(float(value), 6)


#: What a reduced fact holds beside what it says: the chunks it cites (their ids
#: differ between imports), the date of the latest conversation found stating
#: it and what it replaced (both follow which chunk a call's fact was cited to).
_PROVENANCE = ("sources", "as_of", "previously")


def _fact_set(dsn: str, import_id: Any) -> dict[str, Any]:
    """The reduced facts, each with its date."""
    output = rows(
        dsn,
        "select output from import_stages where import_id = %s and stage = 'reduce'",
        (import_id,),
    )[0]["output"]
    return {
        json.dumps(
            [category, {k: v for k, v in fact.items() if k not in _PROVENANCE}], sort_keys=True
        ): fact.get("as_of")
        for category, facts in output["facts"].items()
        for fact in facts
    }


def _compare(dsn: str, reused: Any, fresh: Any) -> dict[str, Any]:
    """The reduced facts of an import that reused against those of one that did not."""
    a, b = _fact_set(dsn, reused), _fact_set(dsn, fresh)
    return {
        "facts": len(a),
        "facts_without_reuse": len(b),
        "same_facts": set(a) == set(b),
        "only_with_reuse": len(set(a) - set(b)),
        "only_without_reuse": len(set(b) - set(a)),
        "dated_differently": sum(1 for k in set(a) & set(b) if a[k] != b[k]),
        "same_memory": _memory(dsn, reused) == _memory(dsn, fresh),
    }


def _memory(dsn: str, import_id: Any) -> str:
    return str(
        rows(
            dsn,
            "select output ->> 'memory_md' as md from import_stages"
            " where import_id = %s and stage = 'memory'",
            (import_id,),
        )[0]["md"]
    )


async def _measure(args: argparse.Namespace, work: Path, dsn: str) -> dict[str, Any]:
    export, facts = work / "export.zip", work / "facts.json"
    # Set-up, before anything is timed.
    options = Options(conversations=args.conversations, seed=args.seed)
    write_truth(facts, write_export(export, options, zipped=True))
    grown = work / "grown" / "export.zip"
    grown_conversations = round(args.conversations * (1 + args.reimport / 100))
    if args.reimport:
        grown.parent.mkdir()
        write_export(grown, Options(conversations=grown_conversations, seed=args.seed), zipped=True)
    migrate.upgrade(dsn)
    user, control = uuid.uuid4(), uuid.uuid4()
    storage_path = _place(work, user, export)

    fake = subprocess.Popen(  # noqa: ASYNC220 (started before anything is timed)
        [sys.executable, "-c", FAKE_SERVER, str(args.latency), str(REPO)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdin is not None and fake.stdout is not None
    fake_env = json.loads(fake.stdout.readline())

    def served_so_far() -> dict[str, Any]:
        assert fake.stdin is not None and fake.stdout is not None
        fake.stdin.write("\n")
        fake.stdin.flush()
        return dict(json.loads(fake.stdout.readline()))

    reimport: dict[str, Any] | None = None
    try:
        env: dict[str, Any] = {
            "DATABASE_URL": dsn,
            "FULLPASS_HOME": str(work / "home"),
            "FULLPASS_STORAGE_DIR": str(work / "storage"),
            "FULLPASS_CONCURRENCY": args.concurrency,
            "FULLPASS_GLOBAL_CONCURRENCY": max(args.concurrency, 20),
            "FULLPASS_LOG_LEVEL": "WARNING",
            **fake_env,
        }
        settings = Settings(**env)
        # The worker runs in a process of its own, as in production.
        worker = subprocess.Popen(  # noqa: ASYNC220 (started before anything is timed)
            [
                sys.executable,
                "-m",
                "worker.cli",
                "worker",
                "--concurrency",
                str(args.worker_concurrency),
            ],
            cwd=REPO,
            env={**os.environ, **{k: str(v) for k, v in env.items()}},
        )
        try:
            while not rows(dsn, "select 1 from procrastinate_workers"):
                if worker.poll() is not None:
                    raise SystemExit(f"the worker exited with status {worker.returncode}")
                await asyncio.sleep(0.1)
            import_id, total_wall = await _import(dsn, user, storage_path, worker, args.options)
            served = served_so_far()
            # Read before a re-import replaces the user's chunks.
            chunks = rows(
                dsn,
                "select id::text as id, conversation_id, coalesce(title, '') as title, content"
                " from conversation_chunks where import_id = %s",
                (import_id,),
            )
            found = recall(dsn, facts, import_id)
            if args.reimport:
                second, second_wall = await _import(
                    dsn, user, _place(work, user, grown), worker, args.options
                )
                fresh, _ = await _import(
                    dsn, control, _place(work, control, grown), worker, args.options
                )
                first_costs, second_costs = _costs(dsn, import_id), _costs(dsn, second)
                fresh_costs = _costs(dsn, fresh)
                reimport = {
                    "conversations": grown_conversations,
                    "new_conversations_pct": args.reimport,
                    "wall_s": round(second_wall, 2),
                    "first": first_costs,
                    "second": second_costs,
                    "without_reuse": fresh_costs,
                    "cost_vs_first": round(second_costs["cost_usd"] / first_costs["cost_usd"], 4)
                    if second_costs["cost_usd"] and first_costs["cost_usd"]
                    else None,
                    "against_without_reuse": _compare(dsn, second, fresh),
                }
        finally:
            worker.terminate()
            worker.wait(timeout=60)
        provider = AnthropicProvider(settings)
        naive = naive_tokens(provider, chunks)
        await provider.aclose()
        extract_calls = served["calls"]
    finally:
        if fake.stdin is not None:
            fake.stdin.close()
        fake.wait(timeout=30)

    stage = rows(
        dsn,
        "select started_at, finished_at, input_tokens, output_tokens, cost_usd, model"
        " from import_stages where import_id = %s and stage = 'extract'",
        (import_id,),
    )[0]
    cost = rows(dsn, "select cost_usd from import_progress where import_id = %s", (import_id,))[0]
    extract_s = (stage["finished_at"] - stage["started_at"]).total_seconds()
    ideal_s = extract_calls * args.latency / args.concurrency
    cache_read, cache_write = served["cache_read"], served["cache_write"]
    prompt_tokens = stage["input_tokens"] + cache_read + cache_write
    mb = export.stat().st_size / 1e6
    with zipfile.ZipFile(export) as z:
        json_mb = z.getinfo("conversations.json").file_size / 1e6
    price = settings.price_of(stage["model"])
    # Cache reads at the model's read price, as a share of the input price.
    read_factor = (price.cache_read or price.input * 0.1) / price.input if price else 0.1
    billed_in = stage["input_tokens"] + cache_write * 1.25 + cache_read * read_factor
    per_mb = 90 / json_mb
    cost_online = cost_batch = None
    if cost["cost_usd"] is not None and stage["cost_usd"] is not None and price is not None:
        cost_online = float(cost["cost_usd"]) * per_mb
        cost_batch = cost_online - float(stage["cost_usd"]) * per_mb * (1 - price.batch)
    result: dict[str, Any] = {
        "date": date.today().isoformat(),
        "conversations": args.conversations,
        "export_zip_mb": round(mb, 2),
        "export_json_mb": round(json_mb, 2),
        "chunks": len(chunks),
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "worker_concurrency": args.worker_concurrency,
        "total_wall_s": round(total_wall, 2),
        "extract": {
            "model": stage["model"],
            "calls": extract_calls,
            "wall_s": round(extract_s, 2),
            "ideal_s": round(ideal_s, 2),
            "efficiency": round(ideal_s / extract_s, 3) if extract_s else None,
            # Against the time calls really took at the server (latency plus the
            # fake's own processing, on the same two cores as the worker).
            "efficiency_vs_served_time": round(
                extract_calls * served["mean_call_s"] / args.concurrency / extract_s, 3
            )
            if extract_s
            else None,
            "max_in_flight": served["max_in_flight"],
            "mean_server_call_s": round(served["mean_call_s"], 3),
            "calls_per_json_mb": round(extract_calls / json_mb, 1),
            "naive_calls_per_json_mb": round(len(chunks) / json_mb, 1),
            "prompt_tokens": prompt_tokens,
            "uncached_input_tokens": stage["input_tokens"],
            "cache_read_tokens": cache_read,
            "naive_input_tokens": naive,
            "prompt_share_of_naive": round(prompt_tokens / naive, 3),
            "billed_input_share_of_naive": round(billed_in / naive, 3),
            "input_tokens_per_json_mb": round(prompt_tokens / json_mb),
            "naive_input_tokens_per_json_mb": round(naive / json_mb),
            "output_tokens": stage["output_tokens"],
            "cost_usd": _float(stage["cost_usd"]),
        },
        "facts": found,
        "cost_usd": _float(cost["cost_usd"]),
        "cost_per_90mb_usd": {
            "online": round(cost_online, 2) if cost_online is not None else None,
            "batch": round(cost_batch, 2) if cost_batch is not None else None,
        },
        "spend": spend(dsn, import_id, args.options, served, stage, per_mb, settings),
    }
    if reimport is not None:
        result["reimport"] = reimport
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--conversations", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument(
        "--worker-concurrency",
        type=int,
        default=Settings.model_fields["worker_concurrency"].default,
        help="stage jobs the worker runs at once (FULLPASS_WORKER_CONCURRENCY's default)",
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--reimport",
        type=float,
        default=0,
        metavar="PCT",
        help="then import the same history with PCT %% new conversations, as the same user",
    )
    p.add_argument("--keep", action="store_true", help="keep the database and scratch files")
    p.add_argument(
        "--options",
        type=json.loads,
        default={},
        help='the import\'s options (JSON: {"paste_chars": 0})',
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="run once per paste_chars value of SWEEP and add the curve to the results",
    )
    args = p.parse_args()
    result = measure(args)
    if args.sweep:
        default = result["spend"]["paste_chars"]
        curve = []
        for value in SWEEP:
            point = (
                result
                if value == default
                else measure(
                    argparse.Namespace(
                        **{**vars(args), "options": {**args.options, "paste_chars": value}}
                    )
                )
            )
            curve.append(
                {
                    "paste_chars": value,
                    "prompt_tokens": point["extract"]["prompt_tokens"],
                    "pastes_cut_tokens": point["spend"]["pastes_cut_tokens"],
                    "recall": point["facts"]["recall"],
                    "decoys_found": point["facts"]["decoys_found"],
                    **point["cost_per_90mb_usd"],
                }
            )
            print(json.dumps(curve[-1]), file=sys.stderr)
        result["sweep"] = curve
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


#: The paste_chars values ``--sweep`` runs (0: pastes sent whole).
SWEEP = (0, 8000, 4000, 2000, 1000, 500)


def measure(args: argparse.Namespace, attempts: int = 3) -> dict[str, Any]:
    """One run; a run whose import failed is tried again (the error is printed)."""
    for attempt in range(1, attempts + 1):
        try:
            return asyncio.run(run(args))
        except SystemExit as exc:
            if attempt == attempts:
                raise
            print(f"run {attempt} failed ({exc}); again", file=sys.stderr)
    raise AssertionError("unreachable")


if __name__ == "__main__":
    main()
