"""Hydra's submitit launcher for real: a 2-job ``cem eval`` sweep under
``hydra/launcher=submitit_local``, the path that ``hydra/launcher=slurm`` takes (the task
pickled into the job folder, each job in a process of its own, its result pickled back),
with only the cluster left out. Each job writes what one ``cem eval`` in this process writes."""

from __future__ import annotations

import os
import pickle

import pytest
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf
from test_parallel_eval import OVERRIDES, assert_same_files, child_env, reference

from cem.cli import main

MODES = ("loglik", "generate")
GENERATE = "eval.max_new_tokens=4"


@pytest.mark.e2e
def test_a_submitit_local_sweep_runs_each_job_in_its_own_process(tmp_path, monkeypatch):
    for key, value in child_env().items():  # the jobs find this checkout, one thread each
        monkeypatch.setenv(key, value)
    sweep = tmp_path / "sweep"
    rc = main(["eval", "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
               *OVERRIDES, GENERATE, f"eval.mode={','.join(MODES)}"])  # fmt: skip
    assert rc == 0
    # One submitit folder per job: the pickled task, its logs and its pickled result.
    folders = sorted(p for p in (sweep / ".submitit").iterdir() if p.name != "%j")
    assert len(folders) == 2
    results = {}
    for folder in folders:
        job_id = folder.name
        assert (folder / f"{job_id}_submitted.pkl").is_file()
        log = (folder / f"{job_id}_0_log.out").read_text()
        assert f"job_id={job_id}" in log and "Job completed successfully" in log
        outcome, job = pickle.loads((folder / f"{job_id}_0_result.pkl").read_bytes())
        assert outcome == "success" and job.status == JobStatus.COMPLETED
        assert job.working_dir == os.getcwd()  # Hydra 1.3: a job keeps the sweep's cwd
        results[job.hydra_cfg.hydra.job.num] = job
    assert sorted(results) == [0, 1]
    for num, mode in enumerate(MODES):
        assert f"eval.mode={mode}" in results[num].overrides
        job_dir = sweep / str(num)
        assert OmegaConf.load(job_dir / ".hydra" / "config.yaml").eval.mode == mode
        one = reference(tmp_path / mode, GENERATE, f"eval.mode={mode}")
        assert_same_files(one, job_dir / "eval")
