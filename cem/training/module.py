"""The joint CPT + CIT objective as a LightningModule.

The loss of a micro-batch is ``sum_t w[kind_t] * CE_t / n``: per-token cross-entropy over
the tokens that carry a target, each weighted by its row's kind, averaged over those ``n``
tokens (so a weight of 2 makes a kind's tokens count double, and 0 removes them).
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from cem.choices import Schedule, values
from cem.curriculum.render import CIT_KINDS, KINDS
from cem.errors import ConfigError
from cem.training.data import IGNORE


def block_causal_mask(segment_ids: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """A ``[B, 1, L, L]`` mask: token i sees token j iff j <= i and both are in one example.

    sdpa takes it boolean (True: attend); eager adds it to the scores, so it is additive.
    Pads (segment -1) see only earlier pads, which keeps every row of the softmax non-empty.
    """
    n = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(n, n, dtype=torch.bool, device=segment_ids.device).tril()
    mask = (same & causal)[:, None]
    if impl == "sdpa":
        return mask
    if impl == "eager":
        return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
    raise ConfigError(
        "model attention implementation", impl,
        "must be sdpa or eager for packed training (or load the model with sdpa)",
        "train.pack=false",
    )  # fmt: skip


def warmup_steps(total: int, ratio: float) -> int:
    """Warm-up steps of a run of ``total`` optimizer steps: ``floor(ratio * total)``, so a
    run too short for a warm-up step gets none."""
    return math.floor(ratio * total)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The LR multiplier at ``step``: linear warmup, then cosine, linear or constant decay.

    The ramp is ``(step + 1) / (warmup + 1)``: it starts above zero, so no optimizer step
    is wasted at LR 0, and reaches the full LR at step ``warmup``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    return 1.0


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside ``model`` (a peft wrapper or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class CemLM(L.LightningModule):
    """Trains a causal LM (plain or peft-wrapped) on packed CPT + CIT batches.

    Args:
        model: the model; its frozen parameters are left out of checkpoints.
        kind_weights: loss weight of every kind in ``KINDS``.
        lr, weight_decay: AdamW settings.
        schedule: cosine | linear | constant, after ``warmup_ratio`` of the steps.
    """

    def __init__(self, model: nn.Module, kind_weights: dict[str, float], lr: float,
                 weight_decay: float, schedule: str, warmup_ratio: float):  # fmt: skip
        schedule = str(schedule)  # not a Schedule: a checkpoint's hparams load weights-only
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.strict_loading = False  # checkpoints hold the trainable weights only
        weights = torch.tensor([float(kind_weights[k]) for k in KINDS])
        self.register_buffer("kind_weights", weights, persistent=False)
        # Running totals; checkpointed, so a resumed run reports the same numbers.
        self.totals = new_totals()
        self._clock: float | None = None
        self.throughput = {"tokens": 0, "seconds": 0.0}  # not checkpointed: wall time

    def token_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token CE and kind index for every position that has a target.

        Runs the backbone, then the LM head only where there is a target: CIT prompts
        cost no head compute. (Models that post-process logits, e.g. soft-capping, are
        not supported by this shortcut.)
        """
        lm = causal_lm(self.model)
        impl = lm.config._attn_implementation
        if impl in ("sdpa", "eager"):
            mask = block_causal_mask(batch["segment_ids"], impl, lm.dtype)
        else:  # flash / flex: transformers finds the examples from the position resets
            mask = None
        hidden = lm.base_model(
            input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"]
        ).last_hidden_state
        keep = batch["targets"] != IGNORE
        logits = lm.get_output_embeddings()(hidden[keep])
        ce = F.cross_entropy(logits.float(), batch["targets"][keep], reduction="none")
        return ce, batch["kinds"][keep]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        ce, kinds = self.token_losses(batch)
        weighted = self.kind_weights[kinds] * ce
        loss = weighted.sum() / max(ce.numel(), 1)
        self._log_step(loss.detach(), weighted.detach(), ce.detach(), kinds, batch)
        return loss

    def _log_step(self, loss, weighted, ce, kinds, batch) -> None:
        n = len(KINDS)
        sums = torch.zeros(n, device=ce.device).index_add_(0, kinds, ce)
        counts = torch.bincount(kinds, minlength=n)
        logs = {"train/loss": loss, "train/lr": self.optimizers().param_groups[0]["lr"]}
        if self.totals["open_epoch"] not in (None, self.current_epoch):
            # Resumed from a checkpoint written at an epoch's last step, before its end hook.
            close_epoch(self.totals)
        self.totals["open_epoch"] = self.current_epoch
        running = self.totals["epoch_sums"]
        running["loss"][0] += float(weighted.sum())
        running["loss"][1] += int(ce.numel())
        for name, members in LOSS_GROUPS.items():
            idx = [KINDS.index(k) for k in members]
            count = int(counts[idx].sum())
            if count > 0:
                logs[f"train/loss_{name}"] = sums[idx].sum() / count
                if name in running:
                    running[name][0] += float(sums[idx].sum())
                    running[name][1] += count
        for i, kind in enumerate(KINDS):
            self.totals["tokens"][kind] += int(counts[i])
            if self.totals["tokens"][kind]:
                logs[f"train/tokens_{kind}"] = float(self.totals["tokens"][kind])
        self.totals["input_tokens"] += int((batch["segment_ids"] >= 0).sum())
        self.totals["rows"].update(batch["rows"].tolist())
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])

    def on_train_epoch_end(self) -> None:
        """Close the epoch's mean losses (per loss-bearing token) and log them."""
        means = close_epoch(self.totals)
        if means:
            self.log_dict({f"train/epoch_{k}": v for k, v in means.items() if k != "epoch"},
                          on_step=False, on_epoch=True)  # fmt: skip

    def on_train_batch_end(self, outputs, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        now = time.perf_counter()
        tokens = int((batch["segment_ids"] >= 0).sum())
        if self._clock is not None:  # the first batch includes start-up: not timed
            dt = now - self._clock
            self.throughput["tokens"] += tokens
            self.throughput["seconds"] += dt
            self.log("train/tokens_per_s", tokens / max(dt, 1e-9), on_step=True, prog_bar=True,
                     batch_size=batch["input_ids"].shape[0])  # fmt: skip
        self._clock = now

    def configure_optimizers(self):
        hp = self.hparams
        if hp.schedule not in values(Schedule):
            raise ConfigError("train.schedule", hp.schedule, f"must be one of {', '.join(values(Schedule))}",
                              "train.schedule=cosine")  # fmt: skip
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = warmup_steps(total, hp.warmup_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, warmup, total, hp.schedule)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in trainable
        }
        # Lightning does not save the RNG; LoRA dropout draws from it.
        totals = self.totals
        if self.trainer.world_size > 1:
            # Rank 0 writes the file: it holds every rank's totals so far (every rank saves a
            # checkpoint together, so the gather is safe), and a resume counts them all.
            totals = merge_totals(gather_objects(self.totals, self.trainer.world_size))
        totals = {**totals, "rows": sorted(totals["rows"])}
        checkpoint["cem"] = {"totals": totals, "torch_rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        totals = checkpoint["cem"]["totals"]
        self.totals = {**totals, "rows": set(totals["rows"])}
        if self.trainer.world_size > 1 and self.trainer.global_rank != 0:
            # The checkpoint holds the whole run's totals until it was saved: rank 0 carries
            # them on, the other ranks count from the resume on, so that merge_totals counts
            # each step once.
            self.totals = new_totals()
        torch.set_rng_state(checkpoint["cem"]["torch_rng"])


def gather_objects(obj, world_size: int) -> list:
    """``obj`` of every rank, in rank order (a collective: every rank calls it)."""
    import torch.distributed as dist

    parts: list = [None] * world_size
    dist.all_gather_object(parts, obj)
    return parts


# The per-kind losses logged each step: CPT, all CIT types together, and each kind alone.
LOSS_GROUPS = {"cpt": ["cpt"], "cit": list(CIT_KINDS)} | {k: [k] for k in KINDS if k != "cpt"}
EPOCH_GROUPS = ("loss", "cpt", "cit")  # closed into an epoch mean at every epoch end


def new_totals() -> dict:
    """Running totals of a training run: loss-bearing tokens per kind, input tokens, the
    train.parquet rows reached, the open epoch's loss sums and each closed epoch's means
    (and sums, which ``merge_totals`` adds up over ranks)."""
    return {
        "tokens": dict.fromkeys(KINDS, 0),
        "input_tokens": 0,
        "rows": set(),
        "epoch_sums": {g: [0.0, 0] for g in EPOCH_GROUPS},
        "open_epoch": None,  # the epoch the sums belong to
        "epochs": [],
        "closed_sums": [],  # per closed epoch: {group: [loss sum, tokens]}
    }


def epoch_means(epoch: int, sums: dict[str, list]) -> dict:
    """``{"epoch", "loss", "loss_cpt", "loss_cit"}``: the mean loss per token of each group
    that had tokens."""
    means = {"epoch": epoch}
    for group, (total, count) in sums.items():
        if count:
            means["loss" if group == "loss" else f"loss_{group}"] = total / count
    return means


def merge_totals(parts: list[dict]) -> dict:
    """The totals of a run whose ranks each hold their own share of the batches: tokens
    added up, rows joined, each epoch's mean taken over every rank's tokens, the open
    epoch's sums added up. Epochs are matched by number, not position: after a resume the
    other ranks hold only the epochs since (``on_load_checkpoint``)."""
    merged = new_totals()
    by_epoch: dict[int, dict[str, list]] = {}
    unsummed: dict[int, dict] = {}  # epochs closed without their sums kept: their means
    for part in parts:
        for kind, n in part["tokens"].items():
            merged["tokens"][kind] += n
        merged["input_tokens"] += part["input_tokens"]
        merged["rows"] |= set(part["rows"])
        closed = part.get("closed_sums", [])
        # A checkpoint of an older cem kept no sums for the epochs it had closed.
        n_unsummed = len(part["epochs"]) - len(closed)
        for means in part["epochs"][:n_unsummed]:
            unsummed.setdefault(means["epoch"], means)
        for means, part_sums in zip(part["epochs"][n_unsummed:], closed, strict=True):
            sums = by_epoch.setdefault(means["epoch"], {g: [0.0, 0] for g in EPOCH_GROUPS})
            for group, (total, count) in part_sums.items():
                sums[group][0] += total
                sums[group][1] += count
        if part["open_epoch"] is not None:
            merged["open_epoch"] = part["open_epoch"]
            for group, (total, count) in part["epoch_sums"].items():
                merged["epoch_sums"][group][0] += total
                merged["epoch_sums"][group][1] += count
    for epoch in sorted(by_epoch.keys() | unsummed.keys()):
        if epoch in by_epoch:
            merged["epochs"].append(epoch_means(epoch, by_epoch[epoch]))
            merged["closed_sums"].append(by_epoch[epoch])
        else:
            merged["epochs"].append(unsummed[epoch])
    return merged


def close_epoch(totals: dict) -> dict | None:
    """Append the open epoch's means to ``totals["epochs"]`` and reset the sums; the means,
    or None when no step ran since the last close."""
    sums, epoch = totals["epoch_sums"], totals["open_epoch"]
    totals["open_epoch"] = None
    if sums["loss"][1] == 0:
        return None
    means = epoch_means(epoch, sums)
    totals["epochs"].append(means)
    # A checkpoint written before the sums were kept has none: setdefault.
    totals.setdefault("closed_sums", []).append(sums)
    totals["epoch_sums"] = {g: [0.0, 0] for g in EPOCH_GROUPS}
    return means
