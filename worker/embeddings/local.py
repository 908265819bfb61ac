"""The default embeddings: WordLlama ``l2_supercat`` at 256 dimensions, in process.

WordLlama is a table of token embeddings (distilled from large language
models) pooled over a text's tokens: no network, no GPU, ~2,700 chunks of
2,000 characters (~450 tokens) a second on one core, tokenizing being most
of it (the tokenizer spreads a batch over the cores it finds). The
``wordllama`` wheel ships the weights (``weights/l2_supercat_256.safetensors``,
16 MB) and the tokenizer (``tokenizers/l2_supercat_tokenizer_config.json``)
inside the package.

The files are loaded here directly rather than with ``WordLlama.load()``:
that looks for the tokenizer under ``tokenizer/`` while the wheel has it
under ``tokenizers/``, so it would try to download it from a model hub; and
importing the ``wordllama`` package calls ``logging.basicConfig``, which
would change the process's logging. Only the package's location is looked
up, without importing it. WordLlama's padding of a batch to its longest text
and its masked sum, which together run at half this speed, are not used either.

Two changes to WordLlama's own recipe, each measured on the paraphrased
queries of ``bench/embed.py`` (a planted fact said once in a chunk, a question
naming it in other words, vector side alone; three exports of 1,500
conversations, 96 queries).

The token vectors are centred: the table's mean vector is taken out of every
row once, at load. Every token's vector leans the same way (the mean is most
of a frequent token's length), so every pooled text did too, and that shared
part counted in every similarity as if it were meaning. Without it the right
chunk was in the top 10 for 85 queries, against 80 with the table as shipped
(and for more queries on each of the three exports).

The pooling is WordLlama's (a sum of the token vectors, then unit length)
but for its weights: a token said ``n`` times in the text weighs
``1 / (1 + ln n)`` in all, not ``n``. A chunk of a long conversation holds up
to ~8,000 characters, mostly words it says again and again (function words, the
topic's own words); with the plain mean they drowned what it says once, and a
fact said once is what a search is most often after (the topic's words are
what full-text search, ranking by their frequency, finds). On the same
queries the right chunk was in the top 10 for 31 of 96 queries with the
mean, 81 with these weights (before centring). A text that repeats no token (most queries) gets
the same vector either way.

The model is loaded once per process, lazily and under a lock, in the
thread that first needs it (~0.3 s); embedding runs in this provider's
thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from safetensors import safe_open
from tokenizers import Tokenizer

from worker.embeddings.base import EmbedUsage, InputKind
from worker.embeddings.batching import BatchingEmbedder, GroupResult
from worker.embeddings.settings import EmbeddingSettings
from worker.errors import NeedsOperator

MODEL: Final = "wordllama-l2-supercat-256"
DIMENSION: Final = 256
#: How token vectors are pooled into a text's vector (centred on the table's
#: mean; a token said n times weighs 1 / (1 + ln n)). It is part of the name
#: recorded beside each embedding, so vectors pooled another way (the plain
#: mean, recorded as the bare model name; ``+logtf``, not centred) count as
#: another model's and a backfill embeds them again.
POOLING: Final = "centred-logtf"
_PACKAGE: Final = "wordllama"
_WEIGHTS: Final = Path("weights", "l2_supercat_256.safetensors")
_TOKENIZER: Final = Path("tokenizers", "l2_supercat_tokenizer_config.json")
_TENSOR: Final = "embedding.weight"


@dataclass(frozen=True, slots=True)
class WordLlamaModel:
    """The token-vector table (centred on its mean) and the tokenizer that indexes it."""

    table: npt.NDArray[np.float32]
    tokenizer: Tokenizer

    @property
    def dimension(self) -> int:
        return int(self.table.shape[1])

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Unit vectors for ``texts`` and the number of tokens they hold.

        A text without tokens gets the zero vector (callers do not send any).
        """
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        last = self.table.shape[0] - 1
        tokens = 0
        for row, encoding in zip(out, encodings, strict=True):
            ids = np.asarray(encoding.ids, dtype=np.intp)
            tokens += int(ids.size)
            if ids.size:
                np.clip(ids, 0, last, out=ids)
                distinct, counts = np.unique(ids, return_counts=True)
                # A token said n times weighs 1 / (1 + ln n) in all (the module docstring).
                weights = (1.0 / (1.0 + np.log(counts))).astype(np.float32)
                row[:] = weights @ self.table[distinct]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        vectors: list[list[float]] = out.tolist()
        return vectors, tokens


_lock = threading.Lock()
_model: WordLlamaModel | None = None


def model_files() -> tuple[Path, Path]:
    """The weights and tokenizer files inside the installed ``wordllama`` package.

    Found without importing the package (its import reconfigures logging).
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise NeedsOperator(
            "local embeddings need the wordllama package (pip install wordllama), "
            "or set FULLPASS_EMBEDDINGS to bedrock, openai or none"
        )
    root = Path(locations[0])
    weights, tokenizer = root / _WEIGHTS, root / _TOKENIZER
    for path in (weights, tokenizer):
        if not path.is_file():
            raise NeedsOperator(f"local embeddings: {path} is missing from the wordllama package")
    return weights, tokenizer


def load_model() -> WordLlamaModel:
    """The process's one model, loaded on first use (thread-safe)."""
    global _model
    model = _model
    if model is not None:
        return model
    with _lock:
        if _model is None:
            _model = _read_model()
        return _model


def _read_model() -> WordLlamaModel:
    weights, tokenizer_file = model_files()
    with safe_open(str(weights), framework="np", device="cpu") as f:
        table = np.ascontiguousarray(f.get_tensor(_TENSOR), dtype=np.float32)
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    if table.ndim != 2 or table.shape[1] != DIMENSION:
        raise NeedsOperator(f"local embeddings: {weights} holds {table.shape}, not (n, 256)")
    table -= table.mean(axis=0, dtype=np.float64).astype(np.float32)
    return WordLlamaModel(table, tokenizer)


class LocalEmbedder(BatchingEmbedder):
    """:class:`~worker.embeddings.base.Embedder` computed in process.

    ``threads`` runs that many batches at once (the tokenizer already uses
    every core within a batch, so one is the default).
    """

    name = "local"

    def __init__(self, settings: EmbeddingSettings, *, threads: int = 1) -> None:
        resolved = settings.resolved
        if resolved.provider != "local":
            raise ValueError(f"{resolved.model} is not a local model")
        super().__init__(
            model=f"{resolved.model}+{POOLING}",
            dimension=resolved.dimension,
            max_batch=resolved.batch,
            max_input_chars=resolved.max_input_chars,
            concurrency=threads,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="fullpass-embed"
        )

    async def _embed_group(self, texts: list[str], kind: InputKind) -> GroupResult:
        loop = asyncio.get_running_loop()
        async with self._slots:
            vectors, tokens = await loop.run_in_executor(self._executor, _embed, texts)
        return vectors, EmbedUsage(input_tokens=tokens, calls=1)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _embed(texts: list[str]) -> tuple[list[list[float]], int]:
    return load_model().embed(texts)
