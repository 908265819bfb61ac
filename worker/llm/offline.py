"""The ``offline`` provider: deterministic rules instead of a language model.

Why it exists: anyone can run the whole pipeline end to end (``make demo``,
the test suite, a laptop without an API key) and get a plausible MEMORY and
persona from their own export. It is honest about what it is: its ``model``
is ``offline-rules-v1``, which the pipeline records as the model used.

How it extracts: only the user's own words count (``User:``, ``Saved memory:``
and ``Custom instructions:`` turns of the transcript; never ``Assistant:``).
Each of their sentences that is a first-person statement of a durable fact
("I really prefer X", "I'm building X, a ...", "My X is on <date>", "I
strongly believe X", "We decided to X because Y", "I work as X") becomes one
fact; the rules are general patterns of such statements, not lists of
topics. The fact keeps the user's own
sentence (trimmed to start at its subject) so that it reads naturally and
can be compared with what was said. Questions, hypotheticals and reported
speech are skipped: a memory must hold what the user said about themselves.

Everything here is pure computation on strings with precompiled patterns:
the extractor runs on every chunk of exports of 90 MB and more, so it only
looks closely at the few places where a subject ("I", "we", "my") stands.
MEMORY and the persona sections are templates filled from the facts.
"""

from __future__ import annotations

import bisect
import itertools
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final, Literal, TypeVar

from jobs.domain.facts import DateFact, Decision, Facts, Project
from jobs.domain.memory import fallback_memory, memory_sections
from jobs.domain.sections import Section, Sections
from worker.llm.base import ExtractionInput, LLMResult, Usage

MODEL: Final = "offline-rules-v1"

#: A fact longer than this is a run-on, not "one clear sentence": it is cut at
#: a clause boundary, or dropped when it has none.
MAX_FACT_CHARS: Final = 300
#: At most this many sentences of one custom-instructions turn that match no
#: rule are kept verbatim: instructions are valuable, pasted essays are not.
MAX_INSTRUCTION_SENTENCES: Final = 12

V = TypeVar("V")
Source = Literal["user", "memory", "instructions"]
Category = Literal["preferences", "projects", "dates", "beliefs", "decisions", "background"]


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


I = re.IGNORECASE  # noqa: E741 - the one flag almost every pattern below uses

# --------------------------------------------------------------------------- transcript

#: A speaker label at the start of a line. ``jobs.extract`` renders turns as
#: ``User:`` / ``Assistant:`` / ``Saved memory:`` / ``Custom instructions:``;
#: the other spellings let hand-written or copied transcripts work too. Lines
#: without a label continue the previous speaker's turn.
_SPEAKER_LABEL: Final = (
    r"[ \t]*(?:\*\*|__)?(?P<role>user|human|you|me|assistant|chatgpt|claude|gpt|ai|system|tool"
    r"|saved[ \t]+memor(?:y|ies)|custom[ \t]+instructions?)(?:[ \t]+said)?(?:\*\*|__)?"
    r"(?:[ \t]*\([^)\n]{0,40}\))?[ \t]*:(?:\*\*|__)?[ \t]?"
)
#: The label of the transcript's first line, and of every later line. Two
#: patterns, because one that starts with the literal newline lets the regex
#: engine skip ahead to line starts instead of trying every position.
_SPEAKER_FIRST: Final = re.compile(_SPEAKER_LABEL, I)
_SPEAKER: Final = re.compile(r"\n" + _SPEAKER_LABEL, I)
_ROLE_SOURCE: Final[dict[str, Source | None]] = {
    "user": "user",
    "human": "user",
    "you": "user",
    "me": "user",
    "saved memory": "memory",
    "saved memories": "memory",
    "custom instruction": "instructions",
    "custom instructions": "instructions",
}

#: Sentence ends: terminal punctuation (and closing quotes) before whitespace,
#: or a line break. "Next.js" and "3.5" do not end a sentence. (Starting with a
#: character class lets the regex engine skip quickly to candidates.)
_BOUNDARY: Final = re.compile(r"[.!?\n](?:(?<=\n)|[.!?]*[\"')\]\u201d]*(?=\s))")
#: Words whose period ends an abbreviation, not a sentence.
_ABBREVIATIONS: Final = _wordset(
    "e.g i.e etc vs mr mrs ms dr prof st jr sr approx incl no jan feb mar apr jun jul aug sep "
    "sept oct nov dec"
)
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

_ADVERBS: Final = (
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
    rf"{_SUBJ_I}\s+(?P<adv>(?:(?:{_ADVERBS})\s+)*)"
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

_PROJECT_NOUNS: Final = _wordset(
    "app apps application project startup company business product game library framework "
    "tool toolkit website site platform service saas book novel thesis dissertation course "
    "podcast newsletter blog plugin extension bot chatbot engine compiler cli api sdk channel "
    "album marketplace dashboard agency shop store nonprofit prototype mvp crm tracker"
)
#: Verbs whose object is a project whatever it is called ("building a CRM").
_MAKING: Final = _wordset(
    "building developing creating designing prototyping bootstrapping launching running "
    "maintaining built founded "
    "co-founded cofounded created launched shipped released founder"
)
#: What one builds or writes in an afternoon: a task, not a project.
_THROWAWAY: Final = _wordset(
    "email e-mail message letter reply response answer prompt question function functions method "
    "class query regex script component components page form list table chart graph "
    "presentation slide slides document doc report essay post tweet comment summary outline "
    "schedule plan routine workout meal recipe lesson resume cv spreadsheet test tests loop "
    "account file files folder branch ticket issue password backup profile copy note reminder "
    "event meeting invite link query queries job"
)
#: Capitalised words that start an object but are not a project's name.
_NOT_A_NAME: Final = _wordset(
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
_WS: Final = re.compile(r"\s+")
_PUNCT: Final = re.compile(r"[^\w\s]")
_TRAILING: Final = re.compile(r"[\s.!,;:]+$")

_PREFERENCE_WORDS: Final = re.compile(
    r"\b(?:prefers?|likes?|loves?|enjoys?|hates?|dislikes?|favou?rite|wants?|avoids?)\b", I
)
_BELIEF_WORDS: Final = re.compile(r"\b(?:believes?|values?|thinks?|convinced|principles?)\b", I)


def normalise(text: str) -> str:
    """Casefolded, punctuation-free, single-spaced: the key that finds duplicates.

    Same rule as the reduce stage, so the offline consolidation and the
    reducer agree on what "the same fact" is.
    """
    return " ".join(_PUNCT.sub(" ", text.casefold()).split())


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


def _date_sort_key(text: str) -> tuple[int, int, int, int]:
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


def user_turns(transcript: str) -> Iterator[tuple[Source, str]]:
    """The text of each turn the user wrote (or had saved), with its kind."""
    for source, start, end in _turn_spans(transcript):
        yield source, transcript[start:end]


def _turn_spans(transcript: str) -> Iterator[tuple[Source, int, int]]:
    """Where each of the user's turns (or saved facts) starts and ends, with its kind.

    Text before the first speaker label belongs to a turn that started in an
    earlier chunk and whose speaker is unknown: it is skipped, because it may
    be the assistant's.
    """
    first = _SPEAKER_FIRST.match(transcript)
    labels = _SPEAKER.finditer(transcript, first.end() if first else 0)
    source: Source | None = None
    start = 0
    for m in itertools.chain([first] if first else [], labels):
        if source is not None:
            yield source, start, m.start()
        role = m.group("role").casefold()
        source = _ROLE_SOURCE.get(role) or _ROLE_SOURCE.get(" ".join(role.split()))
        start = m.end()
    if source is not None:
        yield source, start, len(transcript)


def sentences(text: str) -> Iterator[str]:
    """Sentences of a turn: split at ``.``, ``!``, ``?`` and line breaks."""
    for start, end in _sentence_spans(text):
        yield text[start:end]


def _sentence_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where each sentence of ``text`` starts and ends, surrounding space excluded."""
    start = 0
    for m in _BOUNDARY.finditer(text):
        if not _is_abbreviation(text, start, m.start(), m.end()):
            yield from _stripped(text, start, m.end())
            start = m.end()
    yield from _stripped(text, start, len(text))


def _sentence_around(text: str, at: int, lo: int, hi: int) -> tuple[int, int] | None:
    """The sentence of ``text[lo:hi]`` that holds index ``at`` (same rules as above).

    Looking around one index is much cheaper than splitting a whole turn when
    only a few of its sentences can hold a fact.
    """
    start = lo
    for end_mark in (". ", "! ", "? ", "\n"):
        k = text.rfind(end_mark, start, at)
        while end_mark == ". " and k != -1 and _is_abbreviation(text, start, k, k + 1):
            k = text.rfind(end_mark, start, k)
        if k != -1:
            start = k + len(end_mark)
    end = hi
    pos = at
    while (m := _BOUNDARY.search(text, pos, hi)) is not None:
        if not _is_abbreviation(text, start, m.start(), m.end()):
            end = m.end()
            break
        pos = m.end()
    return next(_stripped(text, start, end), None)


def _is_abbreviation(text: str, start: int, stop: int, end: int) -> bool:
    """Whether the period at ``stop`` ends an abbreviation or an initial, not a sentence.

    ("e.g.", "Dr.", "J.", "U.S.")
    """
    if end - stop != 1 or text[stop] != ".":
        return False
    space = text.rfind(" ", start, stop)
    if stop - space > 6:
        return False
    word = text[max(start, space + 1) : stop].lstrip("(\"'")
    return (
        word.casefold() in _ABBREVIATIONS
        or (len(word) == 1 and word.isupper())
        or (len(word) > 2 and word[-2] == ".")
    )


def _stripped(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    piece = text[start:end]
    body = piece.strip()
    if body:
        first = start + len(piece) - len(piece.lstrip())
        yield first, first + len(body)


class _Extractor:
    """Applies the rules to one transcript; one instance per call."""

    def __init__(self, today: date | None) -> None:
        self.today = today
        self.found: list[_Found] = []

    def saved(self, source: Source, text: str) -> None:
        """A saved memory or custom instructions: every sentence counts."""
        unmatched = 0
        for start, end in _sentence_spans(text):
            sentence = _LABEL.sub("", text[start:end], count=1).strip()
            if _SUBJECTLESS.match(sentence):
                sentence = "User " + sentence[0].lower() + sentence[1:]
            if len(sentence) < 4 or _is_question(sentence):
                continue
            fact = self.sentence(sentence, third_person=True)
            if fact is not None:
                self.found.append(fact)
            elif unmatched < MAX_INSTRUCTION_SENTENCES:
                unmatched += 1
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
                span, here = _sentence_around(text, at, lo, hi), []
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
        if not third_person and _is_third_person(subj):
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


def _is_third_person(subject: str) -> bool:
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
    text = _WS.sub(" ", text).strip()
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
    event = _WS.sub(" ", m.group("event")).strip()
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
        verb = _WS.sub(" ", m.groupdict().get("verb") or "founder").casefold()
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
    kind = _WS.sub(" ", m.group("kind")).strip().casefold()
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
_SUBJECT_WORDS: Final = _wordset("i i'm im i've i'd i'll we we're we've we'd we'll user")
_HELPING_WORDS: Final = _wordset("am is are have has had was were will be been")
_SKIPPED_WORDS: Final = _wordset(
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


_INSTRUCTION_PREFIX: Final = "Custom instruction: "


def _verbatim(source: Source, sentence: str) -> _Found:
    """A memory or instruction sentence no rule matched: still worth keeping.

    The assistant saved it, or the user wrote it as standing instructions, so
    it is durable by construction; it is filed by its wording.
    """
    text = _as_sentence(_WS.sub(" ", sentence))
    if source == "instructions" and not _is_third_person(text):
        return _Found("preferences", 0, f"{_INSTRUCTION_PREFIX}{text}")
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


def extract(transcript: str, today: date | None = None) -> Facts:
    """The facts the user's turns of a transcript state, deduplicated, in order."""
    ex = _Extractor(today)
    text = transcript.replace("\u2019", "'")
    candidates = _candidates(_folded(text))
    positions = [at for at, _ in candidates]
    for source, lo, hi in _turn_spans(text):
        if source == "user":
            first, last = bisect.bisect_left(positions, lo), bisect.bisect_left(positions, hi)
            if first < last:
                ex.user_turn(text, lo, hi, candidates[first:last])
        else:
            ex.saved(source, text[lo:hi])
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


# --------------------------------------------------------------------------- MEMORY


def write_memory(facts: Facts) -> str:
    """MEMORY markdown: a title, a note on how it was written, the five sections.

    The sections come from the shared deterministic renderer (the same one
    the memory stage falls back on), fed with deduplicated facts and the
    dates in chronological order.
    """
    facts = consolidate(facts)
    ordered = facts.model_copy(
        update={"dates": sorted(facts.dates, key=lambda d: _date_sort_key(d.date))}
    )
    note = (
        f"_Written by the offline rule-based writer ({MODEL}) from {facts.count()} facts "
        "the user stated; no language model was involved._"
    )
    return f"# MEMORY\n\n{note}\n\n{fallback_memory(ordered)}"


# --------------------------------------------------------------------------- sections

_BULLET: Final = re.compile(r"^\s*[-*+]\s+(?P<text>.+?)\s*$")
_MORE: Final = re.compile(r"^\u2026?and \d+ more\.?$")
_BOLD_HEAD: Final = re.compile(r"^\*\*(?P<name>.+?)\*\*\s*[:\u2014\u2013-]?\s*(?P<rest>.*)$")
_DATED: Final = re.compile(r"^(?P<date>[^:]{4,40}):\s+(?P<event>.+)$")
#: MEMORY writes "X. Context: because Y."; persona points read better as "X because Y".
_CONTEXT_REASON: Final = re.compile(
    r"\.\s+Context:\s+(?=(?:because|since|given|due\s+to|so|after|as|in\s+order)\b)"
)
_CONTEXT_OTHER: Final = re.compile(r"\.?\s+Context:\s+")
_WORD: Final = re.compile(r"[^\W\d_]{4,}")

_STOPWORDS: Final = _wordset(
    """about above after again against also always another anything around because been before
    being below between both cannot could does doing down during each even every from further
    going good great have having hello help here how however into just know like little look
    made make many maybe more most much must need never next none only other over please
    pretty really right same should since some something still such sure take than thank thanks
    that their them then there these they thing things think this those though through today
    under until very want were what when where which while will with within without would yeah
    your yours user assistant said says okay well than able sorry first last back then also"""
)

#: Tools and stacks, as they are usually written. Matched case-insensitively,
#: except the ones in :data:`_TOOLS_EXACT`, which are ordinary English words
#: in lower case ("go", "rust" in "rust stains", "express", "swift").
_TOOLS: Final = (
    "Python",
    "JavaScript",
    "TypeScript",
    "Kotlin",
    "Ruby",
    "PHP",
    "C++",
    "C#",
    "Scala",
    "Elixir",
    "Haskell",
    "Julia",
    "SQL",
    "Bash",
    "HTML",
    "CSS",
    "Tailwind CSS",
    "Tailwind",
    "React",
    "Next.js",
    "Vue",
    "Nuxt",
    "Svelte",
    "Angular",
    "Node.js",
    "Django",
    "Flask",
    "FastAPI",
    "Laravel",
    "Postgres",
    "PostgreSQL",
    "MySQL",
    "SQLite",
    "MongoDB",
    "Mongo",
    "Redis",
    "ClickHouse",
    "Supabase",
    "Firebase",
    "DynamoDB",
    "Elasticsearch",
    "Kafka",
    "Docker",
    "Kubernetes",
    "Terraform",
    "AWS",
    "GCP",
    "Azure",
    "Vercel",
    "Netlify",
    "Heroku",
    "Cloudflare",
    "Linux",
    "Ubuntu",
    "macOS",
    "Windows",
    "iOS",
    "Android",
    "Git",
    "GitHub",
    "GitLab",
    "vim",
    "Neovim",
    "Emacs",
    "VS Code",
    "VSCode",
    "IntelliJ",
    "PyCharm",
    "Xcode",
    "Jupyter",
    "pandas",
    "NumPy",
    "PyTorch",
    "TensorFlow",
    "Excel",
    "Notion",
    "Obsidian",
    "Figma",
    "Slack",
    "Jira",
    "Airtable",
    "WordPress",
    "Shopify",
    "Stripe",
    "ChatGPT",
    "Claude",
    "LangChain",
    "pytest",
    "unittest",
    "Jest",
    "Playwright",
    "GraphQL",
    "SwiftUI",
    "CloudKit",
)
_TOOLS_EXACT: Final = ("Go", "Rust", "Swift", "Java", "Express", "Rails", "Spring", "Deno", "Bun")
_TOOL_DISPLAY: Final[dict[str, str]] = {t.casefold(): t for t in (*_TOOLS, *_TOOLS_EXACT)}
_TOOL_EDGE_BEFORE: Final = r"(?<![\w.+#])"
_TOOL_EDGE_AFTER: Final = r"(?![\w+#]|\.\w)"
_TOOL: Final = re.compile(
    _TOOL_EDGE_BEFORE
    + "(?:(?i:"
    + "|".join(re.escape(t) for t in sorted(_TOOLS, key=len, reverse=True))
    + ")|"
    + "|".join(_TOOLS_EXACT)
    + ")"
    + _TOOL_EDGE_AFTER
)
#: "written with Next.js and Supabase", "using FastAPI, Postgres": the named stack.
_STACK: Final = re.compile(
    r"\b(?:with|using|in|on|via)\s+(?P<list>[A-Z][\w.+#-]*(?:(?:,\s*|\s+and\s+|\s+or\s+|\s+)"
    r"[A-Z][\w.+#-]*)*)"
)
_STACK_SPLIT: Final = re.compile(r",\s*|\s+and\s+|\s+or\s+")

_SUBJECT_LEAD: Final = re.compile(
    rf"^(?P<subj>I|(?:the\s+)?user)\s+(?P<adv>(?:(?:{_ADVERBS})\s+)*)(?P<verb>[\w']+)\b",
    I,
)
_CONTRACTION_LEAD: Final = re.compile(
    r"^(?:I'm|I\s+am|I've|I\s+have|I'd|I\s+was|I'll|(?:the\s+)?user\s+(?:is|has|was))\b", I
)
_LEAD_REPLACEMENT: Final[dict[str, str]] = {
    "i'm": "Is",
    "i am": "Is",
    "i've": "Has",
    "i have": "Has",
    "i'd": "Would",
    "i was": "Was",
    "i'll": "Will",
    "user is": "Is",
    "user has": "Has",
    "user was": "Was",
}
_INNER_FIRST_PERSON: Final = re.compile(
    r"\b(?:I'm|I\s+am|I\s+was|I've|I'd|I'll|I|me|my|mine|myself)\b|\bMy\b"
    r"|\b(?i:(?:the\s+)?user's)(?!\w)"
)
_INNER_REPLACEMENT: Final[dict[str, str]] = {
    "i'm": "they're",
    "i am": "they are",
    "i was": "they were",
    "i've": "they've",
    "i'd": "they'd",
    "i'll": "they'll",
    "i": "they",
    "me": "them",
    "my": "their",
    "mine": "theirs",
    "myself": "themselves",
    "user's": "their",
    "the user's": "their",
}
_FIRST_PERSON_LEAD: Final = re.compile(r"(?:I\b|I'|Im\b|(?:the\s+)?user\b(?!'))", I)
_MODALS: Final = _wordset(
    "can could will would should must might may cannot can't won't never shall"
)
_NOT_VERBS: Final = _wordset(
    "really strongly definitely generally usually mostly much just actually personally always "
    "still totally absolutely genuinely honestly also very kind of kinda never only mainly "
    "primarily exclusively typically normally"
)


def third_person(sentence: str) -> str:
    """A first-person fact as a description of the user ("I prefer X" -> "Prefers X").

    Persona sections describe the user; MEMORY keeps their own words. Leaves
    sentences it does not recognise in their original wording apart from
    possessives, which is still correct English.
    """
    text = sentence.strip()
    lead = _CONTRACTION_LEAD.match(text)
    if lead is not None:
        key = _WS.sub(" ", lead.group().casefold()).removeprefix("the ")
        text = _LEAD_REPLACEMENT[key] + text[lead.end() :]
    elif (m := _SUBJECT_LEAD.match(text)) is not None:
        words = [*m.group("adv").split(), m.group("verb")]
        if _is_third_person(m.group("subj")):
            rebuilt = words
        else:
            rebuilt = []
            for index, word in enumerate(words):
                low = word.casefold()
                if low in _NOT_VERBS and index < len(words) - 1:
                    rebuilt.append(word)
                    continue
                rebuilt.append(_conjugate(word))
                rebuilt.extend(words[index + 1 :])
                break
        text = " ".join(rebuilt) + text[m.end() :]
    text = _INNER_FIRST_PERSON.sub(
        lambda x: _INNER_REPLACEMENT[_WS.sub(" ", x.group().casefold())], text
    )
    return text[:1].upper() + text[1:]


def _conjugate(verb: str) -> str:
    low = verb.casefold()
    irregular = {"have": "has", "do": "does", "don't": "doesn't", "be": "is", "am": "is"}
    if low in irregular:
        return irregular[low]
    if low in _MODALS or not low.isalpha():
        return verb
    if low.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


@dataclass(slots=True)
class _Profile:
    """What the persona sections are written from: MEMORY's bullets and sample stats."""

    preferences: list[str]
    projects: list[tuple[str, str]]
    dates: list[tuple[str, str]]
    beliefs: list[str]
    decisions: list[str]
    background: list[str]
    samples: int
    topics: list[str]
    sample_tools: Counter[str]

    @property
    def fact_count(self) -> int:
        return (
            len(self.preferences)
            + len(self.projects)
            + len(self.dates)
            + len(self.beliefs)
            + len(self.decisions)
            + len(self.background)
        )


def _memory_bullets(memory: str) -> dict[str, list[str]]:
    bodies, _ = memory_sections(memory)
    out: dict[str, list[str]] = {}
    for name, lines in bodies.items():
        items = []
        for line in lines:
            m = _BULLET.match(line)
            if m is None:
                continue
            text = m.group("text")
            if not _MORE.match(text):
                items.append(text)
        out[name] = items
    return out


def _profile(memory: str, samples: list[str]) -> _Profile:
    bullets = _memory_bullets(memory)
    projects = []
    for item in bullets.get("Projects", []):
        m = _BOLD_HEAD.match(item)
        projects.append((m.group("name"), m.group("rest")) if m else ("", item))
    dates = []
    for item in bullets.get("Important Dates", []):
        m = _DATED.match(item)
        dates.append((m.group("date"), m.group("event")) if m else ("", item))
    decisions: list[str] = []
    background: list[str] = []
    probe = _Extractor(None)
    for item in bullets.get("Decisions & Context", []):
        found = probe.sentence(item, third_person=True)
        is_background = found is not None and found.category == "background" and found.start == 0
        if is_background:
            background.append(item)
        else:
            decisions.append(_CONTEXT_OTHER.sub(" \u2014 ", _CONTEXT_REASON.sub(" ", item)))
    words: Counter[str] = Counter()
    tools: Counter[str] = Counter()
    for sample in samples:
        text = _user_text(sample)
        words.update(w for w in _WORD.findall(text.casefold()) if w not in _STOPWORDS)
        tools.update({_TOOL_DISPLAY[t.casefold()] for t in _TOOL.findall(text)})
    topics = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:8]]
    return _Profile(
        preferences=bullets.get("Preferences", []),
        projects=projects,
        dates=dates,
        beliefs=bullets.get("Beliefs & Values", []),
        decisions=decisions,
        background=background,
        samples=len(samples),
        topics=topics,
        sample_tools=tools,
    )


def _user_text(sample: str) -> str:
    """The user's words of a sample conversation (all of it when it has no speakers)."""
    turns = [text for source, text in user_turns(sample) if source == "user"]
    return "\n".join(turns) if turns or _SPEAKER.search(sample) else sample


def _join(names: list[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _user_section(p: _Profile) -> Section:
    names = [n for n, _ in p.projects if n]
    summary = [
        third_person(p.background[0])
        if p.background
        else "Who the user is, from what they have said about themselves."
    ]
    if names:
        summary.append(f"Works on {_join(names[:4])}.")
    if p.topics:
        summary.append(f"Talks most about {_join(p.topics[:5])}.")
    summary.append(
        f"Written from {p.fact_count} remembered facts and {p.samples} sample conversations "
        "by the offline rule-based writer, in the user's own words."
    )
    points = [third_person(b) for b in p.background[:4]]
    for name, description in p.projects[:5]:
        label = f"Works on {name}" if name else "Works on"
        points.append(f"{label}: {description}" if description else f"{label}.")
    points += [third_person(x) for x in p.preferences[:4]]
    points += [
        f"Important date: {d} \u2014 {e}" if d else f"Important date: {e}" for d, e in p.dates[:3]
    ]
    if not points:
        points.append("Has not said much about themselves yet: ask rather than assume.")
    return Section(title="USER", summary=" ".join(summary), points=points[:12])


def _soul_section(p: _Profile) -> Section:
    if not p.beliefs:
        return Section(
            title="SOUL",
            summary="The user has not stated their convictions yet.",
            points=[
                "No stated beliefs yet: stay neutral on contested questions.",
                "Let the user's own values surface before reflecting any back.",
            ],
        )
    points = [third_person(b) for b in p.beliefs[:8]]
    reasons = [d for d in p.decisions if any(w in d for w in (" because ", " since ", " so that "))]
    points += [f"Acts on reasons, e.g.: {third_person(d)}" for d in reasons[:2]]
    return Section(
        title="SOUL",
        summary=(
            f"What the user values, from {len(p.beliefs)} convictions they stated. These should "
            "shape judgement calls and tone; they are the user's words, not inferences."
        ),
        points=points[:12],
    )


_TONE_RULES: Final = (
    (
        re.compile(r"\b(?:concise|short|brief|terse|bullet|tl;?dr|to the point)\b", I),
        "Lead with the answer and keep it short; bullet points where they help.",
    ),
    (
        re.compile(r"\b(?:detailed|thorough|in-depth|in depth|step[- ]by[- ]step|explain)\b", I),
        "Explain thoroughly, step by step, when the topic calls for it.",
    ),
    (re.compile(r"\b(?:formal|professional)\b", I), "Use a professional, formal register."),
    (re.compile(r"\b(?:casual|informal|friendly|humou?r)\b", I), "Keep the tone casual and warm."),
    (
        re.compile(r"\b(?:honest|direct|blunt|candid|pushback|push back)\b", I),
        "Be direct and candid; disagree openly when warranted.",
    ),
)


_TONE_ADVICE: Final = frozenset(advice for _, advice in _TONE_RULES)


def _identity_section(p: _Profile) -> Section:
    said = " ".join(p.preferences + p.beliefs)
    points = [advice for pattern, advice in _TONE_RULES if pattern.search(said)]
    names = [n for n, _ in p.projects if n]
    if names:
        points.append(f"Act as a knowledgeable collaborator on {_join(names[:4])}.")
    if p.beliefs:
        points.append("Respect the user's stated values; do not lecture them back.")
    points += [
        "Use what MEMORY holds naturally instead of asking the user to repeat themselves.",
        "Be plain about uncertainty: this profile was derived by rules from the user's words.",
    ]
    style = [x for x in points if x in _TONE_ADVICE]
    summary = "The assistant presents itself as a direct, practical collaborator who remembers "
    summary += "the user's context" + (
        f" and follows their stated style: {style[0][0].lower()}{style[0][1:]}" if style else "."
    )
    return Section(title="IDENTITY", summary=summary, points=points[:12])


def _agreement(preference: str) -> str:
    """A stated preference as an instruction to the assistant."""
    if preference.startswith(_INSTRUCTION_PREFIX):
        return preference.removeprefix(_INSTRUCTION_PREFIX)
    described = third_person(preference)
    if _FIRST_PERSON_LEAD.match(preference):
        return f"Respect that the user {described[:1].lower()}{described[1:]}"
    return f"Keep in mind: {described}"


def _agents_section(p: _Profile) -> Section:
    points = [_agreement(x) for x in p.preferences[:6]]
    points += [f"Build on the decision: {third_person(d)}" for d in p.decisions[:4]]
    if p.dates:
        points.append("Keep the user's important dates in mind when planning or scheduling.")
    points += [
        "Check MEMORY before asking for context the user already gave.",
        "Confirm before doing anything hard to undo.",
    ]
    return Section(
        title="AGENTS",
        summary=(
            "Working agreements for any agent acting for this user, derived from their stated "
            "preferences and decisions."
        ),
        points=points[:12],
    )


def _tools_section(p: _Profile) -> Section:
    found: dict[str, str] = {}
    project_names = {normalise(n) for n, _ in p.projects if n}

    def add(tool: str, where: str) -> None:
        tool = tool.strip(" .,")
        key = tool.casefold()
        display = _TOOL_DISPLAY.get(key, tool)
        words = f" {normalise(display)} "
        if (
            len(tool) > 1
            and normalise(tool) not in project_names
            and not any(words in f" {normalise(known)} " for known in found)
        ):
            found[display] = where

    for name, description in p.projects:
        for m in _STACK.finditer(description):
            for tool in _STACK_SPLIT.split(m.group("list")):
                add(tool, f"used in {name}" if name else "used in a project")
        for tool in _TOOL.findall(description):
            add(tool, f"used in {name}" if name else "used in a project")
    for source, items in (("preferences", p.preferences), ("decisions", p.decisions)):
        for item in items:
            for tool in _TOOL.findall(item):
                add(tool, f"named in the user's {source}")
    for tool, count in sorted(p.sample_tools.items(), key=lambda kv: (-kv[1], kv[0])):
        if count >= 2 or p.samples < 4:
            add(tool, f"mentioned in {count} of {p.samples} sample conversations")
    points = [f"{tool} \u2014 {where}" for tool, where in found.items()][:12]
    if not points:
        return Section(
            title="TOOLS",
            summary="The user has not named specific tools or stacks yet.",
            points=["No tools or stacks mentioned yet: ask before assuming one."],
        )
    return Section(
        title="TOOLS",
        summary=(
            f"Tools and stacks the user has mentioned ({len(found)}); prefer them in examples "
            "and suggestions."
        ),
        points=points,
    )


def write_sections(memory: str, samples: list[str]) -> Sections:
    """The five persona sections, from MEMORY (parsed back) and the sampled conversations."""
    p = _profile(memory, samples)
    return Sections(
        soul=_soul_section(p),
        identity=_identity_section(p),
        user=_user_section(p),
        agents=_agents_section(p),
        tools=_tools_section(p),
    )


# --------------------------------------------------------------------------- provider


def _usage(prompt: str, answer: str) -> Usage:
    """Plausible token accounting (~4 characters a token) so progress and totals read true."""
    return Usage(input_tokens=len(prompt) // 4, output_tokens=len(answer) // 4, calls=1)


class OfflineProvider:
    """:class:`~worker.llm.base.LLMProvider` by rules: no network, same input, same output."""

    def __init__(self) -> None:
        self.model: str = MODEL

    async def extract_facts(self, item: ExtractionInput) -> LLMResult[Facts]:
        facts = extract(item.transcript, item.conversation_date)
        return LLMResult(facts, _usage(item.transcript, facts.model_dump_json()), self.model)

    async def consolidate(self, facts: Facts) -> LLMResult[Facts]:
        out = consolidate(facts)
        return LLMResult(out, _usage(facts.model_dump_json(), out.model_dump_json()), self.model)

    async def write_memory(self, facts: Facts) -> LLMResult[str]:
        text = write_memory(facts)
        return LLMResult(text, _usage(facts.model_dump_json(), text), self.model)

    async def write_sections(self, memory: str, samples: list[str]) -> LLMResult[Sections]:
        sections = write_sections(memory, samples)
        prompt = memory + "".join(samples)
        return LLMResult(sections, _usage(prompt, sections.model_dump_json()), self.model)

    async def aclose(self) -> None:
        """Nothing to release: no client, no connection."""
