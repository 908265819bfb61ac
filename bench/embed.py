"""Benchmark: the embed stage's throughput, and retrieval of planted facts by paraphrase.

    .venv/bin/python bench/embed.py [--conversations 1500] [--seed 7] [--latency 0.2]
                                    [--concurrency 4] [--runs 3]
                                    [--providers local,openai,bedrock]
                                    [--quality-seeds 7,11,13,17,19] [--keep]

1. Throughput. A ChatGPT export is generated (``tests.gen_export``, cached under
   ``bench/.cache/``). For each provider and run, a fresh database migrated at
   the provider's vector size gets an import (``fanout`` 1: one worker does the
   whole work list), and in a child process of its own the real ``download`` and
   ``chunk`` stages run (not timed), then the real ``embed`` stage through
   :func:`worker.runner.run_stage`: chunk texts read from PostgreSQL, embedded a
   batch at a time with the configured concurrency, each batch's vectors stored
   as it returns. Reported: chunks/s of the stage (median of the runs), and for
   ``local`` also the model alone on the same texts (no database). The fake
   ``openai`` (text-embedding-3-small, 1,536 dimensions, 256 texts a call) and
   ``bedrock`` (Cohere embed-english-v3, 1,024 dimensions, 96 texts a call)
   services run in a process of their own and answer each call after
   ``--latency`` seconds; the stage's time is set against the ideal
   ``ceil(calls / concurrency) * latency`` (ratio = ideal / measured; a batch over
   the service's token limit for one request goes as several calls, so OpenAI's
   256 chunks of ~1,500 tokens take three). The CPU time of the worker process
   over the stage, and of the fake over the run, are kept beside the wall time.
2. Retrieval (``local``; the first run, then one run on the export of each other
   ``--quality-seeds`` seed). The import is driven to the end (offline
   extraction) so its chunks are published, then for every distinct planted
   fact (the generator's ground truth) a query naming its subject in other words
   (:data:`PARAPHRASES`: not the fact's own sentence) is searched with
   ``public.search_chunks`` four ways: full text only (no query embedding),
   vector only (no query text), vector only without the HNSW index (an exact
   scan: what the index's approximation costs) and hybrid (both, as the app
   calls it). A query is answered when a chunk holding the fact's sentence is
   among the top 10: recall@10 per seed and over all seeds' queries (target
   >= 0.9 for hybrid).
   A fact is planted in many conversations (the generator draws from a few
   dozen), so any of the chunks holding its sentence answers its query.

The database is ``DATABASE_URL`` when set (fresh databases are created on that
server), else an embedded PostgreSQL in a temp dir. The machine may be shared:
every figure is the median of ``--runs`` runs, with the spread kept in the
results. Results go to ``bench/results/embed.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CACHE: Final = REPO / "bench" / ".cache"
RESULTS: Final = REPO / "bench" / "results" / "embed.json"
USER_ID: Final = uuid.UUID("bbbbbbbb-0000-4000-8000-0000000000e6")
TOP_K: Final = 10
TARGET_RECALL: Final = 0.9

#: The provider runs: settings (besides the fake's address), vector size, texts a call.
PROVIDERS: Final[dict[str, dict[str, Any]]] = {
    "local": {"env": {"FULLPASS_EMBEDDINGS": "local"}, "dimension": 256, "batch": 256},
    "openai": {
        "env": {"FULLPASS_EMBEDDINGS_MODEL": "text-embedding-3-small"},
        "dimension": 1536,
        "batch": 256,
    },
    "bedrock": {
        "env": {"FULLPASS_EMBEDDINGS_MODEL": "cohere.embed-english-v3"},
        "dimension": 1024,
        "batch": 96,
    },
}

#: The fake service in a process of its own: it prints the settings that point
#: at it, serves until stdin closes, then prints what it saw.
FAKE_SERVER: Final = """
import hashlib, json, math, random, sys, time
sys.path.insert(0, sys.argv[3])
if sys.argv[1] == "openai":
    import tests.fakes.fake_openai_embeddings as service
    Fake = service.FakeOpenAIEmbeddingsServer
else:
    import tests.fakes.fake_bedrock as service
    Fake = service.FakeBedrockServer

# The fake's lexical vectors cost it ~5 ms a 6,000-character text, more than the
# latency allows for a batch on a shared machine: the benchmark measures the
# worker, so the fake answers with one of 256 ready unit vectors (full-precision
# floats, as the services send) picked by the text's hash.
table = {}
def ready_vector(text, dimension):
    if dimension not in table:
        rng = random.Random(dimension)
        rows = []
        for _ in range(256):
            row = [rng.gauss(0.0, 1.0) for _ in range(dimension)]
            norm = math.sqrt(sum(x * x for x in row))
            rows.append([x / norm for x in row])
        table[dimension] = rows
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=1).digest()
    return table[dimension][digest[0]]
service.lexical_vector = ready_vector

with Fake(latency=float(sys.argv[2])) as fake:
    print(json.dumps(fake.settings_env()), flush=True)
    cpu = time.process_time()
    sys.stdin.read()
    cpu = time.process_time() - cpu
    served = [r for r in fake.requests if r.ok]
    times = [r.finished - r.started for r in served if r.finished is not None]
    print(json.dumps({
        "calls": len(served),
        "texts": sum(r.count for r in served),
        "max_in_flight": fake.max_in_flight,
        "mean_call_s": sum(times) / max(len(times), 1),
        "cpu_s": cpu,
    }), flush=True)
"""

# --------------------------------------------------------------------------- paraphrases

#: A query per planted fact, naming its subject in other words: keyed by the
#: detail the generator fills into the fact's template (``tests.gen_export``).
#: Proper names (a project, Stripe, Rust, Emacs) are kept: nobody searches for
#: them by another name. ``{project}`` queries are filled per project.
PARAPHRASES: Final[dict[str, str]] = {
    # preferences: "I really prefer X."
    "a light theme with high contrast": "what colour scheme do I like on screen, a pale "
    "background with strong contrast",
    "spaces over tabs": "how do I indent code, space bar or tab key",
    "long-form explanations with examples": "do I want lengthy detailed answers illustrated "
    "by samples",
    "walking meetings over video calls": "do I like to talk things over on a stroll outside "
    "rather than on Zoom",
    "plain CSS over utility frameworks": "how do I style web pages, hand-written stylesheets "
    "instead of Tailwind",
    "Emacs keybindings": "which keyboard shortcuts am I used to, the Emacs ones",
    "writing tests before the code": "do I practise test-driven development, specs first and "
    "the implementation after",
    "evening deep-work sessions": "when do I do focused work, late at night",
    # projects: "I'm building P, a side project written with S."
    "project": "what technology stack is my hobby app {project} made with",
    # dates: "My E is on <date>."
    "son's graduation": "when does my boy get his diploma",
    "mother's seventieth birthday": "when is mum turning 70",
    "final thesis defence": "date of my PhD viva, the dissertation exam",
    "house move": "when are we relocating to the new home",
    "citizenship interview": "when is my naturalisation appointment",
    "sister's wedding": "when does my sibling get married",
    # beliefs: "I strongly believe X."
    "open formats outlive every vendor": "my view that open file standards last longer than "
    "the companies selling software",
    "documentation is part of the product": "my opinion that the docs belong to what we ship",
    "small teams ship better software": "my view that tiny groups of engineers deliver "
    "higher quality programs",
    "every meeting needs a written agenda": "my conviction that each call should have a list "
    "of topics on paper",
    "accessibility is a baseline, not a feature": "my stance on a11y being a minimum "
    "requirement rather than an extra",
    # decisions: "We decided to X because Y."
    "rewrite the importer in Rust": "why did we port the data import tool to Rust",
    "pause the newsletter": "why did we stop sending the email digest for a while",
    "rent a studio downtown": "why did we take an office in the city centre",
    "move billing to Stripe": "why did we switch payment processing over to Stripe",
    "hire a second designer": "why did we recruit one more UI person",
}

_TEMPLATES: Final = (
    re.compile(r"^I really prefer (?P<key>.+)\.$"),
    re.compile(r"^I'm building (?P<project>.+), a side project written with .+\.$"),
    re.compile(r"^My (?P<key>.+) is on \w+ \d\d, \d{4}\.$"),
    re.compile(r"^I strongly believe (?P<key>.+)\.$"),
    re.compile(r"^We decided to (?P<key>.+) because .+\.$"),
)


def paraphrase(fact: str) -> str:
    """The benchmark's query for a planted fact sentence (``KeyError`` if it has none)."""
    for template in _TEMPLATES:
        m = template.match(fact)
        if m is None:
            continue
        if "project" in m.groupdict():
            return PARAPHRASES["project"].format(project=m["project"])
        return PARAPHRASES[m["key"]]
    raise KeyError(fact)


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


# --------------------------------------------------------------------------- export


def export_files(conversations: int, seed: int) -> tuple[Path, Path]:
    """The benchmark export and its ground truth (generated once, then cached)."""
    from tests.gen_export import Options, write_export, write_truth

    CACHE.mkdir(parents=True, exist_ok=True)
    stem = f"embed-chatgpt-{conversations}c-seed{seed}"
    export, truth = CACHE / f"{stem}.zip", CACHE / f"{stem}.facts.json"
    if not (export.is_file() and truth.is_file()):
        print(f"generating a {conversations}-conversation export (seed {seed}) ...", flush=True)
        partial = export.with_name(export.name + ".partial")
        facts = write_export(partial, Options(conversations=conversations, seed=seed), zipped=True)
        write_truth(truth, facts)
        partial.replace(export)
    return export, truth


# --------------------------------------------------------------------------- database


def fresh_database(server_dsn: str, dimension: int) -> str:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from worker import migrate

    name = f"fullpass_bench_embed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    params = conninfo_to_dict(server_dsn)
    params["dbname"] = name
    dsn = make_conninfo(**params)  # type: ignore[arg-type]
    migrate.upgrade(dsn, embedding_dimension=dimension)
    return dsn


def drop_database(server_dsn: str, dsn: str) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def server_version(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("show server_version").fetchone()
    return str(row[0]) if row else "?"


# --------------------------------------------------------------------------- child


async def _claim(conn: Any, import_id: uuid.UUID, stage: str | None) -> tuple[int, str, int] | None:
    """Claim the import's next queued job (of ``stage`` when given), as a worker would."""
    row = await (
        await conn.execute(
            "update procrastinate_jobs set status = 'doing' where id = ("
            " select id from procrastinate_jobs where args ->> 'import_id' = %(id)s"
            " and status = 'todo' and (%(task)s::text is null or task_name = %(task)s)"
            " order by priority desc, id limit 1) returning id, task_name, args",
            {"id": str(import_id), "task": f"fullpass.{stage}" if stage else None},
        )
    ).fetchone()
    if row is None:
        return None
    return (
        int(row["id"]),
        str(row["task_name"]).removeprefix("fullpass."),
        row["args"]["generation"],
    )


async def _run_job(deps: Any, pool: Any, import_id: uuid.UUID, stage: str | None) -> str | None:
    """Run one queued job (of ``stage``); the stage run, or None when none is queued."""
    from worker import runner

    async with pool.connection() as conn:
        job = await _claim(conn, import_id, stage)
    if job is None:
        return None
    job_id, name, generation = job
    await runner.run_stage(deps, name, import_id, generation, job_id=job_id)
    async with pool.connection() as conn:
        await conn.execute(
            "update procrastinate_jobs set status = 'succeeded' where id = %s", (job_id,)
        )
    return name


async def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Chunk the export, time the embed stage; with ``quality``, publish and search too."""
    from worker import runner
    from worker.embeddings import make_embedder
    from worker.llm.offline import OfflineProvider
    from worker.service import make_pool
    from worker.settings import Settings
    from worker.store import Store

    home = Path(spec["home"])
    # boto3 reads its credentials and region from the environment, not the settings.
    os.environ.update({k: v for k, v in spec["env"].items() if k.startswith("AWS_")})
    env: dict[str, Any] = {
        "DATABASE_URL": spec["db"],
        "FULLPASS_HOME": str(home / "home"),
        "FULLPASS_STORAGE_DIR": str(home / "storage"),
        "FULLPASS_LLM": "offline",
        "FULLPASS_MAX_ATTEMPTS": 1,
        "FULLPASS_MIN_CONVERSATIONS": 0,
        "ANTHROPIC_API_KEY": None,
        "SUPABASE_URL": None,
        "SUPABASE_SERVICE_ROLE_KEY": None,
        **spec["env"],
    }
    settings = Settings(**env)
    storage_path = f"user-imports/{USER_ID}/export.zip"
    target = settings.resolved_storage_dir / storage_path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec["export"], target)

    embedder = make_embedder(settings.embeddings)
    assert embedder is not None
    pool = make_pool(spec["db"], max_size=settings.embeddings.concurrency + 2)
    await pool.open(wait=True)
    deps = runner.Deps(
        settings=settings, store=Store(pool), llm=OfflineProvider(), embedder=embedder
    )
    out: dict[str, Any] = {}
    try:
        async with pool.connection() as conn:
            row = await (
                await conn.execute(
                    "insert into public.imports (user_id, storage_path, options)"
                    " values (%s, %s, '{\"fanout\": 1}'::jsonb) returning id",
                    (USER_ID, storage_path),
                )
            ).fetchone()
            assert row is not None
            import_id = uuid.UUID(str(row["id"]))
        for stage in ("download", "chunk"):
            if await _run_job(deps, pool, import_id, stage) != stage:
                raise SystemExit(f"no queued {stage} job")
        if spec["provider"] == "local":
            # The model is loaded before the clock starts (once per process, ~0.3 s).
            await embedder.embed_documents(["warm up"])
        started, cpu = time.perf_counter(), time.process_time()
        if await _run_job(deps, pool, import_id, "embed") != "embed":
            raise SystemExit("no queued embed job")
        out["embed_s"] = time.perf_counter() - started
        # The worker process's CPU time over the stage (its threads included).
        out["worker_cpu_s"] = time.process_time() - cpu
        async with pool.connection() as conn:
            stage_row = await (
                await conn.execute(
                    "select status, output from public.import_stages"
                    " where import_id = %s and stage = 'embed'",
                    (import_id,),
                )
            ).fetchone()
            texts = await (
                await conn.execute(
                    "select coalesce(sum(length(content)), 0) as chars, count(*) as n,"
                    " count(embedding) as embedded from public.import_chunks"
                    " where import_id = %s",
                    (import_id,),
                )
            ).fetchone()
        assert stage_row is not None and texts is not None
        if stage_row["status"] != "done":
            raise SystemExit(f"the embed stage ended {stage_row['status']}")
        output = dict(stage_row["output"])
        out.update(
            chunks=int(output["chunks"]),
            embedded=int(texts["embedded"]),
            calls=int(output["calls"]),
            tokens=int(output["tokens"]),
            chunk_chars=int(texts["chars"]),
        )
        if spec["provider"] == "local":
            out["model_only_s"] = await _model_only(pool, import_id, embedder)
        if spec.get("quality"):
            while await _run_job(deps, pool, import_id, None) is not None:
                pass
            out["quality"] = await _quality(
                pool, embedder, json.loads(Path(spec["truth"]).read_text())
            )
    finally:
        await embedder.aclose()
        await pool.close()
    return out


async def _model_only(pool: Any, import_id: uuid.UUID, embedder: Any) -> float:
    """Seconds for the model alone on the same texts, the same batches, one at a time."""
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "select case when coalesce(title, '') = '' then content"
                " else title || E'\\n\\n' || content end as text"
                " from public.import_chunks where import_id = %s order by id",
                (import_id,),
            )
        ).fetchall()
    texts = [r["text"] for r in rows]
    started = time.perf_counter()
    for i in range(0, len(texts), embedder.max_batch):
        await embedder.embed_documents(texts[i : i + embedder.max_batch])
    return time.perf_counter() - started


def _flat(text: str) -> str:
    return " ".join(text.split())


async def _quality(pool: Any, embedder: Any, truth: dict[str, Any]) -> dict[str, Any]:
    """recall@10 of the planted facts by paraphrase: text only, vector only, hybrid."""
    from worker import queries
    from worker.search import _vector_text

    async with pool.connection() as conn:
        chunks = await (
            await conn.execute(
                "select id, content from public.conversation_chunks where user_id = %s",
                (USER_ID,),
            )
        ).fetchall()
    flat = [(r["id"], _flat(r["content"] or "")) for r in chunks]
    facts = sorted({f["text"] for f in truth["facts"]})
    # vector_exact: the vector side without the HNSW index (an exact scan), to
    # tell the index's approximation from the model's misses.
    modes = ("text", "vector", "vector_exact", "hybrid")
    hits: dict[str, int] = dict.fromkeys(modes, 0)
    misses: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    absent: list[str] = []
    shared: list[float] = []
    per_query: list[dict[str, Any]] = []
    for fact in facts:
        holding = {cid for cid, content in flat if _flat(fact) in content}
        if not holding:
            absent.append(fact)  # cut away with an over-long message: no chunk holds it
            continue
        question = paraphrase(fact)
        fact_words = _words(fact)
        shared.append(len(_words(question) & fact_words) / len(fact_words))
        vector = _vector_text(await embedder.embed_query(question))
        ranks: dict[str, int | None] = {}
        for mode in modes:
            async with pool.connection() as conn, conn.transaction():
                if mode == "vector_exact":
                    await conn.execute("set local enable_indexscan = off")
                rows = await (
                    await conn.execute(
                        queries.SEARCH_CHUNKS,
                        {
                            "user_id": USER_ID,
                            "query": question if mode in ("text", "hybrid") else None,
                            "embedding": vector if mode != "text" else None,
                            "k": TOP_K,
                            "tiers": None,
                        },
                    )
                ).fetchall()
            found = [i for i, r in enumerate(rows, 1) if r["id"] in holding]
            ranks[mode] = found[0] if found else None
            if found:
                hits[mode] += 1
            else:
                misses[mode].append({"fact": fact, "query": question})
        per_query.append({"fact": fact, "query": question, "chunks_holding": len(holding), **ranks})
    n = len(facts) - len(absent)
    return {
        "chunks": len(flat),
        "planted_facts": len(truth["facts"]),
        "distinct_facts": len(facts),
        "queries": n,
        "facts_in_no_chunk": absent,
        "mean_fact_words_in_query": round(statistics.fmean(shared), 3) if shared else None,
        "hits": hits,
        "recall_at_10": {m: round(hits[m] / n, 4) if n else None for m in modes},
        "misses": misses,
        "per_query": per_query,
    }


def child_main(spec: str) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(asyncio.run(child(json.loads(spec)))), flush=True)
    return 0


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        check=False,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise SystemExit(f"embed child failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- runs


def one_run(
    provider: str,
    args: argparse.Namespace,
    server: str,
    work: Path,
    export: Path,
    truth: Path,
    *,
    quality: bool,
) -> dict[str, Any]:
    """One measured run of the embed stage with ``provider`` (a fresh database)."""
    conf = PROVIDERS[provider]
    dsn = fresh_database(server, conf["dimension"])
    fake: subprocess.Popen[str] | None = None
    env = dict(conf["env"])
    env["FULLPASS_EMBEDDINGS_CONCURRENCY"] = str(args.concurrency)
    try:
        if provider != "local":
            fake = subprocess.Popen(
                [sys.executable, "-c", FAKE_SERVER, provider, str(args.latency), str(REPO)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=REPO,
            )
            assert fake.stdout is not None
            env.update(json.loads(fake.stdout.readline()))
        home = work / f"{provider}-{uuid.uuid4().hex[:6]}"
        result = run_child(
            {
                "db": dsn,
                "home": str(home),
                "export": str(export),
                "truth": str(truth),
                "provider": provider,
                "env": env,
                "quality": quality,
            }
        )
        if fake is not None:
            assert fake.stdin is not None and fake.stdout is not None
            fake.stdin.close()
            result["fake"] = json.loads(fake.stdout.readline())
            fake.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
        return result
    finally:
        if fake is not None and fake.poll() is None:
            fake.kill()
        if not args.keep:
            drop_database(server, dsn)


def summarise(
    provider: str, runs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    chunks = runs[0]["chunks"]
    seconds = [r["embed_s"] for r in runs]
    median_s = statistics.median(seconds)
    out: dict[str, Any] = {
        "chunks": chunks,
        "embedded": runs[0]["embedded"],
        "calls": runs[0]["calls"],
        "tokens": runs[0]["tokens"],
        "chunk_chars": runs[0]["chunk_chars"],
        "batch": PROVIDERS[provider]["batch"],
        "dimension": PROVIDERS[provider]["dimension"],
        "concurrency": args.concurrency,
        "embed_s_runs": [round(s, 3) for s in seconds],
        "embed_s": round(median_s, 3),
        "chunks_per_s": round(chunks / median_s, 1),
        "worker_cpu_s": round(statistics.median(r["worker_cpu_s"] for r in runs), 3),
    }
    if provider == "local":
        model_s = statistics.median(r["model_only_s"] for r in runs)
        out["model_only_s"] = round(model_s, 3)
        out["model_only_chunks_per_s"] = round(chunks / model_s, 1)
        out["stage_share_of_model"] = round(model_s / median_s, 3)
    else:
        # The ideal: every call the stage made (a batch over the service's token
        # limit for one request goes as several) takes exactly the latency, with
        # ``concurrency`` of them always in flight.
        calls = runs[0]["calls"]
        ideal = math.ceil(calls / args.concurrency) * args.latency
        out["latency_s"] = args.latency
        out["ideal_s"] = round(ideal, 3)
        out["ideal_formula_s"] = round(chunks / out["batch"] * args.latency / args.concurrency, 3)
        out["ratio_to_ideal"] = round(ideal / median_s, 3)
        out["ratio_runs"] = [round(ideal / s, 3) for s in seconds]
        out["fake"] = runs[0].get("fake")
        # The fake's CPU time over the whole child run (chunking included, when
        # it serves nothing): what it spent answering.
        out["fake_cpu_s"] = round(statistics.median(r["fake"]["cpu_s"] for r in runs), 3)
    return out


def pooled(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Recall over every seed's queries together, beside each seed's own."""
    queries = sum(q["queries"] for q in per_seed.values())
    modes = next(iter(per_seed.values()))["hits"].keys()
    hits = {m: sum(q["hits"][m] for q in per_seed.values()) for m in modes}
    return {
        "queries": queries,
        "chunks": {seed: q["chunks"] for seed, q in per_seed.items()},
        "hits": hits,
        "recall_at_10": {m: round(hits[m] / queries, 4) if queries else None for m in modes},
        "by_seed": {seed: q for seed, q in sorted(per_seed.items())},
    }


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    lines = [
        f"  {'provider':9} {'chunks':>7} {'batch':>5} {'conc':>4} {'calls':>6} "
        f"{'stage s':>8} {'cpu s':>6} {'chunks/s':>9}  vs ideal / model"
    ]
    for name, r in results["throughput"].items():
        if name == "local":
            extra = f"model alone {r['model_only_chunks_per_s']:,.0f} chunks/s"
        else:
            extra = (
                f"ideal {r['ideal_s']:.2f} s, ratio {r['ratio_to_ideal']:.2f}"
                f" (fake's CPU {r['fake_cpu_s']:.1f} s)"
            )
        lines.append(
            f"  {name:9} {r['chunks']:7,} {r['batch']:5} {r['concurrency']:4} {r['calls']:6,} "
            f"{r['embed_s']:8.2f} {r['worker_cpu_s']:6.2f} {r['chunks_per_s']:9,.0f}  {extra}"
        )
    q = results.get("quality")
    if q:
        seeds = list(q["by_seed"])
        lines.append("")
        lines.append(
            f"  retrieval (local model): {q['queries']} paraphrased queries, exports of seeds "
            f"{', '.join(map(str, seeds))}; recall@{TOP_K} per seed and in all:"
        )
        for mode, value in q["recall_at_10"].items():
            each = "  ".join(f"{q['by_seed'][s]['recall_at_10'][mode]:.3f}" for s in seeds)
            mark = ""
            if mode == "hybrid":
                mark = "  (target >= 0.9: " + ("ok" if value >= TARGET_RECALL else "MISSED") + ")"
            lines.append(f"    {mode:13} {each}   all {value:.3f}{mark}")
    return "\n".join(lines)


def write_results(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(RESULTS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency", type=float, default=0.2, help="the fakes' seconds a call")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--providers", default="local,openai,bedrock")
    parser.add_argument(
        "--quality-seeds",
        default="7,11,13,17,19",
        help="exports (seeds) the retrieval is measured on, with the local model",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases and scratch")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    providers = [p for p in args.providers.split(",") if p]
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        parser.error(f"unknown providers: {', '.join(sorted(unknown))}")

    from worker import embedded

    work = Path(tempfile.mkdtemp(prefix="fullpass-bench-embed-"))
    server = os.environ.get("DATABASE_URL")
    pg_home = None if server else work / "pg"
    try:
        export, truth = export_files(args.conversations, args.seed)
        if pg_home is not None:
            print("starting an embedded PostgreSQL ...", flush=True)
            server = embedded.ensure_server(pg_home)
        assert server is not None
        throughput: dict[str, Any] = {}
        per_seed: dict[int, dict[str, Any]] = {}
        for provider in providers:
            runs = []
            for n in range(args.runs):
                print(f"{provider}: run {n + 1} of {args.runs} ...", flush=True)
                first_local = provider == "local" and n == 0
                run = one_run(provider, args, server, work, export, truth, quality=first_local)
                if first_local:
                    per_seed[args.seed] = run.pop("quality")
                runs.append(run)
            throughput[provider] = summarise(provider, runs, args)
        seeds = [int(x) for x in args.quality_seeds.split(",") if x] if "local" in providers else []
        for seed in seeds:
            if seed not in per_seed:
                print(f"retrieval: the export of seed {seed} ...", flush=True)
                other, other_truth = export_files(args.conversations, seed)
                run = one_run("local", args, server, work, other, other_truth, quality=True)
                per_seed[seed] = run["quality"]
        quality = pooled(per_seed) if per_seed else None
        results: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "args": {
                "conversations": args.conversations,
                "seed": args.seed,
                "latency_s": args.latency,
                "concurrency": args.concurrency,
                "runs": args.runs,
                "quality_seeds": sorted(per_seed),
            },
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "postgres": server_version(server),
                "database": "embedded" if pg_home is not None else "DATABASE_URL",
            },
            "throughput": throughput,
            "quality": quality,
        }
        write_results(results)
        print(f"\nembed benchmark ({RESULTS.relative_to(REPO)}), medians of {args.runs} runs:")
        print(table(results))
        return 0
    finally:
        if pg_home is not None and not args.keep:
            embedded.stop_server(pg_home)
        if args.keep:
            print(f"kept: scratch {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
