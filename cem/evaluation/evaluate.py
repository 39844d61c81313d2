"""Score items with a loaded model and return one record per question."""

from __future__ import annotations

from omegaconf import DictConfig

from cem.benchmarks.prompts import mcf_prompt, render
from cem.benchmarks.schema import MCItem
from cem.errors import ConfigError
from cem.evaluation.parallel import ALONE, Ranks
from cem.records import EvalRecord

GENERATE_SUFFIX = "\nAnswer with the letter of the correct option."


def formulation_of(ecfg: DictConfig, bcfg: DictConfig) -> str:
    """``eval.formulation`` when set, else the benchmark's default."""
    return ecfg.formulation or bcfg.formulation


def chat_template_problem(ecfg: DictConfig, bcfg: DictConfig) -> ConfigError | None:
    """``eval.chat_template`` wraps an mcf question in the chat template; nothing else."""
    if ecfg.chat_template and formulation_of(ecfg, bcfg) != "mcf":
        return ConfigError("eval.chat_template", True, "applies to the mcf formulation only",
                           "eval.formulation=mcf or eval.chat_template=false")  # fmt: skip
    return None


def chat_wrap(tokenizer, user: str, assistant_prefix: str = "") -> str:
    """The user turn in the model's chat template, opened for the assistant's reply."""
    if not getattr(tokenizer, "chat_template", None):
        return f"{user}\n{assistant_prefix}".rstrip("\n")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    return text + assistant_prefix


def loglik_requests(items: list[MCItem], tokenizer, ecfg: DictConfig, bcfg: DictConfig) -> list:
    formulation = formulation_of(ecfg, bcfg)
    if (problem := chat_template_problem(ecfg, bcfg)) is not None:
        raise problem
    requests = []
    for item in items:
        req = render(
            item,
            formulation,
            mcf_target=ecfg.mcf_target,
            instruction=bcfg.instruction,
            answer_cue=bcfg.answer_cue,
        )
        if ecfg.chat_template:
            # The question goes in the user turn; the answer cue opens the assistant's turn.
            user = req.context[: -len(bcfg.answer_cue)].rstrip("\n")
            req.context = chat_wrap(tokenizer, user, bcfg.answer_cue)
        requests.append(req)
    return requests


def score_loglik(
    model,
    tokenizer,
    items: list[MCItem],
    ecfg: DictConfig,
    bcfg: DictConfig,
    max_length: int,
    group: Ranks = ALONE,
) -> list[EvalRecord]:
    """One record per item; in a data-parallel evaluation, rank 0's are every item's and
    the other ranks' are none."""
    from cem.evaluation.metrics import make_record
    from cem.evaluation.scorer import score_requests

    requests = loglik_requests(items, tokenizer, ecfg, bcfg)
    scores = score_requests(
        model,
        tokenizer,
        requests,
        batch_size=ecfg.batch_size,
        max_length=max_length,
        progress=ecfg.progress and group.leader,
        shard=group if group.world > 1 else None,
    )
    scores = group.merge(scores)
    if scores is None:
        return []
    return [
        make_record(it, s, r.continuations)
        for it, s, r in zip(items, scores, requests, strict=True)
    ]


def score_generate(
    model, tokenizer, items: list[MCItem], ecfg: DictConfig, bcfg: DictConfig,
    group: Ranks = ALONE,
) -> list[EvalRecord]:  # fmt: skip
    """As ``score_loglik``, from a greedy answer per item (``eval.mode=generate``)."""
    from cem.evaluation.generate import generate_texts
    from cem.evaluation.metrics import make_generate_record

    prompts = [
        chat_wrap(tokenizer, mcf_prompt(it, bcfg.instruction, "").rstrip("\n") + GENERATE_SUFFIX)
        for it in items
    ]
    texts = generate_texts(
        model, tokenizer, prompts, max_new_tokens=ecfg.max_new_tokens,
        batch_size=ecfg.batch_size, shard=group if group.world > 1 else None,
    )  # fmt: skip
    texts = group.merge(texts)
    if texts is None:
        return []
    return [make_generate_record(item, text) for item, text in zip(items, texts, strict=True)]


def evaluate(
    model,
    tokenizer,
    sets: dict[str, list[MCItem]],
    ecfg: DictConfig,
    bcfg: DictConfig,
    max_length: int,
    partial=None,
    group: Ranks = ALONE,
) -> list[EvalRecord]:
    """Records for every item of every set, each tagged with its formulation and mode.

    Items are scored ``eval.chunk_size`` at a time (``cem.evaluation.stream``); with
    ``partial`` (a ``PartialRecords``), finished chunks are kept and resumed from. With
    ``group`` (``cem.evaluation.parallel``), this rank scores its share of each chunk and
    rank 0 gets every record; the other ranks get none.
    """
    from cem.evaluation.stream import score_in_chunks

    items = [it for name in sets for it in sets[name]]
    label = "generate" if ecfg.mode == "generate" else formulation_of(ecfg, bcfg)

    def score(chunk: list[MCItem]) -> list[EvalRecord]:
        if ecfg.mode == "generate":
            records = score_generate(model, tokenizer, chunk, ecfg, bcfg, group)
        else:
            records = score_loglik(model, tokenizer, chunk, ecfg, bcfg, max_length, group)
        if not group.leader:
            return records
        for rec, item in zip(records, chunk, strict=True):
            rec.formulation = label
            rec.meta = item.meta
        return records

    return score_in_chunks(items, ecfg.chunk_size, partial, score, group)
