"""The config's choices: one ``StrEnum`` for each field whose value comes from a fixed list.

Each is its field's type in ``cem.config``, so OmegaConf refuses any other value when the
config is composed, naming the key and the allowed values; no stage checks them again.
A member's name is its value: OmegaConf reads a value by its name and writes a config
YAML with names, so saved configs hold the same strings as before, and ``x == "mcf"``
holds for a member as for a string.
"""

from __future__ import annotations

from enum import StrEnum


class Dtype(StrEnum):
    """``model.dtype``: the weights' dtype for inference (``auto``: ``cem.device.resolve_dtype``)."""

    auto = "auto"  # bfloat16 on a GPU or a CPU with native bf16 (AVX512-BF16, AMX), else float32
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Benchmark(StrEnum):
    """``benchmark.name``: the built-in ``world`` or a file format (``cem.benchmarks.loaders``)."""

    world = "world"
    xiezhi = "xiezhi"
    mmlu = "mmlu"
    ceval = "ceval"
    jsonl = "jsonl"
    parquet = "parquet"


class Formulation(StrEnum):
    """How a question is posed: multiple-choice (letters) or cloze (the option text)."""

    mcf = "mcf"
    cf = "cf"


class McfTarget(StrEnum):
    """``eval.mcf_target``: in MCF, score the letter or the option text."""

    letter = "letter"
    text = "text"


class EvalMode(StrEnum):
    """``eval.mode``: log-likelihood of each option, or a greedy answer."""

    loglik = "loglik"
    generate = "generate"


class SourceKind(StrEnum):
    """``knowledge.sources[*].kind`` (``cem.knowledge.sources``)."""

    wiki_offline = "wiki_offline"  # BM25 over the offline Wikipedia summaries
    wiki_dense = "wiki_dense"  # embeddings of the same summaries
    local_corpus = "local_corpus"  # the user's files
    wikipedia_api = "wikipedia_api"
    web_search = "web_search"  # through ``knowledge.search.provider``


class Retriever(StrEnum):
    """``knowledge.sources[*].retriever`` of a ``local_corpus``."""

    bm25 = "bm25"
    dense = "dense"


class SearchProvider(StrEnum):
    """The web search API behind a ``web_search`` source (``cem.knowledge.providers``)."""

    searxng = "searxng"  # a self-hosted SearXNG instance's JSON API; no key
    brave = "brave"  # the Brave Search API
    tavily = "tavily"  # the Tavily search API
    serpapi_bing = "serpapi_bing"  # SerpApi with engine=bing: the paper's Bing results
    bing = "bing"  # retired: the Bing Search APIs shut down on 2025-08-11; refused with the fix


class EmbeddingDtype(StrEnum):
    """The dense embedder's weights (``cem.knowledge.dense.embedding_dtype``)."""

    auto = "auto"  # bfloat16 on a GPU or a CPU with native bf16 (AVX512-BF16, AMX), else float32
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class PassageMode(StrEnum):
    """``knowledge.passages``: where the CPT passages come from."""

    mistakes = "mistakes"  # CEM: retrieved for this round's mistakes
    random = "random"  # random corpus passages, as many tokens as CEM kept (a baseline)
    full = "full"  # every passage of the corpus (the full-corpus CPT baseline)


class Extractor(StrEnum):
    """``knowledge.extractor``: how mistakes become search queries."""

    rule = "rule"
    llm = "llm"


class QuestionSource(StrEnum):
    """``instructions.extractive.question_source``: who writes the Extractive questions."""

    cloze = "cloze"  # blank the span
    llm = "llm"  # knowledge.extractor_model writes one (cloze on rejects)


class GeneralFormat(StrEnum):
    """``instructions.general.format``: the layout of a general instruction file."""

    alpaca = "alpaca"
    sharegpt = "sharegpt"


class TokenCount(StrEnum):
    """What ``mix.cit_ratio`` and ``mix.max_tokens`` count."""

    loss_tokens = "loss_tokens"  # tokens that bear loss: CIT responses, all of a CPT row
    all_tokens = "all_tokens"  # prompts too


class Paradigm(StrEnum):
    """``paradigm.name``: how CPT and CIT rows are ordered (``cem.curriculum.mixing``)."""

    parallel = "parallel"
    sequential = "sequential"
    cpt_only = "cpt_only"
    cit_only = "cit_only"


class Protocol(StrEnum):
    """``protocol.name``: whether training may state evaluation questions."""

    heldout = "heldout"
    retest = "retest"


class Finetune(StrEnum):
    """``train.finetune``."""

    lora = "lora"
    full = "full"


class Schedule(StrEnum):
    """``train.schedule``: the learning rate after warm-up."""

    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class Baseline(StrEnum):
    """``loop.baseline``: the label that ``baseline=`` sets (``conf/baseline/``)."""

    none = "none"  # CEM itself
    random_cpt = "random_cpt"
    full_corpus_cpt = "full_corpus_cpt"
    full_corpus_cpt_steps = "full_corpus_cpt_steps"
    full_corpus_cpt_fifth = "full_corpus_cpt_fifth"
    cit_only = "cit_only"


class KeepModels(StrEnum):
    """Which trained models ``cem run`` keeps on disk (0.5 GB each for the default in fp32)."""

    all = "all"  # every round's model and checkpoints
    last = "last"  # the newest model only: each is deleted once the next one is trained
    none = "none"  # not even the final one, once it is scored (sweeps that need only results)


class LoggerBackend(StrEnum):
    """``logger.backend``: where ``cem run`` mirrors its results (``conf/logger/``).

    ``D/metrics.csv`` is written whatever the backend; ``csv`` is that file alone.
    """

    wandb = "wandb"  # Weights & Biases as well
    csv = "csv"


class WandbMode(StrEnum):
    """``logger.mode``; ``$WANDB_MODE`` wins when set."""

    offline = "offline"
    online = "online"
    disabled = "disabled"


def values(choices: type[StrEnum]) -> list[str]:
    """The allowed values, in their order, as plain strings."""
    return [c.value for c in choices]
