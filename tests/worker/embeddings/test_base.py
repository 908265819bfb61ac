"""The rules every provider shares: bounding, blanks, splitting, answer checks."""

from __future__ import annotations

import base64
import math
import struct

import pytest

from tests.fakes.embedding_server import cosine, lexical_vector, stem
from worker.embeddings.base import (
    EmbedUsage,
    bound,
    check_vectors,
    is_blank,
    split_batches,
    zero_vector,
)
from worker.embeddings.remote import retry_after_seconds
from worker.errors import Unusable


def test_bound_cuts_and_never_fails() -> None:
    assert bound("abcdef", 3) == "abc"
    assert bound("abc", 3) == "abc"
    assert bound("", 3) == ""
    assert bound("é" * 10, 4) == "éééé"


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u3000"])
def test_blank_texts(text: str) -> None:
    assert is_blank(text)


def test_not_blank() -> None:
    assert not is_blank(" a ")
    assert not is_blank(".")


def test_zero_vector() -> None:
    assert zero_vector(3) == [0.0, 0.0, 0.0]


def test_usage_adds_up() -> None:
    assert EmbedUsage(3, 1) + EmbedUsage(4, 2) == EmbedUsage(7, 3)


def test_split_by_count_and_by_characters() -> None:
    assert split_batches(["a"] * 5, 2) == [[0, 1], [2, 3], [4]]
    assert split_batches([], 2) == []
    texts = ["x" * 40, "x" * 40, "x" * 40, "x" * 200, "x"]
    assert split_batches(texts, 10, max_chars=100) == [[0, 1], [2], [3], [4]]


def test_check_vectors_accepts_numbers_and_base64() -> None:
    packed = base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode()
    assert check_vectors([[1, 0.5], packed], expected=2, dimension=2, source="s") == [
        [1.0, 0.5],
        [0.5, -1.0],
    ]


@pytest.mark.parametrize(
    ("vectors", "words"),
    [
        ({"a": 1}, "no list of vectors"),
        ([[0.1, 0.2]], "1 vectors for 2 texts"),
        ([[0.1, 0.2], [0.1]], "vector 1 has 1 dimensions, expected 2"),
        ([[0.1, 0.2], [0.1, "0.2"]], "not numbers"),
        ([[0.1, 0.2], [0.1, True]], "not numbers"),
        ([[0.1, math.nan], [0.1, 0.2]], "NaN or infinite"),
        ([[0.1, math.inf], [0.1, 0.2]], "NaN or infinite"),
        ([[0.1, 0.2], None], "not a list"),
        ([[0.1, 0.2], "not base64!"], "neither a list of numbers nor base64"),
    ],
)
def test_check_vectors_refuses_garbage(vectors: object, words: str) -> None:
    with pytest.raises(Unusable, match="provider X") as caught:
        check_vectors(vectors, expected=2, dimension=2, source="provider X")
    assert words in str(caught.value)


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    dated = retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert dated == 0.0


def test_fake_vectors_are_lexical() -> None:
    """The fakes' vectors make search work in tests: shared words score higher."""
    a = lexical_vector("I love hiking in the mountains", 256)
    b = lexical_vector("Hiking mountain trails on weekends", 256)
    c = lexical_vector("The quarterly tax report is due", 256)
    assert math.isclose(math.fsum(x * x for x in a), 1.0)
    assert cosine(a, b) > 0.3 > abs(cosine(a, c))
    assert lexical_vector("same words", 64) == lexical_vector("Same, words!", 64)
    assert stem("hiking") == stem("hikes") == stem("hiked")
    assert math.isclose(math.fsum(x * x for x in lexical_vector("!!!", 8)), 1.0)
