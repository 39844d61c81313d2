"""The training set as batches: tokenise, pack without cross-attention, batch phase by phase.

Each row of ``train.parquet`` becomes one example: prompt tokens, then response tokens,
then EOS. CIT rows (non-empty ``response``) are trained on the response and EOS only; CPT
rows (empty ``response``) on every token. Examples are packed first-fit-decreasing into
``seq_len`` sequences (``train.pack=true``) or padded in length buckets (``false``).

A batch carries next-token ``targets`` (already shifted, -100 where no loss) and per-token
``segment_ids`` and ``position_ids`` that restart with every example, so the module can
build a block-diagonal causal mask: no token attends across an example boundary, and no
token predicts the first token of the next example.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cem.curriculum.render import KINDS
from cem.errors import CemError, DataError

COLUMNS = ("prompt", "response", "kind", "phase")
IGNORE = -100
# Bucketing (pack=false) sorts by length within windows of this many batches: long enough
# to group similar lengths, short enough that batch order stays random.
BUCKET_BATCHES = 16


@dataclass
class Example:
    """One tokenised row: ``targets[t]`` is the label of ``input_ids[t + 1]`` (-100: none)."""

    input_ids: list[int]
    targets: list[int]
    kind: int  # index into KINDS
    phase: int
    row: int = -1  # its row in train.parquet (diagnostics: which rows training reached)


def read_train_set(path: Path) -> list[dict]:
    """The rows of ``train.parquet``, checked: the file exists, has rows and known kinds."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise CemError(
            f"training set {path} not found; build it first with `cem build run_dir={path.parent.parent}`"
        )
    table = pq.read_table(path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(path, None, f"missing column(s) {', '.join(missing)}")
    rows = table.select(list(COLUMNS)).to_pylist()
    if not rows:
        raise DataError(
            path,
            None,
            "the training set has no rows; check the mistakes and retrieval of this round",
        )
    for i, row in enumerate(rows, 1):
        if row["kind"] not in KINDS:
            raise DataError(path, i, f"kind {row['kind']!r} is not one of {', '.join(KINDS)}")
        if not row["prompt"] and not row["response"]:
            raise DataError(path, i, "prompt and response are both empty")
    return rows


def tokenize_rows(rows: list[dict], tokenizer, seq_len: int) -> tuple[list[Example], int]:
    """Tokenise rows into examples of at most ``seq_len`` tokens.

    Returns:
        The examples and how many were truncated. A CIT example loses the start of its
        prompt first, so that its response survives; a CPT example loses its tail.
    """
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=True)["input_ids"]
    responses = tokenizer([r["response"] or "" for r in rows], add_special_tokens=False)[
        "input_ids"
    ]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    examples, truncated = [], 0
    for i, (row, p, r) in enumerate(zip(rows, prompts, responses, strict=True)):
        if bos is not None and len(p) > 1 and p[0] == p[1] == bos:
            p = p[1:]  # the prompt text already opened with BOS (a rendered chat template)
        cit = bool(row["response"])
        if len(p) + len(r) + 1 > seq_len:
            truncated += 1
            p, r = _truncate(p, r, seq_len - 1, cit)
        ids = p + r if (p + r)[-1:] == [eos] else p + r + [eos]  # a template may end with EOS
        # Labels: CIT learns the response and EOS; CPT every token after the first.
        labels = [IGNORE] * len(p) + ids[len(p) :] if cit else [IGNORE, *ids[1:]]
        targets = labels[1:] + [IGNORE]  # shift: position t predicts token t + 1
        examples.append(Example(ids, targets, KINDS.index(row["kind"]), int(row["phase"]), i))
    return examples, truncated


def _truncate(p: list[int], r: list[int], budget: int, cit: bool) -> tuple[list[int], list[int]]:
    if not cit:
        return (p + r)[:budget], []
    keep_r = r[:budget]
    keep_p = p[len(p) - (budget - len(keep_r)) :] if budget > len(keep_r) else []
    return keep_p, keep_r


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Pack item indices into bins of ``capacity``: longest first, each into the first bin it fits.

    Ties keep their input order, so a seeded shuffle of the input decides them.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    room = np.empty(len(lengths), dtype=np.int64)
    bins: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(room[: len(bins)] >= lengths[i])
        if fits.size:
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            room[b] = capacity
        bins[b].append(i)
        room[b] -= lengths[i]
    return bins


def plan_sequences(
    examples: list[Example], seq_len: int, pack: bool, seed: int
) -> dict[int, list[list[int]]]:
    """Group example indices into sequences, per phase (phases in ascending order)."""
    by_phase: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        by_phase.setdefault(ex.phase, []).append(i)
    plan = {}
    for phase in sorted(by_phase):
        idx = by_phase[phase]
        # Seeded shuffle so that packing ties mix kinds and rounds; independent of the epoch.
        idx = [idx[j] for j in np.random.default_rng([seed, phase]).permutation(len(idx))]
        if pack:
            bins = first_fit_decreasing([len(examples[i].input_ids) for i in idx], seq_len)
            plan[phase] = [[idx[j] for j in b] for b in bins]
        else:
            plan[phase] = [[i] for i in idx]
    return plan


class SequenceDataset(Dataset):
    """Item ``i`` is sequence ``i``: the examples that share one row of a batch."""

    def __init__(self, examples: list[Example], sequences: list[list[int]]):
        self.examples, self.sequences = examples, sequences
        self.lengths = [sum(len(examples[e].input_ids) for e in s) for s in sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> list[Example]:
        return [self.examples[e] for e in self.sequences[i]]


def collate(batch: list[list[Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad sequences to the longest in the batch; pads get segment -1 and no loss.

    ``rows`` lists the train.parquet row of every example in the batch.
    """
    width = max(sum(len(ex.input_ids) for ex in seq) for seq in batch)
    shape = (len(batch), width)
    out = {
        "input_ids": torch.full(shape, pad_id, dtype=torch.long),
        "targets": torch.full(shape, IGNORE, dtype=torch.long),
        "position_ids": torch.zeros(shape, dtype=torch.long),
        "segment_ids": torch.full(shape, -1, dtype=torch.long),
        "kinds": torch.full(shape, -1, dtype=torch.long),
        "rows": torch.tensor([ex.row for seq in batch for ex in seq], dtype=torch.long),
    }
    for b, seq in enumerate(batch):
        start = 0
        for s, ex in enumerate(seq):
            end = start + len(ex.input_ids)
            out["input_ids"][b, start:end] = torch.tensor(ex.input_ids)
            out["targets"][b, start:end] = torch.tensor(ex.targets)
            out["position_ids"][b, start:end] = torch.arange(end - start)
            out["segment_ids"][b, start:end] = s
            out["kinds"][b, start:end] = ex.kind
            start = end
    return out


class PhaseBatchSampler(Sampler[list[int]]):
    """This rank's batches of sequence indices for one epoch.

    Phases come in ascending order; within a phase the sequences are shuffled by
    ``(seed, epoch)`` only, so a resumed run sees the same order as an uninterrupted one.
    Under DDP every global batch (``batch_size * world`` sequences) is dealt out across
    ranks, a short last one wrapped around, so every rank gets the same number of batches.
    """

    def __init__(self, phases: list[list[int]], lengths: list[int], batch_size: int,
                 seed: int, pack: bool, rank: int = 0, world: int = 1):  # fmt: skip
        self.phases, self.lengths = phases, lengths
        self.batch_size, self.seed, self.pack = batch_size, seed, pack
        self.rank, self.world = rank, world
        self.epoch, self._skip = 0, 0
        self.sampler = self  # Lightning calls ``batch_sampler.sampler.set_epoch`` each epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, skip: int) -> None:
        """Start the next iteration in ``epoch``, after its first ``skip`` batches."""
        self.epoch, self._skip = epoch, skip

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        size = self.batch_size * self.world
        batches = []
        for seqs in self.phases:
            order = [seqs[j] for j in rng.permutation(len(seqs))]
            if self.pack:
                glob = [order[i : i + size] for i in range(0, len(order), size)]
            else:
                glob = self._buckets(order, size, rng)
            for b in glob:
                b = b + order[: size - len(b)] if len(b) < self.world else b
                batches.append(b[self.rank :: self.world])
        return batches

    def _buckets(self, order: list[int], size: int, rng: np.random.Generator) -> list[list[int]]:
        window = size * BUCKET_BATCHES
        glob = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w : w + window], key=lambda i: -self.lengths[i])
            glob += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        return [glob[j] for j in rng.permutation(len(glob))]

    def __iter__(self):
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        yield from self.epoch_batches(epoch)[skip:]

    def __len__(self) -> int:
        return sum(math.ceil(len(s) / (self.batch_size * self.world)) for s in self.phases)

    def padding_waste(self) -> float:
        """Share of pad tokens in this rank's batches of epoch 0."""
        real = padded = 0
        for b in self.epoch_batches(0):
            lens = [self.lengths[i] for i in b]
            real += sum(lens)
            padded += len(lens) * max(lens)
        return 1 - real / padded if padded else 0.0


class TrainDataModule(L.LightningDataModule):
    """Reads ``train.parquet``, tokenises and plans sequences once, serves phase-ordered batches.

    Its ``state_dict`` (saved in every checkpoint) records the epoch and the batches done,
    so a resumed run skips exactly the batches already trained on.
    """

    def __init__(self, path: Path, tokenizer, seq_len: int, batch_size: int, pack: bool,
                 seed: int):  # fmt: skip
        super().__init__()
        self.path, self.tokenizer = Path(path), tokenizer
        self.seq_len, self.batch_size, self.pack, self.seed = seq_len, batch_size, pack, seed
        self.dataset: SequenceDataset | None = None
        self.phases: list[list[int]] = []
        self.stats: dict = {}
        self._resume: tuple[int, int] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        examples, truncated = tokenize_rows(read_train_set(self.path), self.tokenizer, self.seq_len)
        plan = plan_sequences(examples, self.seq_len, self.pack, self.seed)
        sequences = [s for phase in plan.values() for s in phase]
        self.dataset = SequenceDataset(examples, sequences)
        first = 0
        for phase in plan.values():
            self.phases.append(list(range(first, first + len(phase))))
            first += len(phase)
        targets = {k: 0 for k in KINDS}
        for ex in examples:
            targets[KINDS[ex.kind]] += sum(t != IGNORE for t in ex.targets)
        self.stats = {
            "examples": len(examples),
            "sequences": len(sequences),
            "truncated": truncated,
            "input_tokens": sum(self.dataset.lengths),
            "target_tokens": {k: v for k, v in targets.items() if v},
            "phases": {int(p): len(s) for p, s in plan.items()},
        }

    def train_dataloader(self) -> DataLoader:
        rank, world = (
            (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        )
        sampler = PhaseBatchSampler(self.phases, self.dataset.lengths, self.batch_size, self.seed,
                                    self.pack, rank, world)  # fmt: skip
        if self._resume is not None:
            sampler.resume(*self._resume)
            self._resume = None
        self.stats["padding_waste"] = sampler.padding_waste()
        self.stats["batches_per_epoch"] = len(sampler)
        pad = self.tokenizer.pad_token_id
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=functools.partial(collate, pad_id=pad),
            num_workers=0,  # tokenised up front; collation is cheap next to a training step
            # Its own generator, so making an iterator never draws from the global RNG
            # (which LoRA dropout uses): that keeps a resumed run bit-exact.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        epoch = self.trainer.current_epoch
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= self.stats["batches_per_epoch"]:
            # Saved at the end of an epoch: Lightning resumes with the next one.
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume = (state["epoch"], state["batches_done"])
