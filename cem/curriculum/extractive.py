"""Extractive instructions: reading comprehension aimed at the mistake's missing fact.

For each mistake and each passage retrieved for it, the *fact sentences* are those that
hold the gold answer (``gold_text``), and the blank is the gold answer's span: that is the
missing fact. Sentences that also name the question's subject (its keywords, e.g. the
country) come first. A passage without the gold answer gives the sentences that state
another value of the mistake's relation (one of its other options, e.g. another capital),
with that value blanked: a true fact of the same kind, from the text. A passage with
neither gives no row. A probe found that clozes on random spans, or on the subject's name,
never hit the missing fact, so spans are never chosen at random.

The question comes from ``extractive.question_source``:

- ``cloze`` (the default, offline): the sentence with the span blanked.
- ``llm``: the LLM extractor (``knowledge.extractor_model``, the instruct model that
  ``knowledge.extractor=llm`` uses) writes, for each fact, a question whose answer is the
  span, given the passage topic, the sentence and the span (greedy, at most
  ``extractive.llm_max_new_tokens`` new tokens). The first line of the reply that ends
  with "?" is taken, without quotes, list marks or a "Question:" prefix. A reply without
  one, or whose question is too short, too long, states the span (whole words, any case)
  or shares no content word with the sentence and topic, falls back to the cloze for that
  fact; ``extractive_rows(stats=...)`` counts the questions and the fallbacks (per fact,
  by reason), which ``cem build`` writes to ``train_set/stats.json``. Turn it on with
  ``instructions.extractive.question_source=llm knowledge.extractor_model=<folder or hub
  id>``. The builder takes ``generate(prompts) -> replies`` so tests need no model.

Each fact gets an open-book form (the passage in context) and a closed-book form (the
question alone, introduced by its topic), each in ``extractive.paraphrases`` wordings.
Every row still passes the heldout leak guard of ``cem build``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from cem.curriculum.render import Renderer, Row
from cem.errors import CemError
from cem.knowledge.keypoints import content_words, find_span
from cem.knowledge.types import Passage
from cem.records import Mistake

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
# The same wordings around a question the LLM wrote (question_source=llm).
OPEN_BOOK_QUESTION = (
    "Read the passage, then answer the question.\n\nPassage: {passage}\n\nQuestion: {question}",
    "{passage}\n\nAccording to the text above: {question}",
    "Passage:\n{passage}\n\nAnswer with words from the passage: {question}",
)
CLOSED_BOOK_QUESTION = (
    "Answer this question about {topic}: {question}",
    "A question about {topic}. Answer with a word or short phrase.\n{question}",
    "Answer the question ({topic}): {question}",
)
MAX_PARAPHRASES = min(map(len, (OPEN_BOOK, CLOSED_BOOK, OPEN_BOOK_QUESTION, CLOSED_BOOK_QUESTION)))

QUESTION_PROMPT = (
    "Here is a sentence about {topic}.\nSentence: {sentence}\n\n"
    'Write one question about {topic} whose answer is exactly "{answer}", using only what '
    "the sentence says. The question must make sense without the sentence and must not "
    'contain "{answer}". Reply with the question only.'
)
MIN_QUESTION_WORDS, MAX_QUESTION_WORDS = 3, 40
# A reply line's list mark or numbering, a "Question:" / "Q1." label, and the quotes around it.
_LIST_MARK = re.compile(r"^(?:[-*\u2022>]+|\d+[.)])\s*")
_LABEL = re.compile(r"^(?:question|q)\s*\d*\s*[:.)\-\uff1a]\s*", re.IGNORECASE)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb "
Generate = Callable[[list[str]], list[str]]


def split_sentences(text: str) -> list[str]:
    """Sentences of a passage (a light rule: end punctuation followed by a capital)."""
    parts = []
    for line in text.splitlines():
        parts += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return parts


def mistake_keywords(mistake: Mistake) -> list[str]:
    """The mistake's keywords, else the content words of its queries."""
    words = [k for k in mistake.keywords if k.strip()]
    if not words:
        words = content_words(" ".join(mistake.queries))
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


def facts_of(mistake: Mistake, passage: Passage) -> list[Fact]:
    """The passage's sentences that state the mistake's answer, blanked there.

    The gold answer's sentences when the passage holds it; else the sentences stating one
    of the mistake's other options (a value of the same relation); else none. Sentences
    that name the question's subject come first, each group in text order.
    """
    sents = split_sentences(passage.text)
    gold = mistake.gold_text or ""
    others = [c for c in mistake.choices if c and c.casefold() != gold.casefold()]
    for answers in ([gold], others):
        found = []
        for s in sents:
            m = next((m for a in answers if (m := find_span(s, a))), None)
            if m is not None:
                found.append(Fact(s, m.span(), passage))
        if found:
            subject = [k for k in mistake_keywords(mistake) if k.casefold() != gold.casefold()]
            named = [f for f in found if any(find_span(f.sentence, k) for k in subject)]
            return named + [f for f in found if f not in named]
    return []


def topic_of(passage: Passage, mistake: Mistake) -> str:
    """What a closed-book cloze is about: the passage title, else the main keyword."""
    keywords = mistake_keywords(mistake)
    return passage.title or (keywords[0] if keywords else passage.doc_id)


def question_of(reply: str) -> str | None:
    """The first line of an LLM reply that ends with "?", cleaned; None without one."""
    for line in reply.splitlines():
        q = line.strip().replace("**", "").replace("__", "")
        q = _LIST_MARK.sub("", q)
        for _ in range(2):  # 'Question: "What ...?"' and '"Question: What ...?"'
            q = _LABEL.sub("", q.strip(_QUOTES)).strip(_QUOTES)
        if q.endswith("?"):
            return q
    return None


def check_question(reply: str, fact: Fact, topic: str) -> tuple[str | None, str]:
    """``(question, "ok")`` for a usable LLM question, else ``(None, why)``.

    ``why`` is ``empty``, ``no_question`` (no line ends with "?"), ``too_short``,
    ``too_long`` (word counts outside ``MIN_QUESTION_WORDS``..``MAX_QUESTION_WORDS``),
    ``leaks_answer`` (the span in the question, whole words, any case) or ``off_topic``
    (no content word shared with the sentence or the topic).
    """
    if not reply.strip():
        return None, "empty"
    q = question_of(reply)
    if q is None:
        return None, "no_question"
    n = len(q.split())
    if n < MIN_QUESTION_WORDS:
        return None, "too_short"
    if n > MAX_QUESTION_WORDS:
        return None, "too_long"
    if find_span(q, fact.answer):
        return None, "leaks_answer"
    about = {w.lower() for w in content_words(f"{fact.sentence} {topic}")}
    about -= {w.lower() for w in content_words(fact.answer)}
    if not about & {w.lower() for w in content_words(q)}:
        return None, "off_topic"
    return q, "ok"


def llm_questions(
    facts: Sequence[tuple[Fact, str]], generate: Generate
) -> tuple[list[str | None], dict]:
    """The LLM's question for each ``(fact, topic)``, None where the cloze stands in.

    Each distinct prompt is asked once. Returns the questions and the counts
    ``extractive_llm_questions``, ``extractive_llm_fallbacks`` and
    ``extractive_llm_fallback_reasons`` (per fact).
    """
    prompts = [
        QUESTION_PROMPT.format(topic=topic, sentence=f.sentence, answer=f.answer)
        for f, topic in facts
    ]
    unique = list(dict.fromkeys(prompts))
    replies = list(generate(unique)) if unique else []
    if len(replies) != len(unique):
        raise CemError(
            f"the extractive question generator answered {len(replies)} of {len(unique)} prompts"
        )
    reply_of = dict(zip(unique, replies, strict=True))
    questions, why = [], Counter()
    for (fact, topic), prompt in zip(facts, prompts, strict=True):
        q, reason = check_question(reply_of[prompt], fact, topic)
        questions.append(q)
        if q is None:
            why[reason] += 1
    counts = {
        "extractive_llm_questions": sum(q is not None for q in questions),
        "extractive_llm_fallbacks": sum(why.values()),
        "extractive_llm_fallback_reasons": dict(sorted(why.items())),
    }
    return questions, counts


def extractive_rows(
    mistakes: Sequence[Mistake],
    passages: Iterable[Passage],
    cfg: DictConfig,
    renderer: Renderer,
    round_: int,
    *,
    generate: Generate | None = None,
    stats: dict | None = None,
) -> list[Row]:
    """Open- and closed-book rows for every fact of every mistake's passages.

    Args:
        mistakes: this round's mistakes (``mistakes.jsonl`` rows).
        passages: this round's passages; ``mistake_ids`` links them to mistakes.
        cfg: the ``instructions.extractive`` config.
        renderer: renders the instruction with the chat or plain template.
        round_: the round being built.
        generate: ``question_source=llm``: user prompts -> the LLM's replies, in order
            (``cem.knowledge.retrieve.extractor_generate``, or canned replies in tests).
        stats: ``question_source=llm``: updated with the question and fallback counts.

    Raises:
        CemError: ``question_source=llm`` without ``generate``.
    """
    by_mistake: dict[str, list[Passage]] = {}
    for p in passages:
        for mid in p.mistake_ids:
            by_mistake.setdefault(mid, []).append(p)
    facts = []
    for mistake in mistakes:
        for passage in by_mistake.get(mistake.id, []):
            topic = topic_of(passage, mistake)
            facts += [(fact, topic, mistake.id) for fact in facts_of(mistake, passage)]
    questions: list[str | None] = [None] * len(facts)
    if cfg.question_source == "llm":
        if generate is None:
            raise CemError(
                "instructions.extractive.question_source=llm needs the LLM extractor "
                "(set knowledge.extractor_model, or use question_source=cloze)"
            )
        questions, counts = llm_questions([(f, t) for f, t, _ in facts], generate)
        if stats is not None:
            stats.update(counts)
    rows = []
    for (fact, topic, mistake_id), question in zip(facts, questions, strict=True):
        rows += _fact_rows(fact, topic, mistake_id, cfg, renderer, round_, question)
    return rows


def _fact_rows(
    fact: Fact,
    topic: str,
    mistake_id: str,
    cfg: DictConfig,
    renderer: Renderer,
    round_: int,
    question: str | None = None,
) -> list[Row]:
    """The fact's rows: the LLM's ``question`` in the question wordings, else the cloze."""
    open_book, closed_book = (
        (OPEN_BOOK_QUESTION, CLOSED_BOOK_QUESTION) if question else (OPEN_BOOK, CLOSED_BOOK)
    )
    fields = {"passage": fact.passage.text, "topic": topic, "cloze": fact.cloze,
              "question": question}  # fmt: skip
    users = []
    for i in range(cfg.paraphrases):
        if cfg.open_book:
            users.append(open_book[i].format(**fields))
        if cfg.closed_book:
            users.append(closed_book[i].format(**fields))
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
