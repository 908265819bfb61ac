"""What every embeddings provider promises, and the checks that hold them to it.

A provider turns texts into vectors of a fixed ``dimension``. Whatever the
service, the same rules apply, so the pipeline never has to know which one
it talks to:

* every text is cut to the provider's ``max_input_chars`` before it is sent:
  an over-long chunk is embedded by its beginning, it never fails an import;
  lone surrogates (left by broken exports) become U+FFFD, since neither JSON
  bodies in UTF-8 nor tokenizers can carry them;
* an empty or whitespace-only text is not sent at all and gets the zero
  vector (``dimension`` zeros): it has no meaning to embed, costs nothing,
  and a zero vector never matches a query (pgvector's cosine distance to it
  is NaN, and its HNSW cosine indexes skip zero vectors);
* the answer holds exactly one vector of exactly ``dimension`` finite floats
  per text sent, in the order sent, or the call raises
  :class:`~worker.errors.Unusable`;
* failures are :mod:`worker.errors` kinds: throttling and outages end as
  :class:`~worker.errors.Transient` after retries, refused credentials as
  :class:`~worker.errors.NeedsOperator`, a rejected input as ``Unusable``;
  their messages never hold a secret.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from worker.errors import Unusable

#: What a text is embedded for: stored and searched (``document``) or
#: searched with (``query``). Some models embed the two differently.
InputKind = Literal["document", "query"]


@dataclass(frozen=True, slots=True)
class EmbedUsage:
    """Tokens the service counted and requests that returned vectors."""

    input_tokens: int = 0
    calls: int = 0

    def __add__(self, other: EmbedUsage) -> EmbedUsage:
        return EmbedUsage(self.input_tokens + other.input_tokens, self.calls + other.calls)


@dataclass(frozen=True, slots=True)
class Embedded:
    """One vector per input text, in input order, and what producing them cost."""

    vectors: list[list[float]]
    usage: EmbedUsage
    #: The model that produced the vectors, to be stored beside them.
    model: str


@runtime_checkable
class Embedder(Protocol):
    """An embeddings provider (see the module docstring for the rules)."""

    #: Provider kind: ``bedrock``, ``openai`` or ``local``.
    name: str
    #: Model id stored with each embedding, e.g. ``cohere.embed-english-v3``.
    model: str
    dimension: int
    #: Texts per request; :meth:`embed_documents` splits larger inputs.
    max_batch: int
    #: Characters of one text that are sent; the rest is cut off.
    max_input_chars: int

    async def embed_documents(self, texts: Sequence[str]) -> Embedded:
        """Vectors for texts to store and search (any number of texts)."""
        ...

    async def embed_query(self, text: str) -> list[float]:
        """The vector to search stored documents with."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads."""
        ...


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing to embed (empty or only whitespace)."""
    return not text or text.isspace()


def bound(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters (code points), encodable as UTF-8.

    Never fails: this is what lets any chunk, however long or broken, be sent.
    """
    text = text if len(text) <= max_chars else text[:max_chars]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Paired surrogates become their character, lone ones U+FFFD.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def zero_vector(dimension: int) -> list[float]:
    """The vector given to blank texts."""
    return [0.0] * dimension


def check_vectors(
    vectors: object, *, expected: int, dimension: int, source: str
) -> list[list[float]]:
    """``vectors`` as ``expected`` lists of ``dimension`` finite floats, or :class:`Unusable`.

    A service answering garbage (a proxy's error page, a truncated body, a
    model of another size) must fail the items, never crash the stage, and
    must never let a vector of the wrong size reach the database.
    """
    if not isinstance(vectors, list):
        raise Unusable(f"{source}: the answer holds no list of vectors")
    if len(vectors) != expected:
        raise Unusable(f"{source}: {len(vectors)} vectors for {expected} texts")
    out: list[list[float]] = []
    for position, vector in enumerate(vectors):
        out.append(_check_vector(vector, dimension, f"{source}: vector {position}"))
    return out


def _check_vector(vector: object, dimension: int, where: str) -> list[float]:
    if isinstance(vector, str):
        vector = decode_base64_floats(vector, where)
    if not isinstance(vector, list):
        raise Unusable(f"{where} is not a list of numbers")
    if len(vector) != dimension:
        raise Unusable(f"{where} has {len(vector)} dimensions, expected {dimension}")
    if not all(type(x) is float for x in vector):  # the usual case needs no copy
        if not all(type(x) is float or type(x) is int for x in vector):
            raise Unusable(f"{where} holds values that are not numbers")
        vector = [float(x) for x in vector]
    # One sum finds any NaN or infinity: either makes the total non-finite.
    if not math.isfinite(math.fsum(vector)):
        raise Unusable(f"{where} holds NaN or infinite values")
    return vector


def decode_base64_floats(value: str, where: str) -> list[float]:
    """A vector sent as base64 little-endian float32 (OpenAI's ``base64`` encoding).

    Some OpenAI-compatible servers answer this way whatever was asked.
    """
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise Unusable(f"{where} is neither a list of numbers nor base64") from None
    if len(raw) % 4:
        raise Unusable(f"{where} is base64 of {len(raw)} bytes, not float32 values")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def split_batches(
    texts: Sequence[str], max_batch: int, max_chars: int | None = None
) -> list[list[int]]:
    """Positions of ``texts`` grouped into requests, in order.

    A request holds at most ``max_batch`` texts and, when ``max_chars`` is
    set, at most that many characters in all (a single longer text still
    goes alone): some services limit a request's total size as well as its
    number of inputs.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for position, text in enumerate(texts):
        full = len(current) >= max_batch
        too_big = max_chars is not None and current and size + len(text) > max_chars
        if full or too_big:
            groups.append(current)
            current, size = [], 0
        current.append(position)
        size += len(text)
    if current:
        groups.append(current)
    return groups


def usage_total(parts: Sequence[EmbedUsage]) -> EmbedUsage:
    total = EmbedUsage()
    for part in parts:
        total += part
    return total
