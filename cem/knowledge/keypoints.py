"""Step 3 of the loop: knowledge points of a mistake, turned into search queries.

``rule`` (the default, offline): the question's named entities and content words plus
the gold answer. ``llm``: an instruct model lists the keywords as JSON; when its answer
cannot be parsed the rule extractor steps in and the fallback is counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or not no is are was were be been being
    which what who whom whose when where why how this that these those it its as into than then
    there their they them he she his her we our you your i do does did has have had can could
    would should will shall may might must shares share following one ones true false about
    following country countries located region called people official language currency""".split()
)
# A run of capitalised words, allowing short joiners ("Bosnia and Herzegovina", "Côte d'Ivoire").
ENTITY = re.compile(
    r"(?:[A-Z][\w'’\-]*)(?:\s+(?:of|and|the|de|da|del|d'|du|la|le)?\s*[A-Z][\w'’\-]*)*"
)
WORD = re.compile(r"\w[\w'’\-]*", re.UNICODE)


@dataclass
class KeyPoints:
    """What one mistake is about, and the queries that look for it."""

    keywords: list[str]
    queries: list[str]
    method: str  # rule | llm | rule_fallback
    raw: str = ""  # the LLM's answer, kept for inspection
    notes: list[str] = field(default_factory=list)


def entities(text: str) -> list[str]:
    """Capitalised spans, minus a lone sentence-initial question word."""
    found = []
    for m in ENTITY.finditer(text):
        span = m.group(0).strip()
        if span.lower() in STOPWORDS:
            continue
        if span not in found:
            found.append(span)
    return found


def content_words(text: str) -> list[str]:
    words = [w for w in WORD.findall(text) if w.lower() not in STOPWORDS and len(w) > 2]
    return list(dict.fromkeys(words))


def find_span(text: str, phrase: str) -> re.Match | None:
    """``phrase`` in ``text`` as whole words, ignoring case (None for an empty phrase)."""
    if not phrase.strip():
        return None
    return re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text, re.IGNORECASE)


def holds_answer(text: str, answer: str) -> bool:
    """Does ``text`` state ``answer`` (whole words, any case)? The one rule for a "hit"."""
    return find_span(text, answer) is not None


def rule_keypoints(question: str, answer: str, n_queries: int = 2) -> KeyPoints:
    """Entities (or, without any, content words) of the question, plus the gold answer."""
    ents = entities(question)
    words = content_words(question)
    subject = ents or words[:4]
    keywords = list(dict.fromkeys([*subject, answer]))
    queries = [" ".join([*subject, answer]).strip(), answer, " ".join(words[:8])]
    queries = [q for q in dict.fromkeys(queries) if q]
    return KeyPoints(keywords=keywords, queries=queries[:n_queries], method="rule")


LLM_PROMPT = (
    "A student answered this multiple-choice question wrongly.\n"
    "Question: {question}\nCorrect answer: {answer}\n\n"
    "List the 2 to 5 key entities or concepts a student must look up to know the correct "
    'answer. Reply with JSON only, in the form {{"keywords": ["...", "..."]}}.'
)


def parse_keywords(text: str) -> list[str] | None:
    """Keywords from an LLM reply: a JSON object or list, possibly inside prose or a code fence."""
    for pattern in (r"\{.*?\}", r"\[.*?\]"):
        for m in re.finditer(pattern, text, re.DOTALL):
            try:
                obj = json.loads(m.group(0))
            except json.JSONDecodeError:
                continue
            values = obj.get("keywords") if isinstance(obj, dict) else obj
            if isinstance(values, list):
                words = [str(v).strip() for v in values if str(v).strip()]
                if words:
                    return list(dict.fromkeys(words))
    return None


def llm_keypoints(reply: str, question: str, answer: str, n_queries: int = 2) -> KeyPoints:
    """Queries from the LLM's keywords; the rule extractor when they cannot be parsed."""
    words = parse_keywords(reply)
    if not words:
        kp = rule_keypoints(question, answer, n_queries)
        kp.method, kp.raw = "rule_fallback", reply
        return kp
    queries = [" ".join([*words, answer]), " ".join(words)]
    queries = [q for q in dict.fromkeys(queries) if q]
    return KeyPoints(keywords=words, queries=queries[:n_queries], method="llm", raw=reply)
