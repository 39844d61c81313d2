"""The ``cem`` command: ``cem <command> [key=value ...]``.

Hydra commands compose ``conf/<command>.yaml``; ``cem assets`` is a plain argparse tool.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from cem import signals
from cem.errors import CemError
from cem.io import check_writable, storage_message

# command -> (module:function taking the composed config, one-line help)
HYDRA_COMMANDS: dict[str, tuple[str, str]] = {
    "eval": (
        "cem.evaluation.runner:run_eval",
        "score a model on a benchmark and list its mistakes",
    ),
    "retrieve": (
        "cem.knowledge.retrieve:run_retrieve",
        "mistakes -> knowledge points -> passages, with the leak guard",
    ),
    "build": (
        "cem.curriculum.build:run_build",
        "CPT passages + the four CIT instruction types -> the training set",
    ),
    "train": (
        "cem.training.train:run_train",
        "joint CIT+CPT training (LoRA or full); writes the merged model",
    ),
    "run": (
        "cem.loop.run:run_loop",
        "the CEM loop: evaluate, mistakes, retrieve, build, train, round after round",
    ),
}
USAGE = """usage: cem <command> [key=value ...]

commands:
{commands}
  report     a sweep's runs as one table: cem report multirun/<table> (cem report --help)
  inspect    one run's exam mistakes on one page: cem inspect RUN_DIR -> RUN_DIR/inspect.html
  verify     check every finished stage's files against its done-marker: cem verify RUN_DIR
  archive    a sweep's evidence without its models, to commit: cem archive multirun/<table> DEST
  assets     fetch, list or verify the offline assets (cem assets --help)

Hydra options work after the command: `cem eval --cfg job` prints the composed config,
`cem eval -m seed=0,1,2` runs a sweep. `run_dir=PATH` sets where a command writes."""


def _load(target: str) -> Callable[[DictConfig], object]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _finish_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _contexts(e: BaseException):
    """The exceptions that ``e`` was raised while handling, innermost last."""
    while e.__context__ is not None:
        e = e.__context__
        yield e


def stopped(e: signals.Interrupted) -> str:
    """ "stopped by SIGTERM; training resumes from step 2 (D/checkpoints/last.ckpt)"."""
    return f"stopped by {e.name}" + (f"; {e.detail}" if e.detail else "")


def resume_hint(command: str, overrides: list[str], cfg: DictConfig) -> str:
    """The command that continues this one: the same overrides, pinned to its run_dir.

    A sweep is continued by its own command line (each job has its own folder).
    """
    import shlex

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"Run the same command again to continue: {shlex.join(['cem', command, *overrides])}"
    rest = [o for o in overrides if not o.lstrip("+~").startswith("run_dir=")]
    run_dir = Path(cfg.run_dir).resolve()
    return f"Resume with: {shlex.join(['cem', command, f'run_dir={run_dir}', *rest])}"


def run_hydra(command: str, overrides: list[str]) -> None:
    """Compose ``conf/<command>.yaml`` with the overrides and run the command's task.

    ``sys.argv`` is left as the user typed it (``cem train key=value ...``): Lightning's
    DDP launcher re-runs that command line once per extra rank, so it must stay runnable.
    Hydra therefore gets the overrides explicitly rather than through ``@hydra.main``,
    which would parse ``sys.argv``.
    """
    from hydra import version
    from hydra._internal.utils import _run_hydra, get_args_parser

    from cem.composition import file_problems
    from cem.config import SCHEMAS, conf_dir, register_configs
    from cem.validate import ConfigInvalid, override_problems

    version.setbase("1.3")
    register_configs()
    task = _load(HYDRA_COMMANDS[command][0])

    def _app(cfg: DictConfig) -> None:
        # A launcher may run this in a process of its own (submitit on a SLURM node), which
        # installed its requeue handler before calling it.
        signals.install()
        try:
            task(cfg)
        except CemError as e:
            print(f"cem {command}: error: {e}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # a full disk under a write outside cem.io (a logger, a cache)
            msg = storage_message(e, getattr(e, "filename", None) or cfg.run_dir)
            if msg is None:
                raise
            # A logger that fails to flush while training stops hides the error that stopped it.
            first = next((c for c in _contexts(e) if isinstance(c, CemError)), None)
            print(f"cem {command}: error: {first or msg}", file=sys.stderr)
            sys.exit(2)
        except signals.Interrupted as e:
            if e.signum in signals.LAUNCHER_SIGNALS:
                print(f"cem {command}: {stopped(e)}: the job's time limit is near; the launcher "
                      "requeues it and the requeued job continues from here", file=sys.stderr)  # fmt: skip
                signals.requeue(e)  # exits (SystemExit) when it requeues; W&B ends below
            print(f"cem {command}: {stopped(e)}. {resume_hint(command, overrides, cfg)}",
                  file=sys.stderr)  # fmt: skip
            sys.exit(e.exit_code)
        finally:
            _finish_wandb()

    # Hydra makes the output folder before the task runs, and a failure there is a traceback.
    for o in overrides:
        key, _, value = o.lstrip("+").partition("=")
        if key in ("run_dir", "hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            check_writable(value, f"set {key}=<another folder>")
    parser = get_args_parser()
    parser.prog = f"cem {command}"
    args = parser.parse_args(overrides)
    # A choice outside its list fails at composition; said first, as a failed check says it.
    if problems := override_problems(SCHEMAS[command], args.overrides) or file_problems(
        command, args
    ):
        print(f"cem {command}: error: {ConfigInvalid(problems)}", file=sys.stderr)
        sys.exit(2)
    _run_hydra(args=args, args_parser=parser, task_function=_app,
               config_path=str(conf_dir()), config_name=command)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = "\n".join(f"  {name:<10} {help_}" for name, (_, help_) in HYDRA_COMMANDS.items())
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(commands=commands))
        return 0
    command, rest = argv[0], argv[1:]
    signals.install()
    # On a full disk every log line's write fails too; the write that matters says so once.
    logging.raiseExceptions = False
    try:
        if command == "assets":
            from cem.assets.cli import main as assets_main

            return assets_main(rest)
        if command == "report":
            from cem.loop.report import main as report_main

            return report_main(rest)
        if command == "inspect":
            from cem.loop.inspector import main as inspect_main

            return inspect_main(rest)
        if command == "verify":
            from cem.loop.verify import main as verify_main

            return verify_main(rest)
        if command == "archive":
            from cem.loop.archive import main as archive_main

            return archive_main(rest)
        if command not in HYDRA_COMMANDS:
            known = ", ".join([*HYDRA_COMMANDS, "report", "inspect", "verify", "archive", "assets"])
            raise CemError(
                f"unknown command {command!r}; known commands: {known} (try `cem --help`)"
            )
        run_hydra(command, rest)
    except CemError as e:
        print(f"cem: error: {e}", file=sys.stderr)
        return 2
    except signals.Interrupted as e:  # before or after a command's own handling
        print(f"cem {command}: {stopped(e)}; run the same command again to continue",
              file=sys.stderr)  # fmt: skip
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
