"""Review instructions: closed-book recall of what the passages state.

"What do you know about X?" -> the key sentences about X, where X is a passage's title
(else the main keyword of its mistake) and the key sentences are the ones sharing the
most words with the mistakes' keywords, up to ``review.max_sentences``, in text order.
This round's passages are all reviewed; a seeded sample (``earlier_rounds_sample``) of
earlier rounds' passages is reviewed again, which counters forgetting.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from omegaconf import DictConfig

from cem.curriculum.extractive import mistake_keywords, split_sentences
from cem.curriculum.render import Renderer, Row
from cem.knowledge.leak import tokens
from cem.knowledge.types import Passage
from cem.records import Mistake

QUESTION = "What do you know about {topic}?"


def key_sentences(passages: Sequence[Passage], keywords: Sequence[str], k: int) -> list[str]:
    """The ``k`` sentences sharing most keyword words, in text order (ties: earlier first)."""
    words = {w for kw in keywords for w in tokens(kw)}
    seen, ranked = set(), []
    for sentence in (s for p in passages for s in split_sentences(p.text)):
        if sentence in seen:  # the same sentence in two chunks of one article
            continue
        seen.add(sentence)
        ranked.append((-len(words & set(tokens(sentence))), len(ranked), sentence))
    top = sorted(ranked)[:k]
    return [s for _, _, s in sorted(top, key=lambda t: t[1])]


def _groups(passages: Sequence[Passage]) -> dict[str, list[Passage]]:
    """Passages by document (title, else doc id), in first-seen order."""
    groups: dict[str, list[Passage]] = {}
    for p in passages:
        groups.setdefault(p.title or p.doc_id, []).append(p)
    return groups


def _group_rows(
    passages: Sequence[Passage],
    keywords: dict[str, list[str]],
    cfg: DictConfig,
    renderer: Renderer,
    round_: int,
) -> list[Row]:
    rows = []
    for key, group in _groups(passages).items():
        mids = list(dict.fromkeys(m for p in group for m in p.mistake_ids))
        words = [w for m in mids for w in keywords.get(m, [])]
        topic = group[0].title or (words[0] if words else key)
        answer = " ".join(key_sentences(group, words, cfg.max_sentences))
        if not answer:
            continue
        user = QUESTION.format(topic=topic)
        prompt, response = renderer.instruction(user, answer)
        ids = list(dict.fromkeys([*(p.doc_id for p in group), *mids]))
        rows.append(
            Row(prompt, response, "review", round_, source_ids=ids, raw=f"{user}\n{answer}")
        )
    return rows


def review_rows(
    passages: Sequence[Passage],
    mistakes: Sequence[Mistake],
    earlier: Sequence[tuple[list[Passage], list[Mistake]]],
    cfg: DictConfig,
    renderer: Renderer,
    round_: int,
    seed: int,
) -> list[Row]:
    """Review rows over this round's passages and a seeded sample of earlier rounds'.

    Args:
        passages: this round's passages.
        mistakes: this round's mistakes (their keywords rank the sentences).
        earlier: ``(passages, mistakes)`` of each earlier round.
        cfg: the ``instructions.review`` config.
        renderer: renders the instruction with the chat or plain template.
        round_: the round being built.
        seed: seeds the sample of earlier passages.
    """
    keywords = {m.id: mistake_keywords(m) for m in mistakes}
    rows = _group_rows(passages, keywords, cfg, renderer, round_)
    old = [p for ps, _ in earlier for p in ps]
    n = round(cfg.earlier_rounds_sample * len(old))
    if n:
        old_keywords = {m.id: mistake_keywords(m) for _, ms in earlier for m in ms}
        sample = random.Random(seed).sample(old, n)
        rows += _group_rows(sample, old_keywords, cfg, renderer, round_)
    return rows
