"""The entry YAMLs say only what differs: no line restates what the schema and the chosen
group options already give, and every key they set exists in the schema."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cem.config import conf_dir, register_configs

ENTRIES = ("eval", "retrieve", "build", "train", "run")


def _compose(folder: Path, name: str):
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(folder)):
        return OmegaConf.to_container(compose(config_name=name, overrides=["run_dir=/x"]))


def _leaves(node: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        out += _leaves(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return out


def _get(node: dict, dotted: str):
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_yaml_restates_no_default(name, tmp_path):
    body = yaml.safe_load((conf_dir() / f"{name}.yaml").read_text())
    defaults = body.pop("defaults")
    bare = tmp_path / "conf"
    shutil.copytree(conf_dir(), bare)
    (bare / f"{name}.yaml").write_text(yaml.safe_dump({"defaults": defaults}))
    full, without = _compose(conf_dir(), name), _compose(bare, name)
    keys = [k for k in _leaves(body) if k not in ("run_dir",)]
    restated = [k for k in keys if _get(full, k) == _get(without, k)]
    assert restated == [], f"conf/{name}.yaml restates what its defaults give: {restated}"


def test_no_entry_yaml_repeats_the_hydra_output_block():
    for name in ENTRIES:
        body = yaml.safe_load((conf_dir() / f"{name}.yaml").read_text())
        assert "hydra" not in body, f"conf/{name}.yaml: run/sweep dirs live in hydra/output/cem"
        assert {"override hydra/output": "cem"} in body["defaults"]
