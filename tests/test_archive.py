"""``cem archive``: a sweep's evidence without its models, from which ``cem report`` writes
the same table."""

from __future__ import annotations

import json
import random

import pytest
from test_tables import fake_sweep, item_run, summary

from cem.cli import main
from cem.errors import CemError
from cem.loop.archive import MANIFEST, archive, check
from cem.loop.report import make_report


def sweep_with_models(root):
    rng = random.Random(0)
    for seed in (0, 1):
        ref = [rng.random() < 0.7 for _ in range(60)]
        for row, p in (("paradigm=parallel", 0.5), ("paradigm=cpt_only", 0.1)):
            final = [r or rng.random() < p for r in ref]
            item_run(root, f"{row},seed={seed}", seed, ref, final)
            run = root / f"{row},seed={seed}"
            (run / "round_1" / "model").mkdir(parents=True)
            (run / "round_1" / "model" / "model.safetensors").write_bytes(b"\0" * 4096)
            (run / "round_1" / "checkpoints").mkdir()
            (run / "round_1" / "checkpoints" / "last.ckpt").write_bytes(b"\0" * 4096)
            (run / "round_1" / "general.txt").write_text("not evidence")
            # a round between the reference and the final one, which only --full keeps
            middle = run / "round_9" / "eval"
            middle.mkdir(parents=True)
            (middle / "records.jsonl").write_text((run / "round_2/eval/records.jsonl").read_text())
            (middle / "metrics.json").write_text("{}")


def test_the_archive_reports_the_same_table_without_the_models(tmp_path):
    sweep, dest = tmp_path / "multirun" / "paradigm", tmp_path / "runs" / "paradigm"
    sweep_with_models(sweep)
    m = archive(sweep, dest)
    assert len(m["runs"]) == 4 and m["skipped"] == [] and m["copied"] > 0
    assert not list(dest.rglob("*.safetensors")) and not list(dest.rglob("*.ckpt"))
    assert not list(dest.rglob("general.txt"))
    assert not list(dest.rglob("round_9/eval/records.jsonl"))
    assert len(list(dest.rglob("round_9/eval/metrics.json"))) == 4
    full = archive(sweep, tmp_path / "full" / "paradigm", full=True)
    assert full["full"] and len(list((tmp_path / "full").rglob("round_9/eval/records.jsonl"))) == 4
    # the same report, row for row and interval for interval
    a = make_report(sweep, tmp_path / "a", draw=False, against="paradigm=parallel")
    b = make_report(dest, tmp_path / "b", draw=False, against="paradigm=parallel")
    assert a["md"].read_text() == b["md"].read_text()
    assert a["csv"].read_text() == b["csv"].read_text()
    assert "paradigm=cpt_only" in a["md"].read_text()
    assert check(dest) == []
    # archiving again writes nothing; a changed source file is written again
    assert archive(sweep, dest)["copied"] == 0
    s = sweep / "paradigm=parallel,seed=0" / "summary.json"
    s.write_text(s.read_text() + "\n")
    assert archive(sweep, dest)["copied"] == 1


def test_check_names_a_changed_or_missing_file(tmp_path):
    sweep, dest = tmp_path / "sweep", tmp_path / "dest"
    sweep_with_models(sweep)
    archive(sweep, dest)
    records = dest / "paradigm=parallel,seed=1" / "round_2" / "eval" / "records.jsonl"
    records.write_text(records.read_text().replace('"correct": true', '"correct": false', 1))
    (dest / "paradigm=cpt_only,seed=0" / "summary.json").unlink()
    problems = check(dest)
    assert len(problems) == 2
    assert any("records.jsonl does not match its sha256" in p for p in problems)
    assert any("cpt_only,seed=0/summary.json is missing" in p for p in problems)


def test_runs_still_going_are_left_out_and_named(tmp_path, capsys):
    going = summary([0.5, 0.6, 0.1], [0.5, 0.6, 0.1]) | {"stopped": None}
    fake_sweep(tmp_path / "s", {"seed=0": summary([0.5, 0.6, 0.8], [0.5, 0.6, 0.7]),
                                "seed=1": going})  # fmt: skip
    assert main(["archive", str(tmp_path / "s"), str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "archived 1 runs" in out and "not finished yet, left out: seed=1" in out
    manifest = json.loads((tmp_path / "d" / MANIFEST).read_text())
    assert list(manifest["runs"]) == ["seed=0"] and manifest["skipped"] == ["seed=1"]
    assert not (tmp_path / "d" / "seed=1").exists()


def test_an_archive_inside_its_sweep_is_refused(tmp_path):
    sweep_with_models(tmp_path / "s")
    with pytest.raises(CemError, match="must not hold one another"):
        archive(tmp_path / "s", tmp_path / "s" / "archive")
    with pytest.raises(CemError, match="must not hold one another"):
        archive(tmp_path / "s", tmp_path)
    assert not (tmp_path / "s" / "archive").exists()


def test_the_command_line(tmp_path, capsys):
    sweep_with_models(tmp_path / "s")
    assert main(["archive", str(tmp_path / "s"), str(tmp_path / "d")]) == 0
    assert main(["archive", "--check", str(tmp_path / "d")]) == 0
    assert "4 runs checked: no problems" in capsys.readouterr().out
    (tmp_path / "d" / "paradigm=parallel,seed=0" / "summary.json").write_text("{}")
    assert main(["archive", "--check", str(tmp_path / "d")]) == 1
    assert "BAD" in capsys.readouterr().out
    assert main(["archive", "--check", str(tmp_path / "s")]) == 2
    assert "is not an archive" in capsys.readouterr().err
    assert main(["archive", str(tmp_path / "missing"), str(tmp_path / "d2")]) == 2
    assert "is not a folder" in capsys.readouterr().err
