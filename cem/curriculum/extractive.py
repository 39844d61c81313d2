"""Extractive instructions: reading comprehension aimed at the mistake's missing fact.

For each mistake and each passage retrieved for it, the *fact sentences* are those that
hold the gold answer (``gold_text``); a passage without it gives its one sentence with the
most query keywords. The question is a cloze that blanks the gold answer (else the
keyword) and the answer is that span. A probe found that clozes on random spans never
hit the missing fact, so spans are never chosen at random.

Each fact gets an open-book form (the passage in context) and a closed-book form (the
sentence alone, introduced by its topic), each in ``extractive.paraphrases`` wordings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from cem.curriculum.render import Renderer, Row
from cem.knowledge.keypoints import content_words
from cem.knowledge.types import Passage

BLANK = "____"
# Split after . ! ? (optionally closing quotes/brackets) when a capital, digit or quote follows.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9À-Ý])")
OPEN_BOOK = (
    "Read the passage, then fill in the blank.\n\nPassage: {passage}\n\nSentence: {cloze}",
    "{passage}\n\nAccording to the text above, what belongs in the blank?\n{cloze}",
    "Passage:\n{passage}\n\nComplete the sentence with words from the passage: {cloze}",
)
CLOSED_BOOK = (
    "Fill in the blank about {topic}: {cloze}",
    "What word or phrase completes this statement about {topic}?\n{cloze}",
    "Complete the sentence ({topic}): {cloze}",
)
MAX_PARAPHRASES = min(len(OPEN_BOOK), len(CLOSED_BOOK))


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage (a light rule: end punctuation followed by a capital)."""
    parts = []
    for line in text.splitlines():
        parts += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return parts


def find_span(sentence: str, phrase: str) -> re.Match | None:
    """``phrase`` in ``sentence`` as whole words, ignoring case."""
    if not phrase.strip():
        return None
    return re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", sentence, re.IGNORECASE)


def mistake_keywords(mistake: dict) -> list[str]:
    """The mistake's keywords, else the content words of its queries."""
    words = [k for k in mistake.get("keywords") or [] if k.strip()]
    if not words:
        words = content_words(" ".join(mistake.get("queries") or []))
    return words


@dataclass
class Fact:
    """A sentence that states (part of) the missing fact, with the span to blank."""

    sentence: str
    span: tuple[int, int]
    passage: Passage

    @property
    def answer(self) -> str:
        return self.sentence[self.span[0] : self.span[1]]

    @property
    def cloze(self) -> str:
        return self.sentence[: self.span[0]] + BLANK + self.sentence[self.span[1] :]


def facts_of(mistake: dict, passage: Passage) -> list[Fact]:
    """Sentences holding the gold answer; else the one with the most keywords (blanking one)."""
    sents = split_sentences(passage.text)
    gold = [(s, m) for s in sents if (m := find_span(s, mistake.get("gold_text") or ""))]
    if gold:
        return [Fact(s, m.span(), passage) for s, m in gold]
    keywords = [k for k in mistake_keywords(mistake) if k != mistake.get("gold_text")]
    best: tuple[int, str, re.Match] | None = None
    for s in sents:
        hits = [m for k in keywords if (m := find_span(s, k))]
        if hits and (best is None or len(hits) > best[0]):
            best = (len(hits), s, hits[0])
    return [Fact(best[1], best[2].span(), passage)] if best else []


def topic_of(passage: Passage, mistake: dict) -> str:
    """What a closed-book cloze is about: the passage title, else the main keyword."""
    keywords = mistake_keywords(mistake)
    return passage.title or (keywords[0] if keywords else passage.doc_id)


def extractive_rows(
    mistakes: Sequence[dict],
    passages: Iterable[Passage],
    cfg: DictConfig,
    renderer: Renderer,
    round_: int,
) -> list[Row]:
    """Open- and closed-book cloze rows for every fact of every mistake's passages.

    Args:
        mistakes: this round's mistakes (``mistakes.jsonl`` rows).
        passages: this round's passages; ``mistake_ids`` links them to mistakes.
        cfg: the ``instructions.extractive`` config.
        renderer: renders the instruction with the chat or plain template.
        round_: the round being built.
    """
    by_mistake: dict[str, list[Passage]] = {}
    for p in passages:
        for mid in p.mistake_ids:
            by_mistake.setdefault(mid, []).append(p)
    rows = []
    for mistake in mistakes:
        for passage in by_mistake.get(mistake["id"], []):
            for fact in facts_of(mistake, passage):
                rows += _fact_rows(
                    fact, topic_of(passage, mistake), mistake["id"], cfg, renderer, round_
                )
    return rows


def _fact_rows(
    fact: Fact, topic: str, mistake_id: str, cfg: DictConfig, renderer: Renderer, round_: int
) -> list[Row]:
    users = []
    for i in range(cfg.paraphrases):
        if cfg.open_book:
            users.append(OPEN_BOOK[i].format(passage=fact.passage.text, cloze=fact.cloze))
        if cfg.closed_book:
            users.append(CLOSED_BOOK[i].format(topic=topic, cloze=fact.cloze))
    rows = []
    for user in users:
        prompt, response = renderer.instruction(user, fact.answer)
        rows.append(
            Row(
                prompt=prompt,
                response=response,
                kind="extractive",
                round=round_,
                source_ids=[mistake_id, fact.passage.doc_id],
                raw=f"{user}\n{fact.answer}",
            )
        )
    return rows
