"""The configs say only what differs: every key a YAML file sets exists in its schema, no
entry YAML restates what the schema and its chosen group options already give, one file
says where every command writes, and every seed follows the job's ``seed``. Each check is
also held against a fault planted in a copy of ``conf/``, so it can fail."""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from cem.config import SCHEMAS, RunJob, conf_dir
from cem.validate import field_type, not_optional

ENTRIES = tuple(SCHEMAS)  # eval, retrieve, build, train, run: conf/<entry>.yaml
HYDRA_OUTPUT = Path("hydra/output/cem.yaml")  # where every command writes


def yaml_files(conf: Path) -> list[Path]:
    """Every YAML file of cem's own config nodes (conf/hydra/ configures Hydra itself)."""
    return sorted(
        rel for p in conf.rglob("*.yaml") if (rel := p.relative_to(conf)).parts[0] != "hydra"
    )


def set_keys(node: object, prefix: str = "") -> list[str]:
    """The dotted keys a YAML node sets; a list of mappings gives each item's (``sources.0.kind``)."""
    if isinstance(node, dict) and node:
        return [k for key, value in node.items() for k in set_keys(value, f"{prefix}{key}.")]
    if isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        return [k for i, value in enumerate(node) for k in set_keys(value, f"{prefix}{i}.")]
    return [prefix[:-1]]


def package(conf: Path, rel: Path) -> str:
    """Where the keys of ``conf/rel`` land: its ``# @package`` line, else its group's path."""
    for line in (conf / rel).read_text(encoding="utf-8").splitlines():
        if line.startswith("# @package "):
            name = line.removeprefix("# @package ").strip()
            return "" if name == "_global_" else name
    return ".".join(rel.parent.parts)


def unknown_keys(schema: type, keys: list[str]) -> list[str]:
    """The ``keys`` that name no field of ``schema``; below a free-form ``dict`` field (the
    Lightning ``trainer`` kwargs, ``model.arch``, ``train.loss_weights``) any key is one."""
    unknown = []
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            kind = field_type(schema, ".".join(parts[:n]))
            if kind is None:
                unknown.append(key)
                break
            if typing.get_origin(not_optional(kind)[0]) is dict:
                break
    return unknown


def schema_problems(conf: Path) -> list[str]:
    """``file: key`` for each key a YAML file of ``conf`` sets that its schema does not have."""
    problems = []
    for rel in yaml_files(conf):
        body = yaml.safe_load((conf / rel).read_text(encoding="utf-8")) or {}
        body = {k: v for k, v in body.items() if k not in ("defaults", "hydra")}
        schema = SCHEMAS[rel.stem] if rel.parent == Path(".") else RunJob  # RunJob has every node
        where = package(conf, rel)
        keys = [f"{where}.{k}" if where else k for k in set_keys(body)] if body else []
        problems += [f"{rel}: {k}" for k in unknown_keys(schema, keys)]
    return problems


def restated(conf: Path, name: str, tmp: Path, compose) -> list[str]:
    """The keys of ``conf/<name>.yaml`` whose value the file's ``defaults:`` already give."""
    body = yaml.safe_load((conf / f"{name}.yaml").read_text(encoding="utf-8"))
    defaults = body.pop("defaults")
    bare = tmp / "bare"
    shutil.copytree(conf, bare)
    (bare / f"{name}.yaml").write_text(yaml.safe_dump({"defaults": defaults}), encoding="utf-8")
    full, without = (OmegaConf.to_container(compose(name, config_dir=folder))
                     for folder in (conf, bare))  # fmt: skip
    return [k for k in (set_keys(body) if body else []) if _get(full, k) == _get(without, k)]


def _get(node: object, dotted: str) -> object:
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def planted(tmp: Path, files: dict[str, str]) -> Path:
    """A copy of conf/ with ``files`` (path -> YAML text added to the file, or its text)."""
    conf = tmp / "planted"
    shutil.copytree(conf_dir(), conf)
    for rel, text in files.items():
        path = conf / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((path.read_text() if path.exists() else "") + text, encoding="utf-8")
    return conf


# --- every key is a schema's ------------------------------------------------------------------


def test_every_key_a_yaml_file_sets_is_in_its_schema():
    assert len(yaml_files(conf_dir())) > 50  # every group option, entry, experiment and table
    assert schema_problems(conf_dir()) == []


def test_a_key_that_is_no_schemas_is_found_in_every_kind_of_file(tmp_path):
    conf = planted(tmp_path, {
        "run.yaml": "\neval:\n  formulaton: cf\n",  # an entry: its schema's keys
        "knowledge/mine.yaml": "name: mine\nsources:\n  - kind: wiki_offline\n    topk: 5\n",
        "experiment/mine.yaml": "# @package _global_\nlogger:\n  wandb: false\n"
                                "trainer:\n  any_lightning_kwarg: 1\n",  # free-form: fine
    })  # fmt: skip
    assert schema_problems(conf) == [
        "experiment/mine.yaml: logger.wandb",
        "knowledge/mine.yaml: knowledge.sources.0.topk",
        "run.yaml: eval.formulaton",
    ]


# --- no entry restates a default ------------------------------------------------------------


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_yaml_restates_no_default(name, tmp_path, compose):
    assert restated(conf_dir(), name, tmp_path, compose) == [], (
        f"conf/{name}.yaml restates what its defaults give"
    )


def test_a_restated_default_is_found(tmp_path, compose):
    # eval.batch_size is the schema's 32; loop.rounds 3 is run.yaml's own (the schema says 2).
    conf = planted(tmp_path, {"run.yaml": "\neval:\n  batch_size: 32\nseed: 0\n"})
    assert restated(conf, "run", tmp_path, compose) == ["eval.batch_size", "seed"]


# --- one file says where every command writes ------------------------------------------------


def test_one_file_holds_the_run_sweep_and_job_settings():
    for name in ENTRIES:
        body = yaml.safe_load((conf_dir() / f"{name}.yaml").read_text())
        assert "hydra" not in body, f"conf/{name}.yaml: run/sweep dirs live in {HYDRA_OUTPUT}"
        assert {"override hydra/output": "cem"} in body["defaults"]
    cem = yaml.safe_load((conf_dir() / HYDRA_OUTPUT).read_text())
    assert set(cem) == {"run", "sweep"}  # job.chdir stays Hydra 1.3's false
    # Only the tables change them: a table's jobs are named by their overrides (resumable).
    for rel in yaml_files(conf_dir()):
        hydra = (yaml.safe_load((conf_dir() / rel).read_text()) or {}).get("hydra", {})
        own = {k for k in hydra if k in ("run", "sweep", "job")}
        assert own == set() or rel == Path("table/_base.yaml"), (rel, own)


# --- seeds ----------------------------------------------------------------------------------


def seeds(node: object, prefix: str = "") -> dict[str, object]:
    """Every ``seed`` of a resolved config, by its dotted key."""
    if isinstance(node, dict):
        found = {f"{prefix}seed": node["seed"]} if "seed" in node else {}
        for key, value in node.items():
            found |= seeds(value, f"{prefix}{key}.")
        return found
    return {}


SEEDED_GROUPS = ("benchmark", "mix", "replay")  # their options set their own seed


@pytest.mark.parametrize(
    "overrides",
    [(e,) for e in ENTRIES]
    + [
        ("run", f"{g}={o.stem}")
        for g in SEEDED_GROUPS
        for o in sorted((conf_dir() / g).glob("*.yaml"))
    ],
    ids=" ".join,
)
def test_every_seed_follows_the_jobs_seed(overrides, compose):
    # `cem train seed=3` trained with seed 0 while conf/train.yaml said train.seed: 0.
    entry, *rest = overrides
    cfg = compose(entry, "seed=3", "run_dir=/tmp/x", *rest)
    found = seeds(OmegaConf.to_container(cfg, resolve=True))
    assert len(found) > 1 and set(found.values()) == {3}, found
