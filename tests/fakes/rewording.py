"""How a real model words the facts it extracts: the fake Messages API's rewording mode.

The fake answers extraction requests with the project's fact rules, which keep
the user's own sentence ("I really prefer dark mode in editors."). A model
does not. It writes in the third person ("Prefers dark mode in editors."),
cuts a fact to its gist ("Building Orrery."), writes dates the ISO way
("2019-06-14"), merges two facts of one call into one sentence, and now and
then records what the user never said ("Is interested in sourdough." after a
question about bread). Everything downstream that compares a fact with the
words of a chunk — the attribution of a packed call's facts to its chunks,
the dedupe of saved facts, reduce's subjects, the benchmarks' recall — has to
survive that, and against the verbatim fake it never has to.

:class:`Rewording` rewrites the rules' answer to one extraction request, kind
by kind, each at its own rate, deterministically for a seed and a transcript
(calls run concurrently and in any order, so nothing depends on the order
requests arrive in). The facts of a packed call are found part by part (each
conversation excerpt under its ``System: new conversation`` header), so the
rewriting knows which part each fact came from (:meth:`Rewording.facts`):
merges join facts of different parts, as a model's do, and when the headers
give the parts ids (``[c2]``) every fact names its sources the way a model
asked for them would.

Usage::

    with FakeAnthropicServer(reword=Rewording(seed=3, summary=0.5)) as fake: ...
    fake.reword = Rewording()  # on for the next requests; None turns it off
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Any, Final, cast

from jobs.domain import rules
from jobs.domain.facts import DateFact, Decision, Item, Project, normalise, sentence, text_of
from jobs.domain.transcript import turns

#: The kinds of rewording, each with its own rate (see :class:`Rewording`).
KINDS: Final = ("third_person", "summary", "iso_date", "merge", "invent", "stray_source")


@dataclass(frozen=True, slots=True)
class Rewording:
    """Rates (0 to 1) at which each kind of rewording happens, and the seed.

    - ``third_person``: a fact is written about the user ("I really prefer X"
      → "Prefers X", "my" → "their");
    - ``summary``: a fact is cut to its gist, a few words (a project loses its
      details, a decision its reason);
    - ``iso_date``: the dates in a fact become ISO ("June 14, 2019" →
      "2019-06-14", "March 2022" → "2022-03");
    - ``merge``: a fact is merged into one sentence with another fact of the
      same category in the same call, often from another conversation;
    - ``invent``: a conversation excerpt gets a fact nobody stated, inferred
      from its topic ("Is interested in <its most frequent word>.");
    - ``stray_source``: a cited fact names an id that is not in the call.

    ``cite``: facts name the ids of the parts they came from whenever the
    parts' headers carry ids (a model asked for them gives them).
    """

    seed: int = 0
    third_person: float = 1.0
    summary: float = 0.3
    iso_date: float = 1.0
    merge: float = 0.15
    invent: float = 0.0
    stray_source: float = 0.0
    cite: bool = True

    def __post_init__(self) -> None:
        for kind in KINDS:
            rate = getattr(self, kind)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"rate {kind}={rate} is not between 0 and 1")

    def with_rates(self, **rates: float) -> Rewording:
        """This rewording with some rates changed."""
        unknown = set(rates) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown rewording kinds: {sorted(unknown)}")
        return replace(self, **cast("dict[str, Any]", rates))

    def rates(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in KINDS}

    # ------------------------------------------------------------------ answers

    def extract(self, transcript: str) -> dict[str, Any]:
        """The ``record_facts`` input a model would send for ``transcript``."""
        parts = split_parts(transcript)
        cite = self.cite and bool(parts) and all(p.ident for p in parts)
        out: dict[str, list[Any]] = {
            "preferences": [],
            "projects": [],
            "dates": [],
            "beliefs": [],
            "decisions": [],
        }
        for fact in self.facts(transcript):
            if not cite:
                out[fact.category].append(_plain(fact.item))
                continue
            ids = [parts[i].ident for i in sorted(fact.parts)]
            if fact.stray:
                ids = [f"c{len(parts) + 7}"]
            fields_ = {"text": fact.item} if isinstance(fact.item, str) else fact.item.fields()
            out[fact.category].append({**fields_, "sources": ids})
        return out

    def facts(self, transcript: str) -> list[Reworded]:
        """The reworded facts of ``transcript``, each with the parts it came from.

        The parts are indices into :func:`split_parts` (one part, index 0, for
        a transcript without headers): the ground truth tests check the
        pipeline's attribution against.
        """
        rng = random.Random(f"{self.seed}:{hashlib.sha256(transcript.encode()).hexdigest()}")
        found: list[Reworded] = []
        for index, part in enumerate(split_parts(transcript)):
            for category, item in rules.extract(part.text).items():
                reworded = self._reword(rng, item)
                found.append(Reworded(category.key, reworded, {index}, [text_of(item)]))
            if rng.random() < self.invent and (topic := _topic(part.text)):
                found.append(Reworded("preferences", f"Is interested in {topic}.", {index}, []))
        facts = self._merged(rng, _deduped(found))
        for fact in facts:
            fact.stray = rng.random() < self.stray_source
        return facts

    def _reword(self, rng: random.Random, item: Item) -> Item:
        # Every draw is made whatever the outcome: one fact's kinds do not
        # shift the random sequence of the next fact.
        third = rng.random() < self.third_person
        short = rng.random() < self.summary
        iso = rng.random() < self.iso_date

        def words(text: str, limit: int, *, subject: bool = False) -> str:
            if third:
                text = third_person(text) if subject else pronouns(text)
            if iso:
                text = iso_dates(text)
            return gist(text, limit) if short else text

        if isinstance(item, str):
            return sentence(words(item, 6, subject=True))
        if isinstance(item, Project):
            description = words(item.description, 5)
            details = "" if short else words(item.details, 12)
            return Project(name=item.name, description=_capital(description), details=details)
        if isinstance(item, DateFact):
            when = iso_dates(item.date) if iso else item.date
            return DateFact(event=_capital(words(item.event, 4)), date=when)
        context = "" if short else words(item.context, 12)
        return Decision(
            decision=sentence(words(item.decision, 8, subject=True)), context=_capital(context)
        )

    def _merged(self, rng: random.Random, facts: list[Reworded]) -> list[Reworded]:
        """Some facts merged with a later fact of their category (sentences and decisions)."""
        out: list[Reworded] = []
        taken: set[int] = set()
        for i, fact in enumerate(facts):
            if i in taken:
                continue
            taken.add(i)
            partners = [
                j
                for j in range(i + 1, len(facts))
                if j not in taken
                and facts[j].category == fact.category
                and fact.category in _MERGED_CATEGORIES
            ]
            if partners and rng.random() < self.merge:
                j = rng.choice(partners)
                taken.add(j)
                other = facts[j]
                fact = Reworded(
                    fact.category,
                    merge_items(fact.item, other.item),
                    fact.parts | other.parts,
                    fact.said + other.said,
                )
            out.append(fact)
        return out


@dataclass(slots=True)
class Reworded:
    """One fact of the answer, with the parts of the call it came from."""

    category: str
    item: Item
    parts: set[int]
    #: What the rules found, as the user said it, before it was reworded
    #: (several for a merged fact; none for an invented one).
    said: list[str]
    #: Cited with an id that is not in the call.
    stray: bool = False


@dataclass(frozen=True, slots=True)
class Part:
    """One conversation excerpt of an extraction transcript."""

    #: The id its header gives (``c2``), if any.
    ident: str | None
    text: str


_HEADER: Final = re.compile(r"^System: new conversation\b(?P<rest>[^\n]*)$", re.M)
_IDENT: Final = re.compile(r"\[([A-Za-z0-9_-]{1,16})\]")


def split_parts(transcript: str) -> list[Part]:
    """The conversation excerpts of a transcript, each under its own header.

    A transcript without headers (one chunk per call) is one part; text
    before the first header belongs to none.
    """
    heads = list(_HEADER.finditer(transcript))
    if not heads:
        return [Part(None, transcript)]
    out = []
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(transcript)
        ident = _IDENT.search(head.group("rest"))
        out.append(Part(ident.group(1) if ident else None, transcript[head.end() : end]))
    return out


def _deduped(facts: list[Reworded]) -> list[Reworded]:
    """One fact per wording: a model states a fact once, whichever parts said it."""
    by_text: dict[tuple[str, str], Reworded] = {}
    for fact in facts:
        key = (fact.category, normalise(text_of(fact.item)))
        if key in by_text:
            by_text[key].parts |= fact.parts
            by_text[key].said += [s for s in fact.said if s not in by_text[key].said]
        else:
            by_text[key] = Reworded(fact.category, fact.item, set(fact.parts), list(fact.said))
    return list(by_text.values())


def _plain(item: Item) -> Any:
    return item if isinstance(item, str) else item.fields()


# --------------------------------------------------------------------------- wording

#: Adverbs a model drops when it restates a fact ("I really prefer" → "Prefers").
_FILLER_ADVERBS: Final = rules.wordset(
    "really just actually honestly personally totally definitely genuinely kinda very much "
    "absolutely"
)
#: Words after the subject that are not the verb ("I strongly believe").
_KEPT_ADVERBS: Final = rules.wordset(
    "strongly firmly truly deeply always never still also usually mostly generally mainly "
    "typically normally now currently recently finally already officially"
)
_UNCHANGED_VERBS: Final = rules.wordset(
    "can can't cannot could will would should must might may was were had did got went made "
    "built chose began left quit ran wrote took grew found began sold bought spent kept met "
    "became brought thought felt told"
)
_IRREGULAR: Final = {"have": "has", "do": "does", "go": "goes", "am": "is", "are": "is"}
_CONTRACTIONS: Final = {
    "i'm": "is",
    "i've": "has",
    "i'd": "would",
    "i'll": "will",
    "we're": "are",
    "we've": "have",
    "we'd": "would",
    "we'll": "will",
    "don't": "doesn't",
}
_PRONOUNS: Final = (
    (re.compile(r"\bI'm\b"), "they're"),
    (re.compile(r"\bI've\b"), "they've"),
    (re.compile(r"\bI'd\b"), "they'd"),
    (re.compile(r"\bI'll\b"), "they'll"),
    (re.compile(r"\bI\b"), "they"),
    (re.compile(r"\b[Mm]y\b"), "their"),
    (re.compile(r"\b[Oo]ur\b"), "their"),
    (re.compile(r"\bme\b"), "them"),
    (re.compile(r"\bus\b"), "them"),
    (re.compile(r"\bwe\b"), "they"),
    (re.compile(r"\bmyself\b"), "themselves"),
    (re.compile(r"\bmine\b"), "theirs"),
)


def pronouns(text: str) -> str:
    """First-person pronouns made the user's ("my partner" → "their partner")."""
    for pattern, replacement in _PRONOUNS:
        text = pattern.sub(replacement, text)
    return text


def third_person(text: str) -> str:
    """A first-person statement as a model writes it about the user.

    "I really prefer X." → "Prefers X."; "I'm building X" → "Is building X";
    "We decided to X" → "Decided to X"; "My favourite X is Y" → "Favourite X
    is Y"; other pronouns become the user's.
    """
    words = text.strip().split(" ")
    if not words or not words[0]:
        return text
    head = words[0].casefold()
    rest = words[1:]
    if head in _CONTRACTIONS:
        lead = [_CONTRACTIONS[head]]
    elif head in ("i", "we"):
        lead = []
        while rest and rest[0].casefold() in _FILLER_ADVERBS | _KEPT_ADVERBS:
            adverb, rest = rest[0], rest[1:]
            if adverb.casefold() in _KEPT_ADVERBS:
                lead.append(adverb)
        if rest and rest[0].casefold() == "do" and len(rest) > 1 and rest[1].casefold() == "not":
            rest = ["doesn't", *rest[2:]]
        elif rest:
            rest = [conjugate(rest[0]), *rest[1:]]
    elif head in ("my", "our"):
        lead = []
    else:
        return pronouns(text)
    return _capital(pronouns(" ".join([*lead, *rest])))


def conjugate(verb: str) -> str:
    """The third-person singular of a present-tense verb (others unchanged)."""
    low = verb.casefold()
    if low in _CONTRACTIONS:
        return _CONTRACTIONS[low]
    if low in _IRREGULAR:
        return _IRREGULAR[low]
    if low in _UNCHANGED_VERBS or low.endswith(("ed", "'t")) or not low.isalpha():
        return verb
    if low.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if len(low) > 2 and low.endswith("y") and low[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


#: Where the gist of a statement ends: its first clause.
_CLAUSE: Final = re.compile(
    r",\s|;\s|\s[\u2014\u2013-]\s|:\s|\s(?:because|since|so\s+that|which|who|as\s+of|after)\s", re.I
)
_DANGLING: Final = rules.wordset(
    "a an the of with to in on for and or their is are at by from that written using last next "
    "this every some"
)
_ARTICLE: Final = re.compile(r"^(?:a|an|the)\s+", re.I)


def gist(text: str, limit: int) -> str:
    """``text`` cut to its first clause and at most ``limit`` words, without a dangling tail."""
    body = text.strip().rstrip(".!?")
    cut = _CLAUSE.search(body)
    if cut is not None and cut.start() > 0:
        body = body[: cut.start()]
    words = [w for w in _ARTICLE.sub("", body).split() if w.casefold() not in _KEPT_ADVERBS]
    words = words[:limit]
    while len(words) > 1 and words[-1].casefold() in _DANGLING:
        words.pop()
    return _capital(" ".join(words))


_MONTH_NUMBERS: Final = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}
_MONTH: Final = "(?:" + "|".join(sorted(_MONTH_NUMBERS, key=len, reverse=True)) + r")\.?"
_DAY: Final = r"\d{1,2}(?:st|nd|rd|th)?"
_DATES: Final = re.compile(
    rf"\b(?:(?P<m1>{_MONTH})\s+(?P<d1>{_DAY}),?\s+(?P<y1>\d{{4}})"
    rf"|(?P<d2>{_DAY})\s+(?:of\s+)?(?P<m2>{_MONTH}),?\s+(?P<y2>\d{{4}})"
    rf"|(?P<m3>{_MONTH}),?\s+(?P<y3>\d{{4}}))\b",
    re.I,
)


def iso_dates(text: str) -> str:
    """Dates written with a month's name, in ISO form ("March 2022" → "2022-03")."""

    def iso(m: re.Match[str]) -> str:
        if m.group("y3"):
            return f"{m.group('y3')}-{_MONTH_NUMBERS[m.group('m3').rstrip('.').casefold()]:02d}"
        return rules.parse_date(m.group(0)) or m.group(0)

    return _DATES.sub(iso, text)


_MERGED_CATEGORIES: Final = frozenset({"preferences", "beliefs", "decisions"})


def merge_items(first: Item, second: Item) -> Item:
    """Two facts of a category in one: "Prefers X." + "Prefers Y." → "Prefers X and Y."."""
    if isinstance(first, Decision) and isinstance(second, Decision):
        context = "; ".join(c for c in (first.context, second.context) if c)
        return Decision(decision=merge_sentences(first.decision, second.decision), context=context)
    return merge_sentences(text_of(first), text_of(second))


def merge_sentences(first: str, second: str) -> str:
    a, b = first.strip().rstrip(".!"), second.strip().rstrip(".!")
    head_a, _, rest_a = a.partition(" ")
    head_b, _, rest_b = b.partition(" ")
    if head_a.casefold() == head_b.casefold() and rest_b:
        return sentence(f"{head_a} {rest_a} and {rest_b}")
    return sentence(f"{a}, and {b[:1].lower()}{b[1:]}")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------- inventions

_TOPIC_WORD: Final = re.compile(r"[^\W\d_]{6,}")
_NOT_TOPICS: Final = rules.wordset(
    "really should would could please thanks something anything because however before "
    "after there these those about which where while without within"
)


def _topic(text: str) -> str | None:
    """The most frequent long word the user wrote: what a model over-reads as an interest."""
    counts: Counter[str] = Counter()
    for speaker, said in turns(text):
        if speaker == "user":
            counts.update(w for w in _TOPIC_WORD.findall(said.casefold()) if w not in _NOT_TOPICS)
    if not counts:
        return None
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


__all__ = [
    "KINDS",
    "Part",
    "Reworded",
    "Rewording",
    "conjugate",
    "gist",
    "iso_dates",
    "merge_items",
    "merge_sentences",
    "pronouns",
    "split_parts",
    "third_person",
]
