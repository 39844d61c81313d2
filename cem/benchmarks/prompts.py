"""Turn multiple-choice items into scoring requests in the two standard formulations.

The terms follow OLMES and lm-evaluation-harness:

* ``mcf`` (multiple-choice formulation): the options are listed with letters after the
  question and the letters are scored (``mcf_target=letter``), or the option text is
  scored after the answer cue (``mcf_target=text``).
* ``cf`` (cloze formulation): no options are shown; each option's text is scored as the
  continuation of the item's stem ("The capital of Bhutan is" -> " Thimphu"). Without a
  stem, a ``_____`` blank takes the option in its place, and otherwise the option follows
  "Question: ...\\nAnswer:".
"""

from __future__ import annotations

import re

from cem.benchmarks.schema import LETTERS, MCItem, Request

# Xiezhi writes the blank as five underscores, C-Eval and some Xiezhi rows as four.
BLANK = re.compile(r"_{3,}")


def _delimiter(context: str) -> str:
    """A space before the continuation, except after CJK text and after an open line."""
    if not context or context.endswith("\n"):
        return ""
    return "" if _is_cjk(context[-1]) else " "


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return 0x2E80 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF or 0xFF00 <= code <= 0xFFEF


def mcf_prompt(item: MCItem, instruction: str = "", answer_cue: str = "Answer:") -> str:
    """The question with lettered options and the answer cue, as shown to the model."""
    if len(item.choices) > len(LETTERS):
        raise ValueError(f"item {item.id} has {len(item.choices)} options; at most {len(LETTERS)}")
    lines = [instruction, ""] if instruction else []
    lines.append(item.question)
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices)]
    lines.append(answer_cue)
    return "\n".join(lines)


def render_mcf(item: MCItem, target: str, instruction: str, answer_cue: str) -> Request:
    context = mcf_prompt(item, instruction, answer_cue)
    delim = _delimiter(context)
    if target == "letter":
        conts = [delim + LETTERS[i] for i in range(len(item.choices))]
    else:
        conts = [delim + c for c in item.choices]
    return Request(context=context, continuations=conts)


def render_cf(item: MCItem, answer_cue: str) -> Request:
    if item.stem is not None:
        context = item.stem
        return Request(
            context=context, continuations=[_delimiter(context) + c for c in item.choices]
        )
    blank = BLANK.search(item.question)
    if blank:
        # The option fills the blank and the rest of the sentence follows it, so the
        # score covers how well the option fits its whole context.
        head = item.question[: blank.start()].rstrip(" ")
        tail = BLANK.sub("", item.question[blank.end() :])
        return Request(
            context=head, continuations=[_delimiter(head) + c + tail for c in item.choices]
        )
    context = f"Question: {item.question}\n{answer_cue}"
    return Request(context=context, continuations=[_delimiter(context) + c for c in item.choices])


def render(
    item: MCItem,
    formulation: str,
    *,
    mcf_target: str = "letter",
    instruction: str = "",
    answer_cue: str = "Answer:",
) -> Request:
    """Render one item as a log-likelihood request.

    Args:
        item: the question.
        formulation: ``mcf`` or ``cf``.
        mcf_target: ``letter`` or ``text`` (MCF only).
        instruction: a line put before every MCF question.
        answer_cue: the line that ends an MCF prompt ("Answer:").
    """
    if formulation == "mcf":
        return render_mcf(item, mcf_target, instruction, answer_cue)
    if formulation == "cf":
        return render_cf(item, answer_cue)
    raise ValueError(f"unknown formulation {formulation!r}; expected mcf or cf")
