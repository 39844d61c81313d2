"""The entry YAMLs say only what differs: no line restates what the schema and the chosen
group options already give, and every key they set exists in the schema."""

from __future__ import annotations

import shutil

import pytest
import yaml
from omegaconf import OmegaConf

from cem.config import conf_dir

ENTRIES = ("eval", "retrieve", "build", "train", "run")


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
def test_entry_yaml_restates_no_default(name, tmp_path, compose):
    body = yaml.safe_load((conf_dir() / f"{name}.yaml").read_text())
    defaults = body.pop("defaults")
    bare = tmp_path / "conf"
    shutil.copytree(conf_dir(), bare)
    (bare / f"{name}.yaml").write_text(yaml.safe_dump({"defaults": defaults}))
    full, without = (OmegaConf.to_container(compose(name, "run_dir=/x", config_dir=folder))
                     for folder in (conf_dir(), bare))  # fmt: skip
    keys = [k for k in _leaves(body) if k not in ("run_dir",)]
    restated = [k for k in keys if _get(full, k) == _get(without, k)]
    assert restated == [], f"conf/{name}.yaml restates what its defaults give: {restated}"


def test_no_entry_yaml_repeats_the_hydra_output_block():
    for name in ENTRIES:
        body = yaml.safe_load((conf_dir() / f"{name}.yaml").read_text())
        assert "hydra" not in body, f"conf/{name}.yaml: run/sweep dirs live in hydra/output/cem"
        assert {"override hydra/output": "cem"} in body["defaults"]
