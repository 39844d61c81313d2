"""General instructions: data that keeps the model's general ability.

By default they are made from corpus articles unrelated to the mistakes (the offline
Wikipedia summaries, minus every title a passage or a benchmark item names):
"What is X?" -> the article's first sentence, or "Summarise ..." -> the whole summary.
A user's file replaces them: ``general.path`` in Alpaca (``instruction``/``input``/
``output``) or ShareGPT (``conversations`` of ``from``/``value``) form, as a JSON array or
JSON lines. A bad row raises DataError naming the file and the line (or the array row).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cem.curriculum.extractive import split_sentences
from cem.curriculum.render import Renderer, Row
from cem.errors import ConfigError, DataError

SUMMARIES_ASSET = "wiki-summaries-en"
SUMMARIES_FILE = "summaries_en-us.json"
FORMS = ("What is {title}?", "Summarise what Wikipedia says about {title}.")
ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "system": "system",
}


def summaries_path() -> Path:
    """The Wikipedia summaries of the offline asset (fetched on first use)."""
    from cem.assets.fetch import asset_dir

    return asset_dir(SUMMARIES_ASSET) / SUMMARIES_FILE


def article_rows(
    summaries: dict[str, dict[str, Any]],
    exclude: Iterable[str],
    max_items: int,
    renderer: Renderer,
    round_: int,
    seed: int,
) -> list[Row]:
    """Up to ``max_items`` seeded articles whose titles are not in ``exclude`` (any case)."""
    banned = {t.casefold() for t in exclude if t}
    titles = sorted(
        t for t, s in summaries.items() if t.casefold() not in banned and s.get("extract")
    )
    rng = random.Random(seed)
    rows = []
    for title in rng.sample(titles, min(max_items, len(titles))):
        extract = summaries[title]["extract"].strip()
        form = rng.randrange(len(FORMS))
        answer = split_sentences(extract)[0] if form == 0 else extract
        user = FORMS[form].format(title=title)
        prompt, response = renderer.instruction(user, answer)
        rows.append(Row(prompt, response, "general", round_, [title], raw=f"{user}\n{answer}"))
    return rows


def read_rows(path: Path) -> list[tuple[int, bool, Any]]:
    """``(line or row number, is_line, value)`` of a JSON array or a JSON-lines file."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON ({e.msg})") from None
        return [(i, False, v) for i, v in enumerate(values, 1)]
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((lineno, True, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(path, lineno, f"invalid JSON ({e.msg})") from None
    return out


def _alpaca(row: Any) -> list[dict[str, str]]:
    if not isinstance(row, dict):
        raise ValueError("expected an object with instruction, input and output")
    for key in ("instruction", "output"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"'{key}' must be a non-empty string")
    if not isinstance(row.get("input", ""), str):
        raise ValueError("'input' must be a string")
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input", "").strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def _sharegpt(row: Any) -> list[dict[str, str]]:
    turns = row.get("conversations") if isinstance(row, dict) else None
    if not isinstance(turns, list) or not turns:
        raise ValueError("expected an object with a non-empty 'conversations' list")
    messages = []
    for t in turns:
        if (
            not isinstance(t, dict)
            or t.get("from") not in ROLES
            or not isinstance(t.get("value"), str)
        ):
            raise ValueError(
                f"each turn needs 'from' (one of {', '.join(ROLES)}) and a string 'value'"
            )
        messages.append({"role": ROLES[t["from"]], "content": t["value"]})
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # a trailing question has no answer to learn
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("needs a human turn followed by an assistant (gpt) turn")
    return messages


def file_rows(cfg: DictConfig, renderer: Renderer, round_: int, seed: int) -> list[Row]:
    """Up to ``general.max_items`` seeded rows of the user's Alpaca or ShareGPT file."""
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ConfigError(
            "instructions.general.path",
            cfg.path,
            "must be an existing file",
            "instructions.general.path=/data/alpaca.json or ~instructions.general.path",
        )
    parse = {"alpaca": _alpaca, "sharegpt": _sharegpt}[cfg.format]
    conversations = []
    for where, is_line, value in read_rows(path):
        try:
            conversations.append((where, parse(value)))
        except ValueError as e:
            line, reason = (where, str(e)) if is_line else (None, f"row {where}: {e}")
            raise DataError(path, line, f"bad {cfg.format} row: {reason}") from None
    if not conversations:
        raise DataError(path, None, f"no {cfg.format} rows")
    chosen = random.Random(seed).sample(conversations, min(cfg.max_items, len(conversations)))
    rows = []
    for where, messages in chosen:
        prompt, response = renderer.messages(messages)
        raw = "\n".join(m["content"] for m in messages)
        rows.append(Row(prompt, response, "general", round_, [f"{path.name}:{where}"], raw=raw))
    return rows


def general_rows(
    cfg: DictConfig, renderer: Renderer, round_: int, seed: int, exclude: Iterable[str]
) -> list[Row]:
    """General rows from ``general.path`` or, when it is null, from unrelated articles.

    Args:
        cfg: the ``instructions.general`` config.
        renderer: renders with the chat or plain template.
        round_: the round being built.
        seed: seeds which rows or articles are taken.
        exclude: titles of articles related to the mistakes or the benchmark.
    """
    if cfg.path:
        return file_rows(cfg, renderer, round_, seed)
    with open(summaries_path(), encoding="utf-8") as fh:
        summaries = json.load(fh)
    return article_rows(summaries, exclude, cfg.max_items, renderer, round_, seed)
