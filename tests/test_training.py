"""cem.training on the tiny random Llama: masks, packing, the joint loss, LoRA/full, resume."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from _tiny import tiny_model, tiny_tokenizer
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from cem.curriculum.render import KINDS
from cem.errors import CemError, ConfigError, DataError
from cem.training.data import (
    IGNORE,
    Example,
    PhaseBatchSampler,
    collate,
    first_fit_decreasing,
    plan_sequences,
    read_train_set,
    tokenize_rows,
)
from cem.training.finetune import merged, prepare
from cem.training.module import CemLM, block_causal_mask, lr_factor, warmup_steps
from cem.training.train import run_train

FACTS = [
    "The river Lumo flows through the town of Kessa and ends in the Grey Sea.",
    "Mount Orrin is the highest peak of the Vell range, at 4,210 metres.",
    "The Tarn Republic adopted the silver crown as its currency in 1891.",
    "Queen Ilsa of Marrow founded the first public library of the north.",
]
WEIGHTS = dict.fromkeys(KINDS, 1.0)
LORA = OmegaConf.create(dict(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]))


def row(prompt: str, response: str = "", kind: str = "cpt", phase: int = 0) -> dict:
    return dict(prompt=prompt, response=response, kind=kind, round=1, source_ids=["s"],
                phase=phase, n_tokens=0)  # fmt: skip


def write_set(run_dir: Path, rows: list[dict]) -> Path:
    path = run_dir / "train_set" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(row("x"))).to_parquet(path)
    return path


def small_set() -> list[dict]:
    cpt = [row(f) for f in FACTS]
    cit = [row(f"Q: Where does the river {w} flow?\nA:", " Through Kessa.", "normative")
           for w in ("Lumo", "Kessa", "Grey")]  # fmt: skip
    return cpt + cit + [row("Say hi.", " Hi.", "general"), row(FACTS[0], "", "replay")]


# What every tiny training here starts from: compose("train", f"run_dir={d}", *TINY, ...).
TINY = ("model=tiny_random_llama", "trainer.enable_progress_bar=false", "train.seq_len=64",
        "train.batch_size=2")  # fmt: skip


def test_cit_prompt_masked_cpt_all_tokens():
    tok = tiny_tokenizer()
    (cit, cpt), truncated = tokenize_rows(
        [row("Q: capital?\nA:", " Paris", "normative"), row("Paris is big.")], tok, 64
    )
    n_prompt = len(tok("Q: capital?\nA:").input_ids)
    n_resp = len(tok(" Paris", add_special_tokens=False).input_ids)
    assert truncated == 0 and cit.input_ids[-1] == tok.eos_token_id
    # Position t predicts t+1: the last prompt token predicts the first response token.
    assert cit.targets[: n_prompt - 1] == [IGNORE] * (n_prompt - 1)
    assert cit.targets[n_prompt - 1 : -1] == cit.input_ids[n_prompt:]
    assert sum(t != IGNORE for t in cit.targets) == n_resp + 1  # response + EOS
    assert cpt.targets == [*cpt.input_ids[1:], IGNORE]  # every token after the first
    assert cit.kind == KINDS.index("normative") and cpt.kind == KINDS.index("cpt")


def test_truncation_is_counted_and_keeps_the_response():
    tok = tiny_tokenizer()
    long = " ".join(FACTS * 4)
    (cit, cpt), truncated = tokenize_rows([row(long, " Kessa.", "review"), row(long)], tok, 32)
    assert truncated == 2 and len(cit.input_ids) == len(cpt.input_ids) == 32
    resp = tok(" Kessa.", add_special_tokens=False).input_ids
    assert cit.input_ids[-len(resp) - 1 : -1] == resp
    assert cpt.input_ids[:31] == tok(long).input_ids[:31]


def test_first_fit_decreasing_fills_bins():
    lengths = [50, 30, 30, 20, 20, 20, 10, 10, 5, 5]
    bins = first_fit_decreasing(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) == 4  # 200 tokens need ceil(200 / 64) = 4 bins


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_equals_separate_and_no_cross_attention(impl):
    model = tiny_model()
    model.config._attn_implementation = impl
    tok = tiny_tokenizer()
    examples, _ = tokenize_rows([row(FACTS[0]), row("Q: Orrin?\nA:", " 4,210 m", "normative"),
                                 row(FACTS[2])], tok, 128)  # fmt: skip
    batch = collate([examples, examples[:1]], tok.pad_token_id)  # row 2 is mostly padding
    mask = block_causal_mask(batch["segment_ids"], impl, torch.float32)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=mask,
                       position_ids=batch["position_ids"]).logits  # fmt: skip
        start = 0
        for ex in examples:
            alone = model(input_ids=torch.tensor([ex.input_ids])).logits[0]
            end = start + len(ex.input_ids)
            torch.testing.assert_close(packed[0, start:end], alone, atol=1e-4, rtol=0)
            start = end
        torch.testing.assert_close(packed[1, : len(examples[0].input_ids)], packed[0, :start - (
            len(examples[1].input_ids) + len(examples[2].input_ids))], atol=1e-4, rtol=0)  # fmt: skip
        # Changing the first example leaves the others' logits untouched.
        other = batch["input_ids"].clone()
        other[0, : len(examples[0].input_ids)] = 7
        moved = model(input_ids=other, attention_mask=mask,
                      position_ids=batch["position_ids"]).logits  # fmt: skip
        n0 = len(examples[0].input_ids)
        torch.testing.assert_close(moved[0, n0:start], packed[0, n0:start], atol=1e-5, rtol=0)


def test_token_losses_match_separate_runs():
    tok = tiny_tokenizer()
    examples, _ = tokenize_rows([row(FACTS[1]), row("Q: crown?\nA:", " 1891", "review")], tok, 96)
    module = CemLM(tiny_model(), WEIGHTS, 1e-3, 0.0, "constant", 0.0)
    with torch.no_grad():
        ce, kinds = module.token_losses(collate([examples], tok.pad_token_id))
        parts = [module.token_losses(collate([[ex]], tok.pad_token_id))[0] for ex in examples]
    torch.testing.assert_close(ce, torch.cat(parts), atol=1e-5, rtol=0)
    n_cpt = sum(t != IGNORE for t in examples[0].targets)
    assert kinds.tolist() == [0] * n_cpt + [KINDS.index("review")] * (len(ce) - n_cpt)


def test_kind_weights_scale_the_loss():
    tok = tiny_tokenizer()
    examples, _ = tokenize_rows([row(FACTS[1]), row("Q: crown?\nA:", " 1891", "review")], tok, 96)
    batch = collate([examples], tok.pad_token_id)
    module = CemLM(tiny_model(), WEIGHTS | {"review": 0.0}, 1e-3, 0.0, "constant", 0.0)
    module._log_step = lambda *a: None  # logging needs a trainer
    with torch.no_grad():
        ce, kinds = module.token_losses(batch)
        loss = module.training_step(batch, 0)
    assert loss.item() == pytest.approx(ce[kinds == 0].sum().item() / len(ce), rel=1e-5)


def test_padding_waste_packed_vs_padded():
    tok = tiny_tokenizer()
    gen = torch.Generator().manual_seed(0)
    words = " ".join(FACTS).split()
    rows = [
        row(" ".join(words[: int(torch.randint(4, 40, (1,), generator=gen))])) for _ in range(200)
    ]
    examples, _ = tokenize_rows(rows, tok, 128)
    lengths = [len(e.input_ids) for e in examples]
    waste = {}
    for pack in (True, False):
        plan = plan_sequences(examples, 128, pack, seed=0)
        seqs = plan[0]
        seq_len = [sum(lengths[i] for i in s) for s in seqs]
        sampler = PhaseBatchSampler([list(range(len(seqs)))], seq_len, 8, 0, pack)
        waste[pack] = sampler.padding_waste()
    assert waste[True] <= 0.10, waste
    assert waste[False] <= 0.25, waste  # buckets keep plain padding modest too


def test_phases_in_order_and_shuffle_depends_on_seed_and_epoch():
    phases = [list(range(0, 10)), list(range(10, 16))]
    lengths = [10] * 16
    s = PhaseBatchSampler(phases, lengths, batch_size=3, seed=0, pack=True)
    e0 = s.epoch_batches(0)
    flat = [i for b in e0 for i in b]
    assert sorted(flat[:10]) == phases[0] and sorted(flat[10:]) == phases[1]
    assert len(e0) == len(s) == 4 + 2
    assert e0 == PhaseBatchSampler(phases, lengths, 3, 0, True).epoch_batches(0)
    assert e0 != s.epoch_batches(1)
    s.resume(1, 2)
    assert list(s) == s.epoch_batches(1)[2:]
    assert list(s) == s.epoch_batches(1)  # the skip applies once
    ranks = [PhaseBatchSampler(phases, lengths, 2, 0, True, r, 2).epoch_batches(0) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    assert sorted(i for r in ranks for b in r for i in b) == list(range(16))


def test_lr_schedules():
    # The warm-up ramp starts above zero: no optimizer step runs at LR 0.
    assert lr_factor(0, 2, 10, "cosine") == pytest.approx(1 / 3)
    assert lr_factor(1, 2, 10, "cosine") == pytest.approx(2 / 3)
    assert lr_factor(2, 2, 10, "cosine") == 1.0 and lr_factor(10, 2, 10, "cosine") < 1e-9
    assert lr_factor(6, 2, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(9, 2, 10, "constant") == 1.0
    # A run too short for a warm-up step gets none: 5% of 6 steps is 0 steps.
    assert warmup_steps(6, 0.05) == 0 and warmup_steps(60, 0.05) == 3
    assert lr_factor(0, warmup_steps(6, 0.05), 6, "constant") == 1.0


def test_lora_merge_gives_the_same_logits():
    model = prepare(tiny_model(), "lora", LORA)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapter do something
            torch.nn.init.normal_(p, std=0.05)
    x = torch.tensor([tiny_tokenizer()(FACTS[0]).input_ids])
    model.eval()
    with torch.no_grad():
        before = model(input_ids=x).logits
        plain = merged(model)
        after = plain(input_ids=x).logits
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert not any("lora" in n for n, _ in plain.named_parameters())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_overfits_cpt_passages_and_saves_a_plain_llama(tmp_path, compose):
    from transformers import AutoModelForCausalLM

    write_set(tmp_path, [row(f) for f in FACTS])
    cfg = compose("train", f"run_dir={tmp_path}", *TINY, "train.finetune=full", "train.lr=5e-3",
                  "train.max_steps=20", "train.schedule=constant", "train.warmup_ratio=0",
                  "train.batch_size=4", "trainer.precision=32-true")  # fmt: skip
    m = run_train(cfg)
    assert m["steps"] == 20 and m["trainable_params"] == m["total_params"]
    # Pinned loosely (observed 7.63 -> 1.59): a random 2-layer Llama starts near ln(2048).
    assert 7.3 < m["loss_first"] < 7.9 and m["loss_last"] < 0.5 * m["loss_first"], m
    assert m["loss_last"] < 3.0, m
    assert m["target_tokens"] == {"cpt": m["data"]["target_tokens"]["cpt"] * 20}
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert type(saved).__name__ == "LlamaForCausalLM"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]  # no temp left
    logs = pd.read_csv(next((tmp_path / "train_logs").glob("version_*/metrics.csv")))
    assert {"train/loss", "train/loss_cpt", "train/tokens_cpt", "train/lr"} <= set(logs.columns)


def test_lora_run_logs_per_kind_and_merges(tmp_path, compose):
    from safetensors.torch import load_file

    write_set(tmp_path, small_set())
    m = run_train(compose("train", f"run_dir={tmp_path}", *TINY, "train.max_steps=3",
                          "train.checkpoint_every_n_steps=2"))  # fmt: skip
    assert set(m["target_tokens"]) <= {"cpt", "normative", "general", "replay"}
    assert m["trainable_params"] < m["total_params"] and 0 <= m["padding_waste"] < 0.5
    logs = pd.read_csv(next((tmp_path / "train_logs").glob("version_*/metrics.csv")))
    assert {"train/loss_cpt", "train/loss_cit", "train/tokens_normative"} <= set(logs.columns)
    weights = load_file(tmp_path / "model" / "model.safetensors")
    assert not any("lora" in k for k in weights)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 and all("lora" in k for k in ckpt["state_dict"])


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compose):
    d = tmp_path_factory.mktemp("full")
    write_set(d, small_set())
    return d, run_train(compose("train", f"run_dir={d}", *TINY, *RESUME))


# 9 examples pack into 6 sequences of <= 48 tokens: 3 batches of 2 per epoch, so 2 optimizer
# steps per epoch (the second accumulates one batch only).
RESUME = ("train.max_steps=5", "train.seq_len=48", "train.grad_accum=2",
          "train.lora.dropout=0.1", "trainer.precision=32-true")  # fmt: skip


@pytest.mark.parametrize(
    ("every", "stop_at", "resume_at"),
    [(1, 1, 1), (2, 3, 2), (3, 3, 3)],
    ids=["mid-epoch-0", "epoch-end", "mid-epoch-1"],
)
def test_resume_is_bit_exact(tmp_path, monkeypatch, uninterrupted, every, stop_at, resume_at,
                             compose):  # fmt: skip
    from safetensors.torch import load_file

    ref_dir, ref = uninterrupted
    write_set(tmp_path, small_set())
    cfg = compose("train", f"run_dir={tmp_path}", *TINY, *RESUME,
                  f"train.checkpoint_every_n_steps={every}")  # fmt: skip
    original = CemLM.on_train_batch_end

    def stop(self, outputs, batch, batch_idx):
        original(self, outputs, batch, batch_idx)
        if self.global_step == stop_at:
            raise Interrupt

    monkeypatch.setattr(CemLM, "on_train_batch_end", stop)
    with pytest.raises(Interrupt):
        run_train(cfg)
    assert not (tmp_path / "model").exists()
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    monkeypatch.setattr(CemLM, "on_train_batch_end", original)
    m = run_train(cfg)
    assert saved["global_step"] == resume_at
    assert m["steps"] == ref["steps"] == 5
    keys = ("loss_first", "loss_last", "epoch_losses", "target_tokens", "reached_rows")
    assert {k: m[k] for k in keys} == {k: ref[k] for k in keys}
    a, b = (
        load_file(tmp_path / "model/model.safetensors"),
        load_file(ref_dir / "model/model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_epochs_reach_every_row_and_report_epoch_means(tmp_path, compose):
    write_set(tmp_path, small_set())
    m = run_train(compose("train", f"run_dir={tmp_path}", *TINY, "train.max_steps=-1",
                          "train.epochs=2", "train.seq_len=48", "trainer.precision=32-true"))  # fmt: skip
    assert m["rows_reached"] == m["rows_total"] == len(small_set())
    assert m["reached_rows"] == list(range(len(small_set())))
    assert [e["epoch"] for e in m["epoch_losses"]] == [0, 1]
    assert m["loss_first"] == m["epoch_losses"][0]["loss"] > m["loss_last"]
    assert {"loss_cpt", "loss_cit"} <= set(m["epoch_losses"][0])
    # Every loss-bearing token of the set, once per epoch.
    assert m["target_tokens"] == {k: 2 * n for k, n in m["data"]["target_tokens"].items()}


def test_max_steps_below_an_epoch_reports_what_it_reached(tmp_path, compose):
    write_set(tmp_path, small_set())
    m = run_train(compose("train", f"run_dir={tmp_path}", *TINY, "train.max_steps=1",
                          "train.seq_len=48", "train.batch_size=1"))  # fmt: skip
    assert 0 < m["rows_reached"] < m["rows_total"]
    assert len(m["epoch_losses"]) == 1  # the partial epoch is closed


def test_bad_inputs(tmp_path, compose):
    cfg = compose("train", f"run_dir={tmp_path}", *TINY)
    with pytest.raises(CemError, match="not found"):
        run_train(cfg)
    write_set(tmp_path, [])
    with pytest.raises(DataError, match="no rows"):
        run_train(cfg)
    write_set(tmp_path, [row("x", kind="quiz")])
    with pytest.raises(DataError, match=r"train.parquet:1: kind 'quiz'"):
        read_train_set(tmp_path / "train_set" / "train.parquet")
    with pytest.raises(ConfigCompositionException, match="train.finetune=qlora"):
        compose("train", f"run_dir={tmp_path}", *TINY, "train.finetune=qlora")
    with pytest.raises(ConfigError, match="train.finetune"):
        prepare(tiny_model(), "qlora", LORA)
    write_set(tmp_path, small_set())
    with pytest.raises(CemError, match="model.path='/nonexistent/model' is not a folder"):
        run_train(compose("train", f"run_dir={tmp_path}", *TINY, "model.random_init=false",
                          "model.path=/nonexistent/model"))  # fmt: skip
    (tmp_path / "model_in").mkdir()
    with pytest.raises(CemError, match="model_in has no config.json"):
        run_train(cfg)


def test_unknown_loss_weight_kind_fails(tmp_path, compose):
    with pytest.raises(CemError, match=r"train.loss_weights.cpd names no kind; .* \(try ~train"):
        run_train(compose("train", f"run_dir={tmp_path}", *TINY, "++train.loss_weights.cpd=1.0"))


@pytest.mark.parametrize(
    "trainer",
    ["cpu", "gpu", "ddp", "fsdp", "deepspeed", "deepspeed_zero2", "deepspeed_zero3"],
    ids=lambda t: f"{t}_yaml",
)
def test_trainer_configs_compose(tmp_path, trainer, compose):
    cfg = compose("train", f"run_dir={tmp_path}", *TINY, f"trainer={trainer}")
    assert cfg.trainer._target_ == "lightning.Trainer"
    assert {"accelerator", "devices", "strategy", "precision", "num_nodes"} <= set(cfg.trainer)


def test_example_dataclass_is_plain():
    ex = Example([1, 2], [2, IGNORE], 0, 0)
    assert collate([[ex]], 0)["segment_ids"].tolist() == [[0, 0]]


def test_unpacked_run_pads_in_buckets(tmp_path, compose):
    write_set(tmp_path, small_set())
    m = run_train(compose("train", f"run_dir={tmp_path}", *TINY, "train.pack=false",
                          "train.max_steps=2"))  # fmt: skip
    assert m["data"]["sequences"] == m["data"]["examples"] == len(small_set())
    assert m["steps"] == 2 and m["loss_last"] > 0


def test_the_ranks_totals_merge_into_the_whole_run_s():
    """Under several ranks each holds its share of the batches; ``merge_totals`` adds the
    tokens up, joins the rows and takes each epoch's mean over every rank's tokens."""
    from cem.training.module import close_epoch, merge_totals, new_totals

    def rank(rows, tokens, epochs):
        t = new_totals()
        t["rows"], t["tokens"]["cpt"], t["input_tokens"] = set(rows), tokens, 2 * tokens
        for e, (loss, cpt, n) in enumerate(epochs):
            t["open_epoch"] = e
            t["epoch_sums"] = {
                "loss": [loss, n],
                "cpt": [cpt, n // 2],
                "cit": [loss - cpt, n - n // 2],
            }
            close_epoch(t)
        return t

    a = rank([0, 2, 4], 30, [(12.0, 5.0, 4), (8.0, 3.0, 4)])
    b = rank([1, 3], 10, [(6.0, 6.0, 2), (2.0, 2.0, 2)])
    whole = merge_totals([a, b])
    assert whole["rows"] == {0, 1, 2, 3, 4}
    assert whole["tokens"]["cpt"] == 40 and whole["input_tokens"] == 80
    assert whole["epochs"] == [
        {"epoch": 0, "loss": 18.0 / 6, "loss_cpt": 11.0 / 3, "loss_cit": 7.0 / 3},
        {"epoch": 1, "loss": 10.0 / 6, "loss_cpt": 5.0 / 3, "loss_cit": 5.0 / 3},
    ]
    assert merge_totals([a])["epochs"] == a["epochs"]  # one rank: its own means


def test_after_a_resume_the_ranks_totals_merge_by_epoch_number():
    """A checkpoint holds the whole run's totals (rank 0 carries them on); after the resume
    the other ranks hold only the epochs since: epoch 1 adds both ranks, epoch 0 is rank 0's
    whole-run record, and the open epoch's sums add up."""
    from cem.training.module import merge_totals, new_totals

    a, b = new_totals(), new_totals()
    a["epochs"] = [{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 1.5}]
    a["closed_sums"] = [{"loss": [8.0, 4]}, {"loss": [3.0, 2]}]
    b["epochs"], b["closed_sums"] = [{"epoch": 1, "loss": 1.0}], [{"loss": [1.0, 1]}]
    a["open_epoch"] = b["open_epoch"] = 2
    a["epoch_sums"]["loss"], b["epoch_sums"]["loss"] = [1.0, 2], [2.0, 2]
    whole = merge_totals([a, b])
    assert whole["epochs"] == [{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 4.0 / 3}]
    assert whole["open_epoch"] == 2 and whole["epoch_sums"]["loss"] == [3.0, 4]
    old = {**a, "closed_sums": a["closed_sums"][1:]}  # an older cem kept no sums for epoch 0
    assert merge_totals([old, b])["epochs"] == whole["epochs"]
