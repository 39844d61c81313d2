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

from cem.errors import ConfigError
from cem.training import CIT_KINDS, KINDS, SCHEDULES
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
        "model attention implementation", impl, "must be sdpa or eager for packed training",
        "train.pack=false, or load the model with attn_implementation=sdpa",
    )  # fmt: skip


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """The LR multiplier at ``step``: linear warmup, then cosine, linear or constant decay."""
    if step < warmup:
        return step / max(1, warmup)
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
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.strict_loading = False  # checkpoints hold the trainable weights only
        weights = torch.tensor([float(kind_weights[k]) for k in KINDS])
        self.register_buffer("kind_weights", weights, persistent=False)
        # Running totals; checkpointed, so a resumed run reports the same numbers.
        self.totals = {"tokens": dict.fromkeys(KINDS, 0), "first_loss": None, "last_loss": None}
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
        loss = (self.kind_weights[kinds] * ce).sum() / max(ce.numel(), 1)
        self._log_step(loss.detach(), ce.detach(), kinds, batch)
        return loss

    def _log_step(self, loss, ce, kinds, batch) -> None:
        n = len(KINDS)
        sums = torch.zeros(n, device=ce.device).index_add_(0, kinds, ce)
        counts = torch.bincount(kinds, minlength=n)
        logs = {"train/loss": loss, "train/lr": self.optimizers().param_groups[0]["lr"]}
        groups = {"cpt": ["cpt"], "cit": list(CIT_KINDS)} | {k: [k] for k in KINDS if k != "cpt"}
        for name, members in groups.items():
            idx = [KINDS.index(k) for k in members]
            if counts[idx].sum() > 0:
                logs[f"train/loss_{name}"] = sums[idx].sum() / counts[idx].sum()
        for i, kind in enumerate(KINDS):
            self.totals["tokens"][kind] += int(counts[i])
            if self.totals["tokens"][kind]:
                logs[f"train/tokens_{kind}"] = float(self.totals["tokens"][kind])
        value = float(loss)
        if self.totals["first_loss"] is None:
            self.totals["first_loss"] = value
        self.totals["last_loss"] = value
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch["input_ids"].shape[0])

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
        if hp.schedule not in SCHEDULES:
            raise ConfigError("train.schedule", hp.schedule, f"must be one of {', '.join(SCHEDULES)}",
                              "train.schedule=cosine")  # fmt: skip
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = math.ceil(hp.warmup_ratio * total)
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
        checkpoint["cem"] = {"totals": self.totals, "torch_rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.totals = checkpoint["cem"]["totals"]
        torch.set_rng_state(checkpoint["cem"]["torch_rng"])
