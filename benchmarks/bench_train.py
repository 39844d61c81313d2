"""Training tokens/s of ``cem train`` (packed, Lightning) against a plain HF Trainer + peft.

Both train SmolLM2-135M-Instruct on the same rows: CPT passages (Wikipedia summaries from
the offline asset) and short CIT question/answer pairs, one to one. Ours packs them into
``--seq-len`` sequences. The HF peers pad each batch to its longest row, with as many rows
per batch as ours packs into one: once with HF's default collation (random batches), and
once with length grouping as an HF user would turn it on (``group_by_length=True``, which
transformers 5 spells ``train_sampling_strategy="group_by_length"``), which batches rows
of similar length and so pads less. Tokens/s counts real (non-pad) input tokens and skips
the first step (start-up). Nothing is asserted.

    .venv/bin/python benchmarks/bench_train.py --steps 20 --precision 32-true bf16-mixed
    .venv/bin/python benchmarks/bench_train.py --smoke   # does it run? (no figure to keep)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402
import torch  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per measurement")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=2, help="our packed sequences per step")
    p.add_argument("--rows", type=int, default=400, help="training rows (half CPT, half CIT)")
    p.add_argument("--modes", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    p.add_argument("--skip-hf", action="store_true", help="time ours only")
    p.add_argument(
        "--bucketed",
        action="store_true",
        help="also time ours unpacked (train.pack=false: length buckets, as many rows per "
        "batch as packing gives): packing's block-causal attention against padding",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest setting: LoRA in fp32, 2 steps, 16 rows of 128 tokens",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.rows, args.seq_len, args.batch_size = 2, 16, 128, 1
        args.modes, args.precision = ["lora"], ["32-true"]
    return args


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """CPT passages and CIT pairs from the Wikipedia summaries asset."""
    from cem.assets.fetch import asset_dir

    pages = json.loads((asset_dir("wiki-summaries-en") / "summaries_en-us.json").read_text())
    pages = [p for p in pages.values() if p.get("extract") and p.get("description")]
    random.Random(seed).shuffle(pages)
    rows = []
    for i, page in enumerate(pages[:n]):
        if i % 2 == 0:
            rows.append(dict(prompt=page["extract"], response="", kind="cpt"))
        else:
            q = f"Question: What is {page['title']}?\nAnswer:"
            rows.append(dict(prompt=q, response=" " + page["description"] + ".", kind="review"))
    for r in rows:
        r.update(round=1, source_ids=["bench"], phase=0, n_tokens=0)
    return rows


def compose(run_dir: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cem.config import conf_dir, register_configs

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("train", [f"run_dir={run_dir}", *overrides])


def bench_ours(rows: list[dict], mode: str, precision: str, args, pack: bool = True,
               batch: int | None = None) -> dict:  # fmt: skip
    """``cem train`` on ``rows``: packed into ``--seq-len`` sequences, ``--batch-size`` a
    step, or with ``pack=False`` one row per sequence, ``batch`` rows a step."""
    from cem.training.train import train_round

    batch = batch or args.batch_size
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        run_dir = Path(tmp)
        (run_dir / "train_set").mkdir()
        pd.DataFrame(rows).to_parquet(run_dir / "train_set" / "train.parquet")
        cfg = compose(run_dir, [
            f"train.finetune={mode}", f"train.max_steps={args.steps}",
            f"train.seq_len={args.seq_len}", f"train.batch_size={batch}",
            f"train.pack={str(pack).lower()}",
            f"train.checkpoint_every_n_steps={args.steps + 1}", f"trainer.precision={precision}",
            "trainer.enable_progress_bar=false", "train.lr=1e-4",
        ])  # fmt: skip
        m = train_round(cfg, run_dir, None)
    d = m["data"]
    return {
        "tokens_per_s": m["tokens_per_s"],
        "padding_waste": m["padding_waste"],
        "rows_per_batch": d["examples"] / d["sequences"] * batch,
        "loss": [m["loss_first"], m["loss_last"]],
    }


# The HF peers: (results key, TrainingArguments that differ from HF's defaults).
HF_PEERS = {"hf_trainer_peft": {}, "hf_trainer_peft_grouped": {"group_by_length": True}}


def hf_arguments(extra: dict) -> dict:
    """``extra`` as this transformers spells it: ``group_by_length=True`` became
    ``train_sampling_strategy="group_by_length"`` in transformers 5."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    if extra.get("group_by_length") and "group_by_length" not in fields:
        return {"train_sampling_strategy": "group_by_length"}
    return dict(extra)


def bench_hf(rows: list[dict], precision: str, batch: int, args, extra: dict) -> dict:
    """HF Trainer + peft LoRA with the same rows, targets and LoRA settings, padded batches;
    ``extra``: TrainingArguments beyond the defaults (``HF_PEERS``)."""
    from omegaconf import OmegaConf
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from cem.config import ModelConfig, TrainConfig
    from cem.training.data import tokenize_rows
    from cem.training.finetune import load_base, prepare

    model, tok = load_base(ModelConfig(name="smollm2", asset="smollm2-135m-instruct"), None, 0)
    model = prepare(model, "lora", OmegaConf.structured(TrainConfig).lora)
    examples, _ = tokenize_rows(rows, tok, args.seq_len)
    # tokenize_rows gives shifted targets; HF shifts itself, so rebuild unshifted labels.
    data = [{"input_ids": e.input_ids, "labels": [-100, *e.targets[:-1]]} for e in examples]
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    seen: list[tuple[int, int]] = []  # (real, padded) tokens per batch

    def collate(features):
        out = collator(features)
        seen.append((int(out["attention_mask"].sum()), out["input_ids"].numel()))
        return out

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="bench_hf_") as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=args.steps,
            learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=0.05, max_grad_norm=1.0,
            bf16=precision.startswith("bf16"), use_cpu=True, save_strategy="no", report_to=[],
            logging_steps=1, disable_tqdm=True, remove_unused_columns=False,
            dataloader_num_workers=0, seed=0, **hf_arguments(extra),
        )  # fmt: skip
        trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate,
                          callbacks=[Clock()])  # fmt: skip
        sampler = type(trainer._get_train_sampler()).__name__  # LengthGroupedSampler: grouped
        trainer.train()
    timed = seen[1 : len(ends)]
    return {
        "tokens_per_s": sum(r for r, _ in timed) / (ends[-1] - ends[0]),
        "padding_waste": 1 - sum(r for r, _ in seen) / sum(n for _, n in seen),
        "rows_per_batch": batch,
        "sampler": sampler,
    }


def padding_table(rows: list[dict], seq_len: int) -> dict[str, float]:
    """Padding waste of our batches (packed and bucketed) for several batch sizes; no training."""
    from transformers import AutoTokenizer

    from cem.assets.fetch import asset_dir
    from cem.training.data import PhaseBatchSampler, SequenceDataset, plan_sequences, tokenize_rows

    tok = AutoTokenizer.from_pretrained(asset_dir("smollm2-135m-instruct"))
    examples, truncated = tokenize_rows(rows, tok, seq_len)
    out = {"truncated": truncated}
    for pack in (True, False):
        seqs = plan_sequences(examples, seq_len, pack, seed=0)[0]
        lengths = SequenceDataset(examples, seqs).lengths
        if pack:
            out["pack_fill"] = sum(lengths) / (len(seqs) * seq_len)
        for bs in (1, 2, 4, 8):
            sampler = PhaseBatchSampler([list(range(len(seqs)))], lengths, bs, 0, pack)
            out[f"{'packed' if pack else 'bucketed'}/batch_{bs}"] = sampler.padding_waste()
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = make_rows(args.rows)
    print(f"torch threads: {torch.get_num_threads()}; rows: {len(rows)}; steps: {args.steps}")
    results = {"padding": padding_table(rows, args.seq_len)}
    print("padding", json.dumps(results["padding"]), flush=True)
    for mode in args.modes:
        for precision in args.precision:
            key = f"ours/{mode}/{precision}"
            results[key] = bench_ours(rows, mode, precision, args)
            print(key, json.dumps(results[key]), flush=True)
            batch = max(1, round(results[key]["rows_per_batch"]))
            if args.bucketed:
                key = f"ours_bucketed/{mode}/{precision}"
                results[key] = bench_ours(rows, mode, precision, args, pack=False, batch=batch)
                print(key, json.dumps(results[key]), flush=True)
            if mode == "lora" and not args.skip_hf:
                for peer, extra in HF_PEERS.items():
                    key = f"{peer}/{mode}/{precision}"
                    results[key] = bench_hf(rows, precision, batch, args, extra)
                    print(key, json.dumps(results[key]), flush=True)
    print_table(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def print_table(results: dict) -> None:
    """Tokens/s of each measurement, as a multiple of each HF peer's, and padding waste."""
    print(f"\n{'measurement':<38} {'tokens/s':>9} {'vs HF':>7} {'vs HF grouped':>14} "
          f"{'padding':>8}")  # fmt: skip
    for key, r in results.items():
        if key == "padding":
            continue
        mode, prec = key.split("/")[1:]
        ratios = []
        for peer in HF_PEERS:
            hf = results.get(f"{peer}/{mode}/{prec}")
            ratios.append(f"{r['tokens_per_s'] / hf['tokens_per_s']:.2f}x" if hf else "-")
        pad = f"{r['padding_waste']:.1%}" if "padding_waste" in r else "-"
        print(f"{key:<38} {r['tokens_per_s']:>9.0f} {ratios[0]:>7} {ratios[1]:>14} {pad:>8}")


if __name__ == "__main__":
    main()
