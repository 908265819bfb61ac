"""The local WordLlama provider: offline, in process, 256-dimension unit vectors."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from tests.fakes.embedding_server import cosine
from tests.fakes.plugin import closing
from worker.embeddings import EmbeddingSettings, make_embedder
from worker.embeddings import local as local_module
from worker.embeddings.local import LocalEmbedder, WordLlamaModel, load_model, model_files

REPO = Path(__file__).resolve().parents[3]

#: Runs in a fresh interpreter where any network connection raises, with an
#: empty home and caches: the model must load and embed from the package alone.
OFFLINE = r"""
import asyncio, json, logging, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network access attempted")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from worker.embeddings import EmbeddingSettings, make_embedder

async def main():
    embedder = make_embedder(EmbeddingSettings())
    try:
        return await embedder.embed_documents(["Good morning, world.", "Buenos días."])
    finally:
        await embedder.aclose()

result = asyncio.run(main())
print(json.dumps({
    "dimensions": [len(v) for v in result.vectors],
    "norms": [sum(x * x for x in v) for v in result.vectors],
    "tokens": result.usage.input_tokens,
    "wordllama_imported": "wordllama" in sys.modules,
    "root_handlers": len(logging.getLogger().handlers),
}))
"""

SIMILAR = (
    "I love hiking in the mountains on weekends.",
    "On Saturdays I like to walk up mountain trails.",
)
UNRELATED = "The quarterly tax report is due to the accountant on Friday."


@pytest.fixture
def embedder() -> LocalEmbedder:
    built = make_embedder(EmbeddingSettings())
    assert isinstance(built, LocalEmbedder)
    return closing(built)


def test_loads_and_embeds_with_no_network_and_no_downloads(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FULLPASS_", "HF_", "XDG_", "AWS_", "OPENAI_"))
    }
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        HF_HOME=str(home / "hf"),
        PYTHONPATH=str(REPO),
    )
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["dimensions"] == [256, 256]
    assert all(math.isclose(n, 1.0, rel_tol=1e-5) for n in report["norms"])
    assert report["tokens"] > 0
    # The package is found, not imported: its import reconfigures logging.
    assert report["wordllama_imported"] is False
    assert report["root_handlers"] == 0
    assert list(home.rglob("*")) == []  # nothing cached, nothing downloaded


def test_token_vectors_are_centred_on_the_tables_mean() -> None:
    """The table's mean vector, a direction every token shares, is taken out of each token."""
    from safetensors import safe_open

    weights, _ = model_files()
    with safe_open(str(weights), framework="np", device="cpu") as f:
        shipped = f.get_tensor("embedding.weight").astype(np.float32)
    table = load_model().table
    assert table.shape == shipped.shape
    assert np.allclose(table, shipped - shipped.mean(axis=0), atol=1e-5)
    assert np.allclose(table.mean(axis=0, dtype=np.float64), 0.0, atol=1e-6)


def test_model_files_ship_inside_the_package() -> None:
    weights, tokenizer = model_files()
    assert weights.name == "l2_supercat_256.safetensors" and weights.stat().st_size > 10_000_000
    assert tokenizer.name == "l2_supercat_tokenizer_config.json"


async def test_unit_vectors_where_similar_scores_higher(embedder: LocalEmbedder) -> None:
    assert (embedder.name, embedder.model, embedder.dimension) == (
        "local",
        "wordllama-l2-supercat-256+centred-logtf",
        256,
    )
    result = await embedder.embed_documents([*SIMILAR, UNRELATED])
    assert result.model == "wordllama-l2-supercat-256+centred-logtf"
    for vector in result.vectors:
        assert len(vector) == 256
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)
    a, b, c = result.vectors
    assert cosine(a, b) > cosine(a, c) + 0.2
    query = await embedder.embed_query("mountain hiking")
    assert cosine(query, a) > cosine(query, c)


async def test_same_vectors_as_wordllamas_own_inference(embedder: LocalEmbedder) -> None:
    """The pooling here is WordLlama's (mean of token vectors, unit length), minus padding,
    for texts that repeat no token; a repeated token weighs 1 / (1 + ln n) in all."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)  # the package's import calls logging.basicConfig
    try:
        from wordllama import WordLlamaInference
    finally:
        root.removeHandler(guard)
    model = load_model()
    own = WordLlamaInference(model.table, Tokenizer.from_file(str(model_files()[1])))
    texts = [*SIMILAR, UNRELATED, "short"]
    assert all(len(set(ids)) == len(ids) for ids in (own.tokenizer.encode(t).ids for t in texts))
    expected = own.embed(texts, norm=True)
    result = await embedder.embed_documents(texts)
    assert np.allclose(np.asarray(result.vectors), expected, atol=1e-5)


async def test_a_repeated_token_weighs_sublinearly(embedder: LocalEmbedder) -> None:
    """Said n times, a token weighs 1 / (1 + ln n) in all: what is said once stands out."""
    model = load_model()
    once, often = "lighthouse", "spreadsheet"
    text = " ".join([once] + [often] * 20)
    ids = model.tokenizer.encode(text, add_special_tokens=False).ids
    distinct, counts = np.unique(ids, return_counts=True)
    weights = 1 / (1 + np.log(counts))
    expected = weights @ model.table[distinct]
    expected /= np.linalg.norm(expected)
    (vector,) = (await embedder.embed_documents([text])).vectors
    assert np.allclose(vector, expected, atol=1e-5)
    (alone,) = (await embedder.embed_documents([once])).vectors
    mean = model.table[np.asarray(ids)].mean(axis=0)
    assert cosine(vector, alone) > cosine(mean.tolist(), alone) + 0.2
    # a text that repeats nothing: the plain mean
    (plain,) = (await embedder.embed_documents([f"{once} {often}"])).vectors
    pair = model.table[model.tokenizer.encode(f"{once} {often}", add_special_tokens=False).ids]
    assert np.allclose(plain, pair.mean(axis=0) / np.linalg.norm(pair.mean(axis=0)), atol=1e-5)


async def test_usage_counts_the_tokenizers_tokens_and_batches(embedder: LocalEmbedder) -> None:
    tokenizer = load_model().tokenizer
    texts = [f"conversation chunk number {i} about gardening" for i in range(600)]
    result = await embedder.embed_documents(texts)
    assert len(result.vectors) == 600
    expected = sum(len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts)
    assert result.usage.input_tokens == expected
    assert result.usage.calls == 3  # 256 + 256 + 88


async def test_long_texts_are_bounded_and_blank_ones_get_zeros(embedder: LocalEmbedder) -> None:
    long = "The garden needs water. " * 5000  # 120,000 characters
    result = await embedder.embed_documents([long, "", " \n"])
    cut = await embedder.embed_documents([long[: embedder.max_input_chars]])
    assert embedder.max_input_chars == 32_000
    assert result.vectors[0] == cut.vectors[0]
    assert result.vectors[1] == result.vectors[2] == [0.0] * 256
    assert await embedder.embed_query("") == [0.0] * 256


def test_text_without_tokens_gets_zeros() -> None:
    vectors, tokens = load_model().embed([""])
    assert vectors == [[0.0] * 256] and tokens == 0


@pytest.fixture
def unloaded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[WordLlamaModel]]:
    """No model loaded yet; every read of the files recorded."""
    monkeypatch.setattr(local_module, "_model", None)
    reads: list[WordLlamaModel] = []
    read = local_module._read_model

    def slow_read() -> WordLlamaModel:
        time.sleep(0.05)  # widen the race
        model = read()
        reads.append(model)
        return model

    monkeypatch.setattr(local_module, "_read_model", slow_read)
    yield reads


def test_model_loads_once_under_concurrent_first_use(unloaded: list[WordLlamaModel]) -> None:
    seen: list[WordLlamaModel] = []
    threads = [threading.Thread(target=lambda: seen.append(load_model())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(unloaded) == 1
    assert all(model is unloaded[0] for model in seen) and len(seen) == 8


async def test_model_is_loaded_lazily(unloaded: list[WordLlamaModel]) -> None:
    embedder = closing(LocalEmbedder(EmbeddingSettings()))
    assert unloaded == []
    await embedder.embed_query("now it loads")
    await embedder.embed_query("and only once")
    assert len(unloaded) == 1


async def test_broken_unicode_and_empty_input(embedder: LocalEmbedder) -> None:
    """A lone surrogate (a broken export) is replaced, never an error."""
    result = await embedder.embed_documents(["caf\ud800 au lait", "caf\ufffd au lait"])
    assert result.vectors[0] == result.vectors[1]
    empty = await embedder.embed_documents([])
    assert (empty.vectors, empty.usage.calls) == ([], 0)
    with pytest.raises(TypeError, match="not a string"):
        await embedder.embed_documents("one text")


async def test_make_embedder_takes_the_same_knobs_for_every_provider() -> None:
    built = make_embedder(EmbeddingSettings(), backoff_base=0.001, threads=2)
    assert isinstance(built, LocalEmbedder) and built.concurrency == 2
    await built.aclose()
