"""The fact rules: durable facts from the user's own words, without a model.

Only the user's own words count (``User:``, ``Saved memory:`` and
``Custom instructions:`` turns; never ``Assistant:``). Each of their
sentences that is a first-person statement of a durable fact ("I really
prefer X", "I'm building X, a ...", "My X is on <date>", "I strongly believe
X", "We decided to X because Y", "I work as X") becomes one fact; the rules
are general patterns of such statements, not lists of topics. The fact keeps
the user's own sentence (trimmed to start at its subject) so that it reads
naturally and can be compared with what was said. Questions, hypotheticals
and reported speech are skipped: a memory must hold what the user said about
themselves. Saved memories and custom instructions are facts by construction:
every sentence of them counts (:func:`saved_facts`).

Used by the ``offline`` provider, by the chunk stage to file saved memories
and custom instructions, and by the test suite's fake model. Everything here
is pure computation on strings with precompiled patterns: the rules run on
every chunk of exports of 90 MB and more, so they only look closely at the
few places where a subject ("I", "we", "my") stands.
"""

from __future__ import annotations

import bisect
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final, Literal, TypeVar

from jobs.domain.facts import DateFact, Decision, Facts, Project, normalise
from jobs.domain.transcript import sentence_around, sentence_spans, turn_spans

#: A fact longer than this is a run-on, not "one clear sentence": it is cut at
#: a clause boundary, or dropped when it has none.
MAX_FACT_CHARS: Final = 300

V = TypeVar("V")
Source = Literal["user", "memory", "instructions"]
Category = Literal["preferences", "projects", "dates", "beliefs", "decisions", "background"]


def wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


I = re.IGNORECASE  # noqa: E741 - the one flag almost every pattern below uses

# --------------------------------------------------------------------------- saved facts

#: A fenced code block (closed or running to the end of the text).
_CODE_BLOCK: Final = re.compile(r"^[ \t]*```.*?(?:^[ \t]*```[^\n]*$|\Z)", re.M | re.S)

#: A leading label inside a memory or instruction ("User said:", "About me:").
_LABEL: Final = re.compile(
    r"^(?:(?:the\s+)?user\s+(?:said|says|mentioned|mentions|noted|notes|stated|states|shared"
    r"|shares|explained|explains|wrote|told\s+me|told\s+you)(?:\s+that)?\s*[:,]?\s*"
    r"|remember(?:\s+that)?\s*[:,]?\s*|[A-Za-z][\w' ]{0,30}:\s+)",
    I,
)
#: Saved memories often drop their subject ("Prefers short answers.").
_SUBJECTLESS: Final = re.compile(
    r"^(?:prefers|likes|loves|enjoys|hates|dislikes|uses|is|has|works|lives|believes|thinks"
    r"|values|cares|decided|chose|plans|owns|runs|started|built|was|wants)\b",
    I,
)


# --------------------------------------------------------------------------- fact rules

ADVERBS: Final = (
    r"really|strongly|definitely|generally|usually|mostly|much|just|actually|personally"
    r"|always|still|totally|absolutely|genuinely|honestly|also|very\s+much|kind\s+of|kinda"
    r"|tend\s+to|never|only|mainly|primarily|exclusively|typically|normally|do|does|don't"
    r"|do\s+not|doesn't|does\s+not"
)
_SUBJ_I: Final = r"(?P<subj>\bI|\b(?:the\s+)?user)"
_BE: Final = r"(?:'?m|\s+am|'s|\s+is)"

_MONTHS: Final[dict[str, int]] = {
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
_MONTH: Final = "(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\b\.?"
_DATE_BODY: Final = (
    rf"(?P<iso>(?P<iy>\d{{4}})-(?P<im>\d{{1,2}})-(?P<id>\d{{1,2}}))"
    rf"|(?P<slash>(?P<sa>\d{{1,2}})[/.](?P<sb>\d{{1,2}})[/.](?P<sy>\d{{4}}))"
    rf"|(?P<mdy>(?P<m1>{_MONTH})\s+(?P<d1>\d{{1,2}})(?!\d)(?:st|nd|rd|th)?(?:,?\s+(?P<y1>\d{{4}}))?)"
    rf"|(?P<dmy>(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<m2>{_MONTH})(?:,?\s+(?P<y2>\d{{4}}))?)"
    rf"|(?P<my>(?P<m3>{_MONTH}),?\s+(?P<y3>\d{{4}}))"
    r"|(?P<rel>today|tomorrow|yesterday)"
    r"|(?P<year>(?:19|20)\d{2})"
)
_DATE: Final = re.compile(rf"(?:{_DATE_BODY})(?!\w)", I)

#: "My daughter's birthday is on March 04, 2021."
_DATE_MINE: Final = re.compile(
    r"(?P<subj>\b(?:my|our|(?:the\s+)?user's))\s+(?P<event>[^,;:]{2,60}?)\s+"
    r"(?:is|was|falls|fell|will\s+be|'s|are|were)\s+"
    r"(?:(?:scheduled|set|planned|due|coming\s+up)\s+)?(?:(?:on|for|in|around)\s+)?(?:the\s+)?"
    rf"(?P<date>{_DATE_BODY})(?!\w)",
    I,
)
#: "I got married on June 3, 2015." / "I started at Acme in March 2022."
_DATE_DID: Final = re.compile(
    rf"{_SUBJ_I}\s+(?P<event>(?:was\s+born|got\s+(?:married|engaged|divorced|hired|promoted)"
    r"|(?:started|joined|left|quit|graduated|retired|moved|began|launched|shipped|founded"
    r"|finished|completed)\b[^,;:]{0,50}?"
    r"|(?:am|'m|are|'re|will\s+be|is)\s+(?:getting\s+married|moving|starting|leaving|graduating"
    r"|retiring|launching|due)\b[^,;:]{0,50}?))"
    rf"\s+(?:on|in)\s+(?:the\s+)?(?P<date>{_DATE_BODY})(?!\w)",
    I,
)

_PREF_VERB: Final = re.compile(
    rf"{_SUBJ_I}\s+(?P<adv>(?:(?:{ADVERBS})\s+)*)"
    r"(?P<verb>prefer|like|love|enjoy|adore|hate|dislike|detest|loathe|can't\s+stand"
    r"|cannot\s+stand|use|favou?r|swear\s+by|rely\s+on|avoid)(?:s|es)?\s+(?P<obj>.+)",
    I,
)
_PREF_FAN: Final = re.compile(
    rf"{_SUBJ_I}{_BE}\s+(?:(?:a|an)\s+)?(?:(?:huge|big|massive|real|total|long-?time)\s+)?"
    r"(?:fan\s+of|really\s+into|into|obsessed\s+with|passionate\s+about)\s+(?P<obj>.+)",
    I,
)
_PREF_FAVOURITE: Final = re.compile(
    r"(?P<subj>\b(?:my|(?:the\s+)?user's))\s+(?:(?:all-time|absolute|current)\s+)?"
    r"(?:favou?rite|preferred|go-to)\s+(?P<obj>.+)",
    I,
)
_PREF_DIET: Final = re.compile(
    rf"{_SUBJ_I}{_BE}\s+(?:(?:a|an)\s+)?(?P<obj>(?:vegan|vegetarian|pescatarian"
    r"|lactose[- ]intolerant|gluten[- ]free|allergic\s+to|morning\s+person|night\s+owl"
    r"|teetotal|sober)\b.*)",
    I,
)

_BELIEF_VERB: Final = re.compile(
    rf"{_SUBJ_I}\s+(?P<adv>(?:(?:strongly|firmly|really|truly|genuinely|deeply|honestly"
    r"|sincerely|fundamentally|do|does|still|always|also|personally|don't|do\s+not|doesn't)\s+)*)"
    r"(?P<verb>believe|think|feel)s?\s+(?P<obj>.+)",
    I,
)
_BELIEF_VALUE: Final = re.compile(
    rf"{_SUBJ_I}(?:\s+(?:(?:really|deeply|strongly|also|truly)\s+)*"
    r"(?:values?\s|cares?\s+(?:(?:deeply|a\s+lot|most|so\s+much)\s+)?about\s|stands?\s+for\s)"
    rf"|{_BE}\s+(?:convinced\s+(?:that\s+)?|a\s+(?:firm|strong|big|true)\s+believer\s+in\s))"
    r"(?P<obj>.+)",
    I,
)
#: "Privacy matters to me": the subject is what the user values. Searched for
#: apart from the anchored rules, as its subject can be any noun phrase.
_BELIEF_MATTERS: Final = re.compile(
    r"(?P<subj>\b[^,;:]{3,80}?)\s+(?:really\s+|deeply\s+)?(?:matters?|is\s+(?:really\s+|very\s+"
    r"|extremely\s+)?important|are\s+(?:really\s+|very\s+)?important)\s+to\s+(?:me|the\s+user)\b"
    r"(?P<obj>.*)",
    I,
)
_BELIEF_OPINION: Final = re.compile(
    r"(?P<subj>\bin\s+my)\s+(?:honest\s+|humble\s+)?(?:opinion|view)\s*,?\s+(?P<obj>.+)", I
)
_BELIEF_PRINCIPLE: Final = re.compile(
    r"(?P<subj>\bmy)\s+(?:core\s+|guiding\s+)?(?:values?|principles?|philosophy|motto|mantra)"
    r"\s+(?:is|are|include|includes)\s+(?P<obj>.+)",
    I,
)
#: "think"/"feel" count as a conviction only when said strongly or about how
#: things ought to be; otherwise they are everyday hedging ("I think it broke").
_STRONG_ADVERB: Final = re.compile(
    r"\b(?:strongly|firmly|truly|genuinely|deeply|fundamentally|sincerely)\b", I
)
_NORMATIVE: Final = re.compile(
    r"\b(?:should|shouldn't|must|ought|deserves?|matters?|important|essential|beats?"
    r"|better\s+than|worse\s+than|overrated|underrated|the\s+default|is\s+for|are\s+for"
    r"|everyone|everybody|people|nobody|no\s+one)\b",
    I,
)
#: "I think this/it/my ..." is about the matter at hand, not a conviction.
_PARTICULAR: Final = re.compile(r"\b(?:this|it|it's|my|here|there|that\s+one)\b", I)

_DECISION: Final = re.compile(
    r"(?P<subj>\b(?:I|we|(?:my|our|the)\s+(?:team|company|startup|family|co-?founders?|partner"
    r"|wife|husband|manager|boss)(?:\s+and\s+I)?|(?:the\s+)?user))"
    r"(?:'ve|'d|\s+have|\s+had|\s+has)?\s+(?:(?:finally|just|recently|already|eventually"
    r"|officially|ultimately|now|also|collectively|jointly|together|firmly)\s+)*"
    r"(?:decided|chose|opted|agreed|resolved|committed|settled|elected|made\s+the\s+"
    r"(?:call|decision))\s+(?P<obj>(?:to|that|on|against|not\s+to|for)\b.+)",
    I,
)
_SWITCH: Final = re.compile(
    r"(?P<subj>\b(?:I|we|(?:the\s+)?user))(?:'ve|\s+have|\s+has|'re|\s+are|'m|\s+am|\s+is)?\s+"
    r"(?:(?:finally|just|recently|already|now|officially)\s+)*"
    r"(?:(?:switched|switching|migrated|migrating)\s+(?:(?:from|off)\s+.{1,60}?\s+)?"
    r"(?:over\s+)?to\s|(?:went|going)\s+with\s"
    r"|(?:moved|moving)\s+(?:(?:from|off)\s+.{1,60}?\s+)?(?:over\s+)?to\s+(?=[A-Z]))(?P<obj>.+)",
    I,
)
#: The reason part of a decision ("... because the joins got painful").
_REASON: Final = re.compile(
    r"\s*[,;]?\s+(?=(?:because|since|given\s+that|due\s+to|as\s+a\s+result\s+of|so\s+that"
    r"|in\s+order\s+to|after)\b)",
    I,
)

_PROJECT_DOING: Final = re.compile(
    r"(?P<subj>\b(?:I|we|(?:the\s+)?user))"
    r"(?:'?m|\s+am|'re|\s+are|'s|\s+is|'ve\s+been|\s+have\s+been|\s+has\s+been)\s+"
    r"(?:(?:currently|now|still|also|actively|slowly|finally|just|busy|secretly|quietly)\s+)*"
    r"(?P<verb>building|working\s+on|writing|developing|making|creating|designing|coding"
    r"|launching|running|maintaining|prototyping|starting|bootstrapping|hacking\s+on|shipping)"
    r"\s+(?P<obj>.+)",
    I,
)
_PROJECT_DID: Final = re.compile(
    r"(?P<subj>\b(?:I|we|(?:the\s+)?user))(?:'ve|\s+have|\s+has)?\s+"
    r"(?:(?:recently|just|already|also|finally)\s+)*"
    r"(?P<verb>built|launched|founded|co-?founded|created|started|shipped|released|published)"
    r"\s+(?P<obj>.+)",
    I,
)
_PROJECT_ROLE: Final = re.compile(
    rf"{_SUBJ_I}{_BE}\s+(?:the\s+|a\s+)?(?:founder|co-?founder|creator|author|maintainer"
    r"|lead\s+developer|developer|owner)\s+of\s+(?P<obj>.+)",
    I,
)
_PROJECT_MINE: Final = re.compile(
    r"(?P<subj>\b(?:my|our|(?:the\s+)?user's))\s+(?P<kind>(?:(?:side|pet|personal|current|new"
    r"|main|hobby|open[- ]source|latest|own)\s+)*(?:project|app|startup|company|business|product"
    r"|game|library|tool|website|site|book|novel|thesis|podcast|newsletter|blog|saas|plugin"
    r"|extension|channel))\s*,?\s+(?:is\s+)?(?P<called>(?:called|named)\s+)?(?P<obj>.+)",
    I,
)

_BACKGROUND_A: Final = re.compile(
    rf"{_SUBJ_I}{_BE}\s+(?P<obj>(?:a|an)\s+(?!(?:bit|little|lot|tad|few|couple|huge\s+fan"
    r"|big\s+fan|fan|question|quick|sec|second|moment|minute)\b).+)",
    I,
)
_BACKGROUND_LIFE: Final = re.compile(
    rf"{_SUBJ_I}(?:\s+(?:(?:currently|now|still|also)\s+)*"
    r"(?:(?:live|lives|grew\s+up)\s+(?:in|near|outside|abroad|on)\b"
    r"|(?:work|works|have\s+worked|'ve\s+worked)\s+(?:as|at|for|in|remotely|from|part-time"
    r"|full-time|freelance)\b"
    r"|(?:come|comes)\s+from\b|(?:studied|study|studies|speak|speaks|teach|teaches)\b)"
    rf"|{_BE}\s+(?:(?:currently|now|still|also|originally)\s+)*"
    r"(?:based|located|from|employed|married|retired|studying|learning)\b)"
    r"\s*(?P<obj>.*)",
    I,
)
_BACKGROUND_MINE: Final = re.compile(
    r"(?P<subj>\b(?:my|(?:the\s+)?user's))\s+(?:name|job|role|title|job\s+title|profession"
    r"|occupation|(?:wife|husband|partner|spouse|daughter|son|kid|child|dog|cat|mom|mother|dad"
    r"|father|sister|brother|boss)(?:'s\s+name)?)(?:\s+is|\s+are|'s)\s+(?P<obj>.+)",
    I,
)
_BACKGROUND_HAVE: Final = re.compile(
    rf"{_SUBJ_I}\s+(?:have|has)\s+(?P<obj>(?:a|an|one|two|three|four|five|six|\d+)\s+"
    r"(?:(?:young|little|small|old|teenage|adult|grown)\s+)?(?:kids?|children|child|sons?"
    r"|daughters?|dogs?|cats?|pets?|years?\s+of\s+experience|siblings?|brothers?|sisters?)\b.*)",
    I,
)
_BACKGROUND_AGE: Final = re.compile(
    rf"{_SUBJ_I}{_BE}\s+(?P<obj>\d{{1,3}}\s+(?:years?\s+old|yo)\b.*)", I
)

#: What may not follow a verb for the statement to be a fact about the user
#: ("I like it", "I think so", "I love your answer", "I use this to ...").
_VAGUE_OBJECT: Final = re.compile(
    r"(?:that\s+)?(?:it|it's|its|this|that(?!\s+\w)|these|those|them|him|her|you|your|yours"
    r"|what|how"
    r"|so|too|as|about|if|whether|something|anything|nothing|stuff|one|i|i'm|i'll|i'd|i've"
    r"|maybe|there|here|to\s+know|to\s+ask)\b",
    I,
)
#: Before the subject: the statement is hypothetical, a question or someone else's.
_HEDGE_BEFORE: Final = re.compile(
    r"\b(?:if|unless|whether|suppose|supposing|imagine|pretend|hypothetically|role-?play"
    r"|as\s+though|as\s+if)\b"
    r"|\b(?:should|could|would|can|do|does|did|will|shall|might|may|why|how|what|when|where"
    r"|said|says|say|wrote|writes|asked|asks|told\s+\w+|tell\s+\w+|like|that\s+you)"
    r"\s*[:,]?\s*[\"'\u201c]?\s*$",
    I,
)
#: Where an over-long fact may be cut and still be a sentence.
_SECOND_CLAUSE: Final = re.compile(
    r"(?:,\s*|\s+)(?:and|but|so|and\s+so|but\s+now)\s+(?:I|I'm|Im|I've|I'd|I'll|my|we)\b", I
)
_CLAUSE_CUT: Final = re.compile(r";|\s[\u2014\u2013-]\s|,\s+(?:but|and|so|which|while)\b")

_PROJECT_NOUNS: Final = wordset(
    "app apps application project startup company business product game library framework "
    "tool toolkit website site platform service saas book novel thesis dissertation course "
    "podcast newsletter blog plugin extension bot chatbot engine compiler cli api sdk channel "
    "album marketplace dashboard agency shop store nonprofit prototype mvp crm tracker"
)
#: Verbs whose object is a project whatever it is called ("building a CRM").
_MAKING: Final = wordset(
    "building developing creating designing prototyping bootstrapping launching running "
    "maintaining built founded "
    "co-founded cofounded created launched shipped released founder"
)
#: What one builds or writes in an afternoon: a task, not a project.
_THROWAWAY: Final = wordset(
    "email e-mail message letter reply response answer prompt question function functions method "
    "class query regex script component components page form list table chart graph "
    "presentation slide slides document doc report essay post tweet comment summary outline "
    "schedule plan routine workout meal recipe lesson resume cv spreadsheet test tests loop "
    "account file files folder branch ticket issue password backup profile copy note reminder "
    "event meeting invite link query queries job"
)
#: Capitalised words that start an object but are not a project's name.
_NOT_A_NAME: Final = wordset(
    "the a an this that it my our some i python javascript typescript rust go java ruby php "
    "swift kotlin sql html css c c++ c# react vue node"
)
_NAME: Final = re.compile(
    r"(?P<name>[A-Z0-9][\w.+#&'-]*(?:\s+[A-Z0-9][\w.+#&'-]*){0,4})(?P<rest>.*)"
)
_CALLED: Final = re.compile(
    r"(?P<pre>(?:a|an|the|my|our|this|some)\b.{0,60}?)\s*,?\s+(?:called|named|titled)\s+(?P<after>.+)",
    I,
)
_QUOTED: Final = re.compile(r"[\"\u201c](?P<name>[^\"\u201d]{1,60})[\"\u201d](?P<rest>.*)")
#: What may follow a project's name (otherwise the capitalised word was a modifier).
_AFTER_NAME: Final = re.compile(
    r"(?:\s*$|\s*[,;:(\u2014\u2013-]|\s+(?:that|which|for|with|using|in|on|at|to|where|who"
    r"|because|is|built|written|made|from|and|as|now|since|about)\b)",
    I,
)
_HEAD_END: Final = re.compile(
    r"\s*[,;:(\u2014\u2013]|\s+-\s|\s+(?:that|which|who|where|to|for|with|using|in|on|at|from"
    r"|because|so|and|but|written|built|made|based)\b",
    I,
)
_LEADING_DETERMINERS: Final = re.compile(r"^(?:(?:a|an|the|my|our|this|some)\s+)+", I)
_LEADING_RELATIVE: Final = re.compile(r"^[\s,;:\u2014\u2013-]*(?:(?:which|that)\s+(?:is\s+)?)?")
#: "Orchard, which tracks plants" / "Orchard and it tracks plants": a clause about the name.
_RELATIVE_TO_NAME: Final = re.compile(
    r"[\s,;:\u2014\u2013-]*(?:(?P<rel>which|that|and\s+it|it)\s+(?P<is>is\s+)?)?", I
)
WS: Final = re.compile(r"\s+")
_TRAILING: Final = re.compile(r"[\s.!,;:]+$")

_PREFERENCE_WORDS: Final = re.compile(
    r"\b(?:prefers?|likes?|loves?|enjoys?|hates?|dislikes?|favou?rite|wants?|avoids?)\b", I
)
_BELIEF_WORDS: Final = re.compile(r"\b(?:believes?|values?|thinks?|convinced|principles?)\b", I)


# --------------------------------------------------------------------------- dates


def parse_date(text: str, today: date | None = None) -> str | None:
    """The ISO date (``YYYY-MM-DD``) a date phrase means, or ``None``.

    ``None`` for partial dates ("March 2021", "March 4") and ambiguous ones
    ("03/04/2021"): the caller keeps those as written rather than guessing.
    ``today`` resolves "today", "tomorrow" and "yesterday".
    """
    m = _DATE.search(text)
    return _iso_from(m, today) if m else None


def _iso_from(m: re.Match[str], today: date | None) -> str | None:
    year: str | None
    if m.group("iso"):
        year, month, day = m.group("iy"), int(m.group("im")), int(m.group("id"))
    elif m.group("slash"):
        a, b = int(m.group("sa")), int(m.group("sb"))
        if a > 12 >= b:
            day, month = a, b
        elif b > 12 >= a:
            month, day = a, b
        else:
            return None
        year = m.group("sy")
    elif m.group("mdy"):
        year, month, day = m.group("y1"), _month(m.group("m1")), int(m.group("d1"))
    elif m.group("dmy"):
        year, month, day = m.group("y2"), _month(m.group("m2")), int(m.group("d2"))
    elif m.group("rel") and today is not None:
        shift = {"today": 0, "tomorrow": 1, "yesterday": -1}[m.group("rel").casefold()]
        return (today + timedelta(days=shift)).isoformat()
    else:
        return None
    if year is None:
        return None
    try:
        return date(int(year), month, day).isoformat()
    except ValueError:
        return None


def _month(name: str) -> int:
    return _MONTHS[name.rstrip(".").casefold()]


def date_sort_key(text: str) -> tuple[int, int, int, int]:
    """Chronological order for dates written in any of the accepted forms.

    Full and partial dates with a year come first, in order; month-day dates
    without a year (yearly events) next; text that is no date at all last.
    """
    m = _DATE.search(text)
    if m is None:
        return (2, 0, 0, 0)
    iso = _iso_from(m, None)
    if iso is not None:
        return (0, int(iso[:4]), int(iso[5:7]), int(iso[8:10]))
    if m.group("my"):
        return (0, int(m.group("y3")), _month(m.group("m3")), 0)
    if m.group("year"):
        return (0, int(m.group("year")), 0, 0)
    if m.group("mdy"):
        return (1, 0, _month(m.group("m1")), int(m.group("d1")))
    if m.group("dmy"):
        return (1, 0, _month(m.group("m2")), int(m.group("d2")))
    return (2, 0, 0, 0)


# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True, slots=True)
class _Found:
    """One fact found in one sentence, before it is placed in :class:`Facts`."""

    category: Category
    start: int
    value: str | Project | DateFact | Decision


class _Extractor:
    """Applies the rules to one transcript; one instance per call."""

    def __init__(self, today: date | None) -> None:
        self.today = today
        self.found: list[_Found] = []

    def saved(self, source: Source, text: str) -> None:
        """A saved memory or custom instructions: every sentence the user wrote counts.

        Code (fenced blocks, as instructions often carry examples) is not a fact.
        """
        text = _CODE_BLOCK.sub("\n", text)
        for start, end in sentence_spans(text):
            sentence = _LABEL.sub("", text[start:end], count=1).strip()
            if _SUBJECTLESS.match(sentence):
                sentence = "User " + sentence[0].lower() + sentence[1:]
            if len(sentence) < 4 or _is_question(sentence):
                continue
            fact = self.sentence(sentence, third_person=True)
            if fact is not None:
                self.found.append(fact)
            else:
                self.found.append(_verbatim(source, sentence))

    def user_turn(self, text: str, lo: int, hi: int, candidates: Iterable[tuple[int, str]]) -> None:
        """The facts of one user turn ``text[lo:hi]``, given its candidate subjects.

        Only the sentences that hold a candidate are looked at.
        """
        span: tuple[int, int] | None = None
        here: list[tuple[int, str]] = []
        for at, family in candidates:
            if span is None or at >= span[1]:
                self._sentence_at(text, span, here)
                span, here = sentence_around(text, at, lo, hi), []
            if span is not None:
                here.append((at - span[0], family))
        self._sentence_at(text, span, here)

    def _sentence_at(
        self, text: str, span: tuple[int, int] | None, candidates: list[tuple[int, str]]
    ) -> None:
        if span is None or not candidates:
            return
        sentence = text[span[0] : span[1]]
        if len(sentence) >= 4 and not _is_question(sentence):
            fact = self._first_fact(sentence, candidates, third_person=False)
            if fact is not None:
                self.found.append(fact)

    def sentence(self, sentence: str, *, third_person: bool) -> _Found | None:
        """The first (leftmost) fact the sentence states, if any."""
        return self._first_fact(sentence, _candidates(_folded(sentence)), third_person)

    def _first_fact(
        self, sentence: str, candidates: list[tuple[int, str]], third_person: bool
    ) -> _Found | None:
        """The leftmost fact among the candidate subjects of a sentence.

        The leftmost statement is the main clause ("I'm building X because I
        love Y" is a project); at the same place, the order of ``_RULES``
        breaks the tie (a date beats a background statement).
        """
        matters = None
        if " to me" in sentence or " to the user" in sentence:
            m = _BELIEF_MATTERS.search(sentence)
            text = _clip(sentence[m.start() :], m.end() - m.start()) if m is not None else None
            if m is not None and text is not None and not _vague(m.group("subj").strip()):
                matters = _Found("beliefs", m.start(), text)
        for start, family in candidates:
            if matters is not None and matters.start <= start:
                break
            for rule in _FAMILY_RULES[family]:
                m = rule.pattern.match(sentence, start)
                if m is not None and (found := self._accept(rule, m, sentence, third_person)):
                    return found
        return matters

    def _accept(
        self, rule: _Rule, m: re.Match[str], sentence: str, third_person: bool
    ) -> _Found | None:
        subj = m.group("subj")
        start = m.start("subj")
        if not third_person and is_third_person(subj):
            return None  # "the user ..." in a user's own turn is about their app's users
        if _HEDGE_BEFORE.search(sentence, 0, start):
            return None
        body = m.start("obj") if "obj" in m.re.groupindex and m.start("obj") >= 0 else m.end()
        text = _clip(sentence[start:], body - start)
        if text is None:
            return None
        # Match again on the clipped sentence, so that the fact's parts (a
        # project's description, a decision's reason) end where the fact does.
        value = rule.build(self, rule.pattern.match(text) or m, text)
        return None if value is None else _Found(rule.category, start, value)


def _is_question(sentence: str) -> bool:
    return sentence.rstrip("\"')]\u201d ").endswith("?")


def is_third_person(subject: str) -> bool:
    return subject.casefold().lstrip().startswith(("user", "the user"))


def _clip(text: str, body: int) -> str | None:
    """One clean sentence from a subject onwards, or ``None`` when it is a run-on.

    A second first-person clause after the statement's own words (from index
    ``body``), as in "I'm a teacher and I need a lesson plan", is a second
    statement, usually a request: it is cut off.
    """
    second = _SECOND_CLAUSE.search(text, body)
    if second is not None:
        text = text[: second.start()]
    text = WS.sub(" ", text).strip()
    if len(text) > MAX_FACT_CHARS:
        cut = _CLAUSE_CUT.search(text, 20)
        if cut is None or cut.start() > MAX_FACT_CHARS:
            return None
        text = text[: cut.start()]
    return _as_sentence(text)


def _as_sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!" else _TRAILING.sub("", text) + "."


def _object(m: re.Match[str]) -> str:
    return _TRAILING.sub("", m.group("obj")).strip()


def _vague(obj: str) -> bool:
    return len(obj) < 2 or _VAGUE_OBJECT.match(obj) is not None


# The build functions turn a match into a fact value, or ``None`` to reject it.


def _plain(ex: _Extractor, m: re.Match[str], text: str) -> str | None:
    return None if _vague(_object(m)) else text


def _belief(ex: _Extractor, m: re.Match[str], text: str) -> str | None:
    obj = _object(m)
    if _vague(obj):
        return None
    verb = m.group("verb").casefold()
    if verb == "believe" or _STRONG_ADVERB.search(m.group("adv")):
        return text
    return text if _NORMATIVE.search(obj) and not _PARTICULAR.search(obj) else None


def _normative(ex: _Extractor, m: re.Match[str], text: str) -> str | None:
    return text if _NORMATIVE.search(_object(m)) else None


def _decision(ex: _Extractor, m: re.Match[str], text: str) -> Decision | None:
    if _vague(_object(m)):
        return None
    reason = _REASON.search(text, m.end("subj") - m.start("subj"))
    if reason is None:
        return Decision(decision=text, context="")
    head = _as_sentence(text[: reason.start()])
    return Decision(decision=head, context=_TRAILING.sub("", text[reason.end() :]))


def _background(ex: _Extractor, m: re.Match[str], text: str) -> Decision | None:
    """Who the user is has no category of its own in the fact JSON.

    It goes to ``decisions`` with an empty context: MEMORY's "Decisions &
    Context" section is where the context of the user's life belongs, and the
    reducer keys decisions by their text, so each such fact stays distinct.
    """
    obj = _object(m)
    if obj and _VAGUE_OBJECT.match(obj):
        return None
    return Decision(decision=text, context="")


def _date_fact(ex: _Extractor, m: re.Match[str], text: str) -> DateFact | None:
    event = WS.sub(" ", m.group("event")).strip()
    if not event or _VAGUE_OBJECT.fullmatch(event):
        return None
    if event.casefold() == "was born":
        event = "Born"
    raw = _TRAILING.sub("", m.group("date"))
    day = parse_date(raw, ex.today)
    if m.group("rel") and day is None:
        return None  # "tomorrow" without a conversation date means nothing later
    return DateFact(event=event[0].upper() + event[1:], date=day or raw)


def _name_and_rest(text: str, *, called: bool) -> tuple[str, str] | None:
    """A project's name at the start of ``text``, and what follows it.

    A name is quoted, or a run of capitalised words followed by a clause or
    the end ("Nimbus Notes, a ..."); after "called" it may also start with
    "The" or be lower case up to the next clause.
    """
    quoted = _QUOTED.match(text)
    if quoted is not None:
        return quoted.group("name").strip(), quoted.group("rest")
    named = _NAME.match(text)
    if (
        named is not None
        and (called or named.group("name").split()[0].casefold() not in _NOT_A_NAME)
        and _AFTER_NAME.match(named.group("rest"))
    ):
        return named.group("name").strip(), named.group("rest")
    if called:
        end = _HEAD_END.search(text)
        return (text[: end.start()], text[end.start() :]) if end else (text, "")
    return None


def _project(ex: _Extractor, m: re.Match[str], text: str) -> Project | None:
    obj = _object(m)
    if _vague(obj):
        return None
    called = _CALLED.match(obj)
    if called is not None:
        found = _name_and_rest(called.group("after"), called=True)
        if found is not None:
            rest = _LEADING_RELATIVE.sub("", found[1]).strip()
            description = " ".join(p for p in (called.group("pre"), rest) if p)
            return Project(name=found[0], description=description, details="")
    found = _name_and_rest(obj, called=False)
    if found is not None:
        rest = _LEADING_RELATIVE.sub("", found[1]).strip()
        return Project(name=found[0], description=rest, details="")
    head = obj[: m_end.start()] if (m_end := _HEAD_END.search(obj)) else obj
    name = _LEADING_DETERMINERS.sub("", head).strip()
    words = name.casefold().split()
    if not words or len(words) > 6 or not _PROJECT_NOUNS.intersection(words):
        # "I'm writing an email", "I'm working on a bug": not a project. After
        # "building" or "founded", anything but a throwaway artefact is one.
        verb = WS.sub(" ", m.groupdict().get("verb") or "founder").casefold()
        if (
            not words
            or len(words) > 6
            or verb not in _MAKING
            or _THROWAWAY.intersection(words)
            or name == head  # no article: "running late", "building trust"
        ):
            return None
    return Project(name=name, description=obj, details="")


def _my_project(ex: _Extractor, m: re.Match[str], text: str) -> Project | None:
    """ "My side project is called Lumen", "Our startup, Basalt, builds ..." """
    found = _name_and_rest(_object(m), called=m.group("called") is not None)
    if found is None:
        return None
    name, rest = found[0].strip(" ,"), found[1]
    relative = _RELATIVE_TO_NAME.match(rest)
    rest = rest[relative.end() :].strip() if relative else rest.strip(" ,;:")
    kind = WS.sub(" ", m.group("kind")).strip().casefold()
    if not rest:
        return Project(name=name, description=kind, details="")
    joiner = " that " if relative and relative.group("rel") and not relative.group("is") else ": "
    return Project(name=name, description=f"{kind}{joiner}{rest}", details="")


@dataclass(frozen=True, slots=True)
class _Rule:
    category: Category
    pattern: re.Pattern[str]
    build: Callable[[_Extractor, re.Match[str], str], str | Project | DateFact | Decision | None]


#: Priority order at the same position: the more specific statement wins.
_RULES: Final = (
    _Rule("dates", _DATE_MINE, _date_fact),
    _Rule("dates", _DATE_DID, _date_fact),
    _Rule("decisions", _DECISION, _decision),
    _Rule("decisions", _SWITCH, _decision),
    _Rule("projects", _PROJECT_MINE, _my_project),
    _Rule("projects", _PROJECT_ROLE, _project),
    _Rule("projects", _PROJECT_DOING, _project),
    _Rule("projects", _PROJECT_DID, _project),
    _Rule("beliefs", _BELIEF_VERB, _belief),
    _Rule("beliefs", _BELIEF_VALUE, _plain),
    _Rule("beliefs", _BELIEF_PRINCIPLE, _plain),
    _Rule("beliefs", _BELIEF_OPINION, _normative),
    _Rule("preferences", _PREF_FAN, _plain),
    _Rule("preferences", _PREF_DIET, _plain),
    _Rule("preferences", _PREF_FAVOURITE, _plain),
    _Rule("preferences", _PREF_VERB, _plain),
    _Rule("background", _BACKGROUND_MINE, _background),
    _Rule("background", _BACKGROUND_HAVE, _background),
    _Rule("background", _BACKGROUND_AGE, _background),
    _Rule("background", _BACKGROUND_LIFE, _background),
    _Rule("background", _BACKGROUND_A, _background),
)
# --------------------------------------------------------------------------- dispatch
#
# Trying every rule at every word would cost far too much on exports of
# millions of words. Instead, each place where a subject ("I", "we", "my",
# "our", "the user", "in my") stands is found with plain substring searches,
# the words after it (past helping verbs and adverbs) name a family of rules,
# and only that family's rules run, only there. Most sentences (questions,
# requests, small talk) cost a few substring searches and nothing more.

#: Where a subject can stand, in the case-folded text with a space in front.
_SUBJECT_KEYS: Final = (
    " i ",
    " i'",
    " im ",
    " we ",
    " we'",
    " my ",
    " our ",
    " user",
    " the user",
    " in my ",
    " to me",
)
_SUBJECT_WORDS: Final = wordset("i i'm im i've i'd i'll we we're we've we'd we'll user")
_HELPING_WORDS: Final = wordset("am is are have has had was were will be been")
_SKIPPED_WORDS: Final = wordset(
    "really strongly definitely generally usually mostly much just actually personally always "
    "still totally absolutely genuinely honestly also very kind of kinda tend to never only "
    "mainly primarily exclusively typically normally do does don't doesn't not firmly truly "
    "deeply sincerely fundamentally currently now actively slowly finally busy secretly quietly "
    "recently already eventually officially ultimately collectively jointly together"
)
#: The word that follows the subject (and its helping verbs and adverbs), by
#: family, and the rules each family tries. A family's rules keep the
#: priority order of ``_RULES``.
_FAMILIES: Final[dict[str, tuple[str, tuple[re.Pattern[str], ...]]]] = {
    "pref": (
        "prefer prefers like likes love loves enjoy enjoys adore adores hate hates dislike "
        "dislikes detest detests loathe loathes can't cannot use uses favor favors favour "
        "favours swear swears rely relies avoid avoids",
        (_PREF_VERB,),
    ),
    "belief": ("believe believes think thinks feel feels", (_BELIEF_VERB,)),
    "value": ("value values care cares stand stands convinced", (_BELIEF_VALUE,)),
    "decide": (
        "decided chose opted agreed resolved committed settled elected made",
        (_DECISION,),
    ),
    "switch": ("switched switching migrated migrating went going", (_SWITCH,)),
    "move": ("moved moving", (_DATE_DID, _SWITCH)),
    "doing": (
        "building working writing developing making creating designing coding running "
        "maintaining prototyping bootstrapping hacking shipping",
        (_PROJECT_DOING,),
    ),
    "dated_doing": ("launching starting", (_DATE_DID, _PROJECT_DOING)),
    "did": ("built created co-founded cofounded released published", (_PROJECT_DID,)),
    "dated_did": ("launched founded started shipped", (_DATE_DID, _PROJECT_DID)),
    "dated": (
        "born got joined left quit graduated began finished completed getting leaving "
        "graduating retiring due",
        (_DATE_DID,),
    ),
    "dated_life": ("retired married", (_DATE_DID, _BACKGROUND_LIFE)),
    "life": (
        "live lives grew work works worked come comes studied study studies speak speaks teach "
        "teaches based located from employed studying learning",
        (_BACKGROUND_LIFE,),
    ),
    "role": (
        "founder co-founder cofounder creator author maintainer lead developer owner",
        (_PROJECT_ROLE,),
    ),
    "fan": (
        "huge big massive real total long-time longtime fan into obsessed passionate",
        (_PREF_FAN,),
    ),
    "diet": (
        "vegan vegetarian pescatarian lactose lactose-intolerant gluten gluten-free allergic "
        "morning night teetotal sober",
        (_PREF_DIET,),
    ),
    "be_a": ("a an the", (_PROJECT_ROLE, _BELIEF_VALUE, _PREF_FAN, _PREF_DIET, _BACKGROUND_A)),
    "age": ("", (_BACKGROUND_AGE,)),
    "have": ("", (_BACKGROUND_HAVE,)),
    "mine": (
        "",
        (
            _DATE_MINE,
            _DECISION,
            _PROJECT_MINE,
            _PREF_FAVOURITE,
            _BELIEF_PRINCIPLE,
            _BACKGROUND_MINE,
        ),
    ),
    "opinion": ("", (_BELIEF_OPINION,)),
    "matters": ("", ()),  # "X matters to me": see ``_Extractor._first_fact``
}
_KEYWORDS: Final[dict[str, str]] = {
    word: family for family, (words, _) in _FAMILIES.items() for word in words.split()
}
_FAMILY_RULES: Final[dict[str, tuple[_Rule, ...]]] = {
    family: tuple(rule for rule in _RULES if rule.pattern in patterns)
    for family, (_, patterns) in _FAMILIES.items()
}
#: ASCII case folding that keeps every index in place, for text whose
#: ``str.lower`` would not (a few characters lower-case to two).
_FOLD: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_WORD_EDGE: Final = ',.;:!?"()'


def _folded(text: str) -> str:
    """``text`` lower-cased with a space in front, index ``i + 1`` for index ``i``."""
    low = text.lower()
    if len(low) != len(text):
        low = text.translate(_FOLD)
    return " " + low.replace("\n", " ").replace("\t", " ")


def _candidates(folded: str) -> list[tuple[int, str]]:
    """Where a subject stands in the text ``folded`` came from, and its family of rules.

    Positions are those of the original text (``folded`` has one more
    character in front), in order.
    """
    found = []
    for key in _SUBJECT_KEYS:
        at = folded.find(key)
        while at != -1:
            family = (
                "matters"
                if key[1] == "t" and key[2] == "o"
                else _family(folded[at + 1 : at + 120].split(None, 9))
            )
            if family is not None:
                found.append((at, family))
            at = folded.find(key, at + 1)
    found.sort()
    return found


def _family(words: list[str]) -> str | None:
    """The family of rules the words from a subject on can start, if any."""
    first = words[0].strip(_WORD_EDGE)
    if first in ("my", "our", "user's"):
        return "mine"
    rest = 1
    if first == "in":
        return "opinion" if len(words) > 1 and words[1] == "my" else None
    if first == "the":
        if len(words) < 2 or not words[1].startswith("user"):
            return None
        if words[1].strip(_WORD_EDGE) == "user's":
            return "mine"
        rest = 2
    elif first not in _SUBJECT_WORDS:
        return None
    had = False
    for word in words[rest:]:
        word = word.strip(_WORD_EDGE)
        if word in _HELPING_WORDS:
            had = had or word in ("have", "has")
        elif word not in _SKIPPED_WORDS:
            family = _KEYWORDS.get(word)
            if family is not None:
                return family
            if had:
                return "have"  # "I have two kids"
            return "age" if word[:1].isdigit() else None
    return None


INSTRUCTION_PREFIX: Final = "Custom instruction: "


def _verbatim(source: Source, sentence: str) -> _Found:
    """A memory or instruction sentence no rule matched: still worth keeping.

    The assistant saved it, or the user wrote it as standing instructions, so
    it is durable by construction; it is filed by its wording.
    """
    text = _as_sentence(WS.sub(" ", sentence))
    if source == "instructions" and not is_third_person(text):
        return _Found("preferences", 0, f"{INSTRUCTION_PREFIX}{text}")
    if _PREFERENCE_WORDS.search(text):
        return _Found("preferences", 0, text)
    if _BELIEF_WORDS.search(text):
        return _Found("beliefs", 0, text)
    return _Found("background", 0, Decision(decision=text, context=""))


def _to_facts(found: Iterable[_Found]) -> Facts:
    facts = Facts()
    for f in found:
        v = f.value
        if isinstance(v, str):
            (facts.beliefs if f.category == "beliefs" else facts.preferences).append(v)
        elif isinstance(v, Project):
            facts.projects.append(v)
        elif isinstance(v, DateFact):
            facts.dates.append(v)
        else:
            facts.decisions.append(v)
    return facts


def saved_facts(source: Literal["memory", "instructions"], text: str) -> Facts:
    """The facts of one saved memory or the custom instructions: every sentence counts."""
    ex = _Extractor(None)
    ex.saved(source, text.replace("\u2019", "'"))
    return _without_repeats(_to_facts(ex.found))


def extract(transcript: str, today: date | None = None) -> Facts:
    """The facts the user's turns of a transcript state, deduplicated, in order."""
    ex = _Extractor(today)
    text = transcript.replace("\u2019", "'")
    candidates = _candidates(_folded(text))
    positions = [at for at, _ in candidates]
    for speaker, lo, hi in turn_spans(text):
        if speaker == "user":
            first, last = bisect.bisect_left(positions, lo), bisect.bisect_left(positions, hi)
            if first < last:
                ex.user_turn(text, lo, hi, candidates[first:last])
        elif speaker in ("memory", "instructions"):
            ex.saved(speaker, text[lo:hi])
    return _without_repeats(_to_facts(ex.found))


# --------------------------------------------------------------------------- consolidation


def _without_repeats(facts: Facts) -> Facts:
    """Drop facts stated twice (same normalised text), keeping first-seen order.

    Unlike :func:`consolidate`, two different dates for one event or two
    descriptions of one project both stay: which one is current is for the
    reduce stage to decide, with the conversations' dates.
    """
    return Facts(
        preferences=_unique(facts.preferences, normalise),
        projects=_unique(facts.projects, lambda p: normalise(f"{p.name} {p.description}")),
        dates=_unique(facts.dates, lambda d: normalise(f"{d.event} {d.date}")),
        beliefs=_unique(facts.beliefs, normalise),
        decisions=_unique(facts.decisions, lambda d: normalise(f"{d.decision} {d.context}")),
    )


def consolidate(facts: Facts) -> Facts:
    """Drop repeats, keeping first-seen order.

    Strings and decisions repeat when their normalised text does; a project
    is the same project when its name is, and keeps the longest description
    (the later one on a tie, as the more recent); an event is the same event
    when its name is, and keeps the latest date given for it.
    """
    projects: dict[str, Project] = {}
    for p in facts.projects:
        key = normalise(p.name) or normalise(p.description)
        old = projects.get(key)
        if old is None:
            projects[key] = p
            continue
        projects[key] = Project(
            name=old.name or p.name,
            description=p.description
            if len(p.description) >= len(old.description)
            else old.description,
            details=p.details if len(p.details) >= len(old.details) else old.details,
        )
    dates: dict[str, DateFact] = {}
    for d in facts.dates:
        key = normalise(d.event)
        old_date = dates.get(key)
        dates[key] = d if old_date is None else DateFact(event=old_date.event, date=d.date)
    return Facts(
        preferences=_unique(facts.preferences, normalise),
        projects=list(projects.values()),
        dates=list(dates.values()),
        beliefs=_unique(facts.beliefs, normalise),
        decisions=_unique(facts.decisions, lambda d: normalise(f"{d.decision} {d.context}")),
    )


def _unique(items: Iterable[V], key: Callable[[V], str]) -> list[V]:
    seen: set[str] = set()
    out: list[V] = []
    for item in items:
        k = key(item)
        if k and k not in seen:
            seen.add(k)
            out.append(item)
    return out


def is_background(sentence: str) -> bool:
    """Whether a third-person sentence is a background statement about the user
    ("Works as a nurse.") rather than a decision."""
    found = _Extractor(None).sentence(sentence, third_person=True)
    return found is not None and found.category == "background" and found.start == 0
