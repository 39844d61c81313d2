"""A config file's bad choice or renamed key, found before Hydra runs and said in one line.

OmegaConf refuses a bad choice in a config file (an experiment, a group option, a user's
file in ``--config-dir``) while Hydra composes, in several lines without the line number.
``cem`` composes the config first, as Hydra is about to, and says each such problem as it
says an override's (``cem.validate.override_problems``), with the file and line.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, ValidationError
from omegaconf.errors import OmegaConfBaseException

from cem.config import RENAMED
from cem.validate import (
    choice_field,
    choice_problem,
    not_optional,
    override_problems,
    override_value,
    renamed_problem,
)


def file_problems(command: str, args: argparse.Namespace) -> list[str]:
    """The config files' bad choices and renamed keys, each said in one line with its file
    and line, as ``override_problems`` says an override's; any other composition error is
    left for Hydra to report. Found by composing the config as Hydra is about to (a sweep's
    base config, as Hydra's ``get_mode`` does), then, for a sweep, once for each group option
    it sweeps over (``experiment=a,b``, a table's axis), so no job runs before a later one's
    file stops the sweep."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException
    from hydra.types import RunMode

    from cem.config import SCHEMAS, conf_dir

    if args.help or args.hydra_help or args.info or args.shell_completion:
        return []
    if GlobalHydra.instance().is_initialized():  # inside another Hydra app: not ours to clear
        return []
    search = create_automatic_config_search_path(None, None, args.config_path or str(conf_dir()))
    if args.config_dir:
        search.prepend("command-line", f"file://{Path(args.config_dir).resolve()}")
    # The search path's folders (Hydra's own configs and the ConfigStore are pkg://...).
    paths = [p.path.removeprefix("file://") for p in search.get_path() if p.path]
    folders = [Path(p) for p in paths if "://" not in p]

    def compose(overrides: list[str]) -> tuple[DictConfig | None, list[str]]:
        try:
            return hydra.compose_config(
                config_name=args.config_name or command, overrides=overrides,
                run_mode=RunMode.MULTIRUN, with_log_configuration=False,
                validate_sweep_overrides=False,
            ), []  # fmt: skip
        except ConfigCompositionException as e:
            problem = composition_problem(SCHEMAS[command], e, folders)
            return None, [problem] if problem else []
        except Exception:  # Hydra's to report, in its own words
            return None, []

    try:
        hydra = Hydra.create_main_hydra2(task_name=command, config_search_path=search)
    except Exception:  # Hydra says what is wrong when it starts
        return []
    try:
        cfg, found = compose(args.overrides)
        sweep = args.multirun or (cfg is not None and cfg.hydra.mode == RunMode.MULTIRUN)
        if cfg is None or args.cfg or not sweep:
            return found
        params = [
            f"{k}={v}" for k, v in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}).items()
        ]
        found += override_problems(SCHEMAS[command], params)  # a table's own values
        for line, key, values in group_sweeps([*params, *args.overrides], folders):
            rest = [o for o in args.overrides if o != line]
            for value in values:
                found += compose([*rest, f"{key}={value}"])[1]
        return list(dict.fromkeys(found))
    finally:
        GlobalHydra.instance().clear()


def group_sweeps(overrides: list[str], folders: list[Path]) -> list[tuple[str, str, list[str]]]:
    """The sweeps over a config group's options among ``overrides`` (a later one of a group
    wins, as Hydra takes the command line's over a sweeper's params): each one's override,
    group and options."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return []  # a malformed override: Hydra says what is wrong with it
    sweeps = {o.key_or_group: (o.input_line, o.key_or_group, list(o.sweep_string_iterator()))
              for o in parsed if o.is_choice_sweep()}  # fmt: skip
    return [s for group, s in sweeps.items() if any((f / group).is_dir() for f in folders)]


def composition_problem(schema: type, error: Exception, folders: Sequence[Path]) -> str | None:
    """A composition that failed on a config file's bad choice or renamed key, said as
    ``override_problems`` says an override's, with the file and line (looked for in
    ``folders``, the config search path); None for any other error, which Hydra reports."""
    cause = error.__cause__ or error.__context__
    where = re.match(r"In '([^']+)': ", str(error))
    if not isinstance(cause, OmegaConfBaseException) or not cause.full_key or where is None:
        return None
    key = re.sub(r"\[(\d+)\]", r".\1", cause.full_key)  # OmegaConf writes a list item key[1]
    path = next((p for f in folders if (p := Path(f) / f"{where[1]}.yaml").is_file()), None)
    root = _read(path) if path else None
    if "." not in key and dataclasses.is_dataclass(cause.object_type):
        key = _item_key(schema, cause.object_type, key, cause.value, root) or key
    node = _find(root, key.split("."))
    if key in RENAMED:
        given = node.value if isinstance(node, yaml.ScalarNode) else override_value(cause.value)
        problem = renamed_problem(schema, key, given)
    elif isinstance(cause, ValidationError) and (field := choice_field(schema, key)):
        problem = choice_problem(key, cause.value, *field)
    else:
        return None
    if problem is None:
        return None
    head, _, fix = problem.removesuffix(")").rpartition(" (try ")
    fix_key, _, fix_value = fix.partition("=")  # the fix as the file writes it: key: value
    leaf = fix_key.rpartition(".")[2]
    fix = f"- {fix_value}" if leaf.isdigit() else f"{leaf}: {fix_value}"
    if path is None:  # a schema in the ConfigStore, or a file outside the search path
        return f"config {where[1]!r}: {head} (try {fix})"
    line = f":{node.start_mark.line + 1}" if node is not None else ""
    return f"{path}{line}: {head} (try {fix})"


def _read(path: Path) -> yaml.Node | None:
    """The YAML nodes of ``path``, with their line numbers; None when it does not parse."""
    try:
        return yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _find(root: object, parts: list[str]) -> yaml.Node | None:
    """The YAML node under ``root`` that sets the dotted key ``parts``: the whole key in a
    ``_global_`` file, its tail under the file's own package (``knowledge.sources.0.kind``
    is ``sources.0.kind`` in ``knowledge/x.yaml``); None when it is not there."""
    for start in range(len(parts)):
        node = root
        for part in parts[start:]:
            if isinstance(node, yaml.MappingNode):
                node = next((v for k, v in node.value if k.value == part), None)
            elif isinstance(node, yaml.SequenceNode) and part.isdigit():
                node = node.value[int(part)] if int(part) < len(node.value) else None
            else:
                node = None
            if node is None:
                break
        if node is not None:
            return node
    return None


def _item_key(schema: type, item: type, key: str, value: object, root: object) -> str | None:
    """The full key of a list item's field, which OmegaConf names alone (``kind`` for an item
    of ``knowledge.sources``): the schema's list of ``item`` whose item in the file holds
    ``value`` at ``key``."""
    for dotted in _lists_of(schema, item):
        items = _find(root, dotted.split("."))
        for i, node in enumerate(items.value if isinstance(items, yaml.SequenceNode) else []):
            found = _find(node, [key])
            if isinstance(found, yaml.ScalarNode) and found.value == str(value):
                return f"{dotted}.{i}.{key}"
    return None


def _lists_of(schema: type, item: type, prefix: str = "") -> list[str]:
    """The dotted keys of ``schema``'s fields that are lists of the dataclass ``item``."""
    found = []
    for name, kind in typing.get_type_hints(schema).items():
        kind = not_optional(kind)[0]
        if typing.get_origin(kind) is list and typing.get_args(kind)[0] is item:
            found.append(f"{prefix}{name}")
        elif dataclasses.is_dataclass(kind):
            found += _lists_of(kind, item, f"{prefix}{name}.")
    return found
