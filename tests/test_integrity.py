"""Files that cannot poison a resume: done-markers vouch for their files by sha256, a
corrupt checkpoint is moved aside, stale temp files go, and ``cem verify`` checks a run."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from test_training import RESUME, TINY, small_set, uninterrupted, write_set  # noqa: F401

from cem.cli import main
from cem.io import read_json, write_json, write_jsonl
from cem.layout import RoundDir, read_marker
from cem.loop import stages
from cem.loop.verify import verify_run
from cem.training.train import run_train


def flip_a_byte(path, at: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def eval_stage(folder, calls: list[int]) -> dict:
    def task():
        calls.append(1)
        write_jsonl(folder / "eval" / "records.jsonl", [{"id": "a", "correct": True}])
        return {"n": 1}

    return stages.run_stage(folder, "eval", task)


def test_a_stage_whose_files_changed_runs_again(tmp_path, capsys):
    calls: list[int] = []
    info = eval_stage(tmp_path, calls)
    assert list(info["files"]) == ["eval/records.jsonl"]
    eval_stage(tmp_path, calls)
    assert calls == [1]  # unchanged: skipped
    flip_a_byte(tmp_path / "eval/records.jsonl", 3)
    eval_stage(tmp_path, calls)
    assert calls == [1, 1]
    err = capsys.readouterr().err
    assert "records.jsonl does not match its sha256 in the done-marker" in err
    assert f"running {tmp_path.name}/eval again" in err
    (tmp_path / "eval/records.jsonl").unlink()
    eval_stage(tmp_path, calls)
    assert calls == [1, 1, 1] and "records.jsonl is missing" in capsys.readouterr().err


def test_a_corrupt_marker_reruns_its_stage_and_stale_temps_go(tmp_path, capsys):
    calls: list[int] = []
    eval_stage(tmp_path, calls)
    RoundDir(tmp_path).marker("eval").write_text('{"stage": "eval", "seco')  # truncated
    stale = [tmp_path / "eval/.records.jsonl.x1.tmp", tmp_path / ".model.x2.tmp/model.bin"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    keep = tmp_path / "eval/notes.tmp"  # not a temp file of ours
    keep.write_text("mine")
    eval_stage(tmp_path, calls)
    assert calls == [1, 1] and "is not a done-marker (not valid JSON" in capsys.readouterr().err
    assert not any(p.exists() for p in stale) and not (tmp_path / ".model.x2.tmp").exists()
    assert keep.read_text() == "mine"
    assert read_json(RoundDir(tmp_path).marker("eval"))["result"] == {"n": 1}


def test_pruned_models_are_recorded_not_flagged(tmp_path):
    for name in ("warmup", "round_1"):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "model.safetensors").write_bytes(b"weights")
        stages.run_stage(tmp_path / name, "train", lambda: None)
    stages.prune(tmp_path, "last")
    assert not (tmp_path / "warmup/model").exists()
    assert read_marker(tmp_path / "warmup", "train")["pruned"] == ["model"]
    assert all(not c.problems for c in verify_run(tmp_path))
    # Deleted by hand (not by prune): a problem.
    (tmp_path / "round_1/model/model.safetensors").unlink()
    [bad] = [c for c in verify_run(tmp_path) if c.problems]
    assert bad.marker == RoundDir(tmp_path / "round_1").marker("train")


def test_cem_verify_names_the_bad_file(tmp_path, capsys):
    eval_stage(tmp_path / "round_0", [])
    assert main(["verify", str(tmp_path)]) == 0
    assert "1 of 1 stages verified (1 files); no problems" in capsys.readouterr().out
    flip_a_byte(tmp_path / "round_0/eval/records.jsonl", 3)
    write_json(RoundDir(tmp_path / "round_1").marker("eval"), [1, 2])  # not a marker at all
    assert main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "BAD round_0/eval (1 files)" in out
    assert f"{tmp_path}/round_0/eval/records.jsonl does not match its sha256" in out
    assert "BAD round_1/eval" in out and "0 of 2 stages verified" in out
    assert main(["verify", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "empty"])
def test_a_corrupt_checkpoint_is_moved_aside_and_training_starts_over(
    tmp_path,
    capsys,
    uninterrupted,  # noqa: F811 - test_training's fixture
    damage,
    compose,
):
    ref_dir, ref = uninterrupted
    write_set(tmp_path, small_set())
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    good = (ref_dir / "checkpoints" / "last.ckpt").read_bytes()
    ckpt.write_bytes(
        {"truncated": good[: len(good) // 2], "empty": b"", "bit-flipped": good}[damage]
    )
    if damage == "bit-flipped":
        flip_a_byte(ckpt, len(good) // 2)
    m = run_train(compose("train", f"run_dir={tmp_path}", *TINY, *RESUME))
    err = capsys.readouterr().err
    assert "is not a whole checkpoint" in err and "starts from the beginning" in err
    assert "resuming from" not in err
    [aside] = [p for p in ckpt.parent.iterdir() if p.name.startswith("last.ckpt.corrupt-")]
    assert aside.stat().st_size == len(good) // 2 if damage == "truncated" else True
    assert m["steps"] == ref["steps"] and m["loss_last"] == ref["loss_last"]
    a, b = (
        load_file(tmp_path / "model/model.safetensors"),
        load_file(ref_dir / "model/model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in b)
    # The checkpoints it wrote are whole, in place and readable.
    assert torch.load(ckpt, weights_only=False)["global_step"] == ref["steps"]
    assert not [p for p in ckpt.parent.iterdir() if p.name.endswith(".tmp")]
    assert oct(ckpt.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
