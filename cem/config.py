"""Typed configs for the project's own concepts, registered in Hydra's ConfigStore.

Each command's YAML (``conf/<command>.yaml``) starts from one of the ``*Job`` schemas
below, so a misspelt or unknown key fails at composition, before any compute.
Every default lives here or in ``conf/``; the code never hides one in ``cfg.get``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig

from cem.choices import (
    Baseline,
    Benchmark,
    Dtype,
    EmbeddingDtype,
    EvalMode,
    Extractor,
    Finetune,
    Formulation,
    GeneralFormat,
    KeepModels,
    LoggerBackend,
    McfTarget,
    Paradigm,
    PassageMode,
    Protocol,
    QuestionSource,
    Retriever,
    Schedule,
    SearchProvider,
    SourceKind,
    TokenCount,
    WandbMode,
)
from cem.errors import CemError

# Config keys that change no result (where a job writes, what it shows or keeps, W&B):
# the one list. A continued run may change them (cem.loop.run), cem report does not tell
# rows apart by them, finished runs and round-0 stages are reused across them (cem.loop.share:
# run and stage keys), and the tables leave them out of their job folders' names
# (conf/table/_base.yaml, a copy a test holds to this one).
RESULT_NEUTRAL = ("run_dir", "logger", "eval.progress", "eval.devices",
                  "trainer.enable_progress_bar", "loop.keep_models", "loop.share_round0",
                  "loop.reuse_runs", "loop.baseline")  # fmt: skip


def conf_dir() -> Path:
    """The ``conf/`` folder beside the package (editable install or source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "conf", here / "conf"):
        if candidate.is_dir():
            return candidate
    raise CemError(f"config folder not found beside {here}; reinstall with `pip install -e .`")


@dataclass
class ModelConfig:
    """A causal LM: an offline asset, a local folder, a hub id, or a random tiny Llama."""

    name: str = MISSING  # short label used in outputs and W&B
    path: str | None = None  # local folder or hub id; ignored when ``asset`` is set
    asset: str | None = (
        None  # name of an offline asset that provides the model (``cem assets list``)
    )
    tokenizer: str | None = None  # tokenizer folder or hub id; defaults to the model's
    random_init: bool = False  # build from ``arch`` with random weights (tests only)
    arch: dict[str, Any] = field(default_factory=dict)  # LlamaConfig kwargs for ``random_init``
    dtype: Dtype = Dtype.float32
    # Where inference runs (eval, generate, the extractor, the question writer, the dense
    # embedder): auto (the GPU when there is one) | cpu | cuda | cuda:N (cem.device).
    device: str = "auto"
    revision: str | None = None
    trust_remote_code: bool = False
    chat: bool = False  # an instruct/chat model: generation mode wraps prompts in its chat template
    max_length: int = (
        2048  # longest prompt+continuation scored; longer ones are truncated on the left
    )


@dataclass
class BenchmarkConfig:
    """Where the multiple-choice items come from and how they are posed."""

    name: Benchmark = MISSING  # world, or the format of the files at ``path``
    path: str | None = None  # a file or a folder of files (not used by ``world``)
    set_name: str = "exam"  # which set a loaded file counts as
    limit: int | None = None  # keep the first N items of each set (reading stops there)
    max_row_bytes: int = 1_000_000  # a longer line of a benchmark file is a data error
    skip_bad_rows: bool = False  # skip malformed rows and report how many, instead of failing
    # File benchmarks only: split the loaded items (per subject, seeded by ``seed``) into
    # pool / exam / test with pool_fraction and exam_fraction, as ``cem run`` needs.
    split: bool = False
    formulation: Formulation = Formulation.cf  # the default (chosen on the instruction pool)
    instruction: str = ""  # optional line put before every MCF question
    answer_cue: str = "Answer:"
    # ``world`` only: the seeded split of countries and what is asked about them.
    seed: int = 0
    pool_fraction: float = 0.2
    exam_fraction: float = 0.4
    relations: list[str] = field(
        default_factory=lambda: ["capital", "region", "subregion", "language", "demonym"]
    )
    # Transfer sets: other questions about the *exam* countries (each set ``transfer_<name>``).
    transfer: list[str] = field(default_factory=lambda: ["reverse", "borders"])


@dataclass
class EvalConfig:
    """How items are scored."""

    formulation: Formulation | None = None  # null takes the benchmark's default
    mcf_target: McfTarget = McfTarget.letter
    mode: EvalMode = EvalMode.loglik
    batch_size: int = 32  # questions per forward pass (options are expanded from the cached prefix)
    # Questions rendered, tokenised and scored at a time: memory stays flat as the benchmark
    # grows, and an interrupted evaluation resumes from its finished chunks.
    chunk_size: int = 2048
    chat_template: bool = False  # loglik: wrap the question in the model's chat template
    max_new_tokens: int = 24  # generate mode
    sets: list[str] | None = None  # which sets to score; null scores every set the benchmark has
    # Also score the general probe (cem.benchmarks.probe): NLL per token on held-out corpus
    # passages unrelated to the benchmark, written to eval/general.json (forgetting).
    general_probe: bool = True
    progress: bool = True
    # Processes that share the scoring, one per device (cem.evaluation.parallel): N > 1
    # starts N ranks through torch.distributed.run; under torchrun its world size wins.
    devices: int = 1


@dataclass
class SearchConfig:
    """The provider every ``web_search`` source uses (``conf/knowledge/search/``)."""

    provider: SearchProvider = SearchProvider.searxng
    endpoint: str | None = None  # searxng: the instance's base URL; others: the API URL
    api_key_env: str | None = None  # the env var holding the key (keyed providers only)


@dataclass
class SourceConfig:
    """One knowledge source. ``kind`` picks the implementation; other keys tune it."""

    kind: SourceKind = MISSING
    quota: float = 1.0  # share of each mistake's passages in a ``mix`` (normalised over sources)
    top_k: int = 5  # passages asked of the source per query
    # Corpus sources (wiki_offline, wiki_dense, local_corpus).
    path: str | None = (
        None  # local_corpus: JSONL/Parquet file or folder of .txt/.md files; wiki_*: the summaries file (default: the asset)
    )
    text_field: str = "text"  # local_corpus JSONL/Parquet: the column holding the text
    retriever: Retriever = Retriever.bm25  # local_corpus only
    embedding_asset: str = "minilm-l6-v2"  # dense retrieval: the sentence-embedding asset
    embedding_model: str | None = None  # or a local folder / hub id, which wins over the asset
    # bf16 builds the default index in 44 s instead of 131 s (2 CPU cores), top-5 overlap
    # with float32 0.99-1.0 (benchmarks/RESULTS.md); the dtype is part of the index's key.
    embedding_dtype: EmbeddingDtype = EmbeddingDtype.auto
    index_dir: str | None = None  # where indexes are cached; null: $CEM_CACHE/indexes
    # HTTP sources (wikipedia_api, web_search).
    provider: SearchProvider = SearchProvider.searxng  # web_search: the search API
    endpoint: str | None = None  # API URL (web_search searxng: the instance's base URL)
    api_key_env: str | None = None  # web_search: name of the env var holding the key
    user_agent: str = "cem/0.1 (CEM research framework; add your contact: user_agent=...)"
    timeout_s: float = 10.0  # API calls: one deadline per attempt (connect, headers, body)
    retries: int = 3
    backoff_s: float = 0.5  # first retry waits this long, then doubles
    max_response_bytes: int = 2_000_000  # API responses, after decompression
    rate_limit_per_s: float = 5.0  # per host
    cache_dir: str | None = None  # on-disk HTTP response cache; null: $CEM_CACHE/http
    fetch_pages: int = 5  # web_search: result pages fetched per query
    page_max_bytes: int = 1_000_000  # after decompression
    page_timeout_s: float = 10.0  # one deadline per page: every hop, retries included
    page_max_redirects: int = 3  # redirects followed per page, each hop checked
    mmr_lambda: float = 0.7  # web_search: relevance vs diversity when choosing passages
    market: str = "en-US"  # web_search: results' language-region (searxng, brave, serpapi_bing)
    retry_after_cap_s: float = 60.0  # longest Retry-After honoured before retrying


@dataclass
class KnowledgeConfig:
    """Where CPT text comes from and how it is cleaned (METHOD.md, steps 3 and 4)."""

    name: str = (
        MISSING  # wiki_offline | wiki_dense | local_corpus | wikipedia_api | web_search | mix
    )
    sources: list[SourceConfig] = field(default_factory=list)
    search: SearchConfig = field(default_factory=SearchConfig)  # web_search's provider
    # Hosts or CIDRs the page fetcher may reach although they are not public addresses
    # (loopback, private, link-local...); e.g. [127.0.0.1] for a local test server.
    allowed_private_hosts: list[str] = field(default_factory=list)
    passages: PassageMode = PassageMode.mistakes  # where the CPT passages come from
    corpus_fraction: float = 1.0  # passages=full: a seeded random share of the corpus documents
    extractor: Extractor = Extractor.rule  # how mistakes become search queries
    extractor_model: str | None = None  # llm extractor: local folder or hub id of an instruct model
    extractor_max_new_tokens: int = 64
    # The llm extractor's model, also the extractive question writer's: prompts per generate
    # call (left-padded), and its weights' dtype. Greedy replies do not depend on the batch
    # in float32; in bfloat16 a near-tie can go the other way in a batch.
    extractor_batch_size: int = 8
    extractor_dtype: Dtype = Dtype.auto
    queries_per_mistake: int = 2
    top_k_per_mistake: int = 3  # passages kept per mistake after leak guard and dedup
    passage_tokens: int = 256  # chunk budget, counted with the model's tokenizer
    leak_ngram: int = 13  # drop passages sharing a normalised n-gram with question+answer
    dedup_jaccard: float = 0.8  # near-duplicate threshold on word 5-gram shingles


@dataclass
class MistakesConfig:
    """Which exam items count as mistakes (METHOD.md, step 2)."""

    margin_threshold: float = 0.0  # also keep right items whose margin is below this (0: off)
    max_mistakes: int | None = None  # cap, chosen with ``seed``
    seed: int = 0


@dataclass
class InstructionTypeConfig:
    """Settings every instruction type shares."""

    enabled: bool = True
    share: float = 0.25  # share of the CIT token budget (normalised over the enabled types)
    loss_weight: float = 1.0  # multiplies this kind's per-token loss


@dataclass
class NormativeConfig(InstructionTypeConfig):
    """Pool questions in the benchmark's exact prompt and answer format (teaches the schema)."""

    formulations: list[Formulation] = field(
        default_factory=lambda: [Formulation.cf, Formulation.mcf]
    )


@dataclass
class ExtractiveConfig(InstructionTypeConfig):
    """Reading comprehension on the retrieved passages, aimed at the missing fact."""

    question_source: QuestionSource = QuestionSource.cloze
    llm_max_new_tokens: int = 48  # question_source=llm: greedy tokens per question
    paraphrases: int = 2  # question wordings per fact
    open_book: bool = True  # passage in context
    closed_book: bool = True  # no context


@dataclass
class ReviewConfig(InstructionTypeConfig):
    """Closed-book recall of what the passages state."""

    earlier_rounds_sample: float = 0.3  # share of earlier rounds' passages reviewed again
    max_sentences: int = 3  # key sentences per answer


@dataclass
class GeneralConfig(InstructionTypeConfig):
    """General instruction data that keeps general ability."""

    path: str | None = None  # Alpaca or ShareGPT JSON/JSONL; null: items from unrelated articles
    format: GeneralFormat = GeneralFormat.alpaca
    max_items: int = 64


@dataclass
class InstructionsConfig:
    """The four CIT instruction types (METHOD.md, step 5)."""

    name: str = "all"
    normative: NormativeConfig = field(default_factory=NormativeConfig)
    extractive: ExtractiveConfig = field(default_factory=ExtractiveConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    general: GeneralConfig = field(default_factory=GeneralConfig)
    chat_template: bool = True  # render with the tokenizer's chat template when it has one


@dataclass
class MixConfig:
    """How CIT and CPT share the training tokens."""

    name: str = "default"
    cit_ratio: float = 0.5  # CIT share of the training tokens (as ``count`` counts them)
    count: TokenCount = TokenCount.all_tokens
    max_tokens: int | None = None  # total budget; null: as many as the CPT text allows
    seed: int = 0


@dataclass
class ParadigmConfig:
    name: Paradigm = Paradigm.parallel


@dataclass
class ReplayConfig:
    name: str = "default"
    fraction: float = 0.1  # share of earlier rounds' items mixed into this round
    correct_items: int = 0  # pool/exam-format items the model already answers right, replayed
    seed: int = 0


@dataclass
class ProtocolConfig:
    name: Protocol = Protocol.heldout


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )


@dataclass
class TrainConfig:
    """Optimisation of one round (the Lightning Trainer itself is the ``trainer`` group)."""

    finetune: Finetune = Finetune.lora
    lora: LoraConfig = field(default_factory=LoraConfig)
    lr: float = 2e-4
    weight_decay: float = 0.0
    schedule: Schedule = Schedule.cosine
    warmup_ratio: float = 0.05
    epochs: int = 2
    max_steps: int = -1  # -1: run ``epochs``
    seq_len: int = 512  # packed sequence length
    batch_size: int = 8  # sequences per step per device
    grad_accum: int = 1
    pack: bool = (
        True  # pack examples into sequences without cross-attention; false: pad with length buckets
    )
    # Per kind; the CIT kinds left out take their instruction type's loss_weight.
    loss_weights: dict[str, float] = field(default_factory=lambda: {"cpt": 1.0, "replay": 1.0})
    checkpoint_every_n_steps: int = 50
    # The merged model's safetensors shards: saving holds one in host memory at a time.
    max_shard_size: str = "5GB"
    seed: int = II("seed")  # the job's seed


@dataclass
class EvalJob:
    run_dir: str = MISSING
    seed: int = 0
    model: ModelConfig = MISSING
    benchmark: BenchmarkConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class RetrieveJob:
    run_dir: str = MISSING
    seed: int = 0
    model: ModelConfig = MISSING  # its tokenizer counts passage tokens
    benchmark: BenchmarkConfig = MISSING  # every evaluation set feeds the leak guard
    knowledge: KnowledgeConfig = MISSING
    mistakes: MistakesConfig = field(default_factory=MistakesConfig)


@dataclass
class BuildJob:
    run_dir: str = MISSING
    seed: int = 0
    round: int = 1  # the round whose training set is built (earlier rounds feed review and replay)
    earlier_rounds: list[str] = field(default_factory=list)  # run folders of earlier rounds
    model: ModelConfig = MISSING  # its tokenizer renders and counts
    benchmark: BenchmarkConfig = MISSING  # the instruction pool and the evaluation sets
    knowledge: KnowledgeConfig = MISSING  # leak_ngram for the heldout check
    instructions: InstructionsConfig = field(default_factory=InstructionsConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    paradigm: ParadigmConfig = field(default_factory=ParadigmConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # Normative rows match its mcf_target


@dataclass
class TrainJob:
    run_dir: str = MISSING
    seed: int = 0
    model: ModelConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.Trainer kwargs (_target_)
    instructions: InstructionsConfig = field(default_factory=InstructionsConfig)  # loss weights


@dataclass
class WarmupConfig:
    """The schema warm-up before round 1 (METHOD.md, step 0): Normative-only training on the pool."""

    enabled: bool = True
    max_steps: int = 4  # optimizer steps of the warm-up; -1: ``epochs`` over the warm-up set
    epochs: int = 1  # with max_steps=-1: passes over the warm-up set
    max_tokens: int | None = None  # token budget of the warm-up set; null: every pool item once


@dataclass
class LoopConfig:
    """How many rounds ``cem run`` makes and when it stops early (METHOD.md, step 7)."""

    rounds: int = 2  # rounds of evaluate -> mistakes -> retrieve -> build -> train
    baseline: Baseline = Baseline.none  # a label set by baseline= (none: CEM itself)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    patience: int | None = 1  # stop after this many rounds without exam gain; null: never
    min_delta: float = 0.0  # an exam accuracy rise must exceed this to count as a gain
    keep_models: KeepModels = KeepModels.last  # finished training's checkpoints always go
    # Reuse round 0's evaluation and the warm-up of an earlier job with the same inputs
    # (cem.loop.share: keyed by their job configs, in $CEM_CACHE/shared).
    share_round0: bool = True
    # Reuse a finished run whose config (but RESULT_NEUTRAL keys) and code are the same: its
    # files are hard-linked in (cem.loop.share), e.g. the default row shared by the tables.
    reuse_runs: bool = True


# Keys a release renamed: the old key -> its new key and the new values of the old ones.
# cem refuses an old key, on the command line or in a config file, naming the new one and
# the override to type (cem.validate.renamed_problem).
RENAMED: dict[str, tuple[str, dict[object, str]]] = {
    "logger.name": ("logger.backend", {}),
    "logger.wandb": ("logger.backend", {True: "wandb", False: "csv"}),
}


@dataclass
class LoggerConfig:
    """Where ``cem run`` mirrors its results; ``D/metrics.csv`` is always written."""

    backend: LoggerBackend = LoggerBackend.wandb  # csv: D/metrics.csv alone, no W&B
    mode: WandbMode = WandbMode.offline  # $WANDB_MODE wins when set
    project: str = "cem"
    entity: str | None = None
    group: str | None = None  # null: the run folder's name; a table sets its name
    # null: the job's overrides without the seed, so W&B groups a table's jobs into the rows
    # of `cem report`; a run with no overrides is "cem-run". Cut to 64 characters (W&B's limit).
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)  # the protocol is always added
    mistakes_rows: int = 500  # rows of each round's mistakes table (0: no table)


@dataclass
class RunJob:
    """``cem run``: the whole loop, every stage's settings in one config."""

    run_dir: str = MISSING
    seed: int = 0
    model: ModelConfig = MISSING
    benchmark: BenchmarkConfig = MISSING
    knowledge: KnowledgeConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    mistakes: MistakesConfig = field(default_factory=MistakesConfig)
    instructions: InstructionsConfig = field(default_factory=InstructionsConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    paradigm: ParadigmConfig = field(default_factory=ParadigmConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.Trainer kwargs (_target_)
    loop: LoopConfig = field(default_factory=LoopConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


# Each Hydra command's schema, stored as ``<command>_schema`` (``conf/<command>.yaml`` starts there).
SCHEMAS: dict[str, type] = {"eval": EvalJob, "retrieve": RetrieveJob, "build": BuildJob,
                            "train": TrainJob, "run": RunJob}  # fmt: skip


def register_configs() -> None:
    cs = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        cs.store(name=f"{command}_schema", node=schema)


def resolve_run_dir(cfg: DictConfig) -> Path:
    """Where this job writes: ``run_dir``, or the job's own folder inside a Hydra sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.run_dir)
