"""Load and save causal LMs from a ``ModelConfig``.

A model comes from exactly one of: an offline asset (``model.asset``, see ``cem assets
list``), a local folder or hub id (``model.path``), or a seeded random tiny Llama
(``model.random_init``, tests only, no download). Every model comes back in eval mode with
a tokenizer that has a pad token, on the device ``model.device`` resolves to
(``cem.device.resolve_device``), its weights cast to ``model.dtype`` as they are read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from cem import device as devices
from cem.assets.bundled import TINY_TOKENIZER_DIR
from cem.choices import Dtype
from cem.config import ModelConfig, TrainConfig
from cem.errors import ConfigError, ModelError

DTYPES = {d.value: getattr(torch, d.value) for d in Dtype if d is not Dtype.auto}
LOCAL_PREFIXES = ("/", ".", "~")
FROM_TOKENIZER = {"vocab_size", "bos_token_id", "eos_token_id", "pad_token_id"}


def torch_dtype(name: str, key: str = "model.dtype") -> torch.dtype:
    """Map a resolved dtype string (``cem.device.resolve_dtype``) to a torch dtype;
    ConfigError naming ``key`` for anything else."""
    if name not in DTYPES:
        raise ConfigError(key, name, f"must be one of auto, {', '.join(DTYPES)}", f"{key}=auto")
    return DTYPES[name]


def _quiet_transformers() -> None:
    """No per-tensor "Loading weights" / "Writing model shards" bars: a loop loads and saves
    models every round, and the stage headers already say what is going on."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_model(
    cfg: ModelConfig, seed: int = 0, dtype_key: str = "model.dtype"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build the model and tokenizer that ``cfg`` describes, in eval mode.

    Args:
        cfg: the ``model`` config node (a ``ModelConfig`` or the composed DictConfig).
        seed: seeds the random weights when ``cfg.random_init``; unused otherwise.
        dtype_key: the config key ``cfg.dtype`` came from, for the messages.

    Raises:
        ConfigError: bad ``model.dtype``, ``model.asset`` or ``model.arch`` key; no source.
        ModelError: the folder or hub id cannot be loaded, or the tokenizer does not fit.
        AssetError: the asset cannot be fetched.
    """
    _quiet_transformers()
    device = devices.resolve_device(cfg.device)
    dtype = torch_dtype(devices.resolve_dtype(dtype_key, cfg.dtype, device), dtype_key)
    if cfg.asset:
        model, tok = _load_asset(cfg, dtype, device)
    elif cfg.random_init:
        tok = _load_tokenizer(str(cfg.tokenizer or TINY_TOKENIZER_DIR), cfg)
        model = random_llama(_plain(cfg.arch), tok, seed, dtype).to(device)
    elif cfg.path:
        model, tok = _load_pretrained(cfg, dtype, device)
    else:
        raise ConfigError(
            "model",
            {"asset": cfg.asset, "path": cfg.path, "random_init": cfg.random_init},
            "needs one of model.asset, model.path or model.random_init=true",
            "model=smollm2_135m_instruct or model.path=Qwen/Qwen2.5-0.5B-Instruct",
        )
    _fit_tokenizer(model, tok, cfg)
    return model.eval(), tok


def random_llama(
    arch: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, seed: int, dtype: torch.dtype
) -> LlamaForCausalLM:
    """A Llama with ``arch`` sizes and seeded random weights over ``tokenizer``'s vocabulary.

    The caller's RNG state is left as it was; the same seed gives the same weights.
    """
    # LlamaConfig takes unknown kwargs silently, so a misspelt size would go unnoticed.
    known = set(LlamaConfig().to_dict()) - FROM_TOKENIZER | {"rope_theta"}
    for key in arch:
        if key not in known:
            raise ConfigError(
                f"model.arch.{key}", arch[key],
                "is not a LlamaConfig size field (vocab and special ids come from the tokenizer)",
                f"~model.arch.{key}",
            )  # fmt: skip
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = LlamaConfig(
        **arch,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)  # initialised in float32, then cast: seed-stable
    return model.to(dtype)


def module_names(cfg: ModelConfig) -> list[str] | None:
    """The model's module names, from its config alone (meta device: no weights are read).

    None when the config is not at hand without a download (a hub id, an unfetched asset).
    """
    from transformers import AutoConfig

    if cfg.random_init:
        config = LlamaConfig(**_plain(cfg.arch))
    else:
        try:
            if cfg.asset:
                from cem.assets.fetch import asset_dir

                folder = str(asset_dir(cfg.asset, fetch=False))
            else:
                folder = _resolve_path(cfg.path)
            config = AutoConfig.from_pretrained(
                folder, trust_remote_code=cfg.trust_remote_code, local_files_only=True
            )
        except Exception:  # anything wrong here is for load_model to report
            return None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    return [name for name, _ in model.named_modules() if name]


def save_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    max_shard_size: str = TrainConfig.max_shard_size,
) -> Path:
    """Write safetensors weights (``max_shard_size`` shards), config and tokenizer to
    ``out_dir`` atomically.

    Everything is written to a temp folder beside ``out_dir`` and renamed into place, so
    ``out_dir`` never holds a half-written model; an existing ``out_dir`` is replaced. The
    folder and its files get the umask's permissions, like every other output. A signal
    waits until the model is in place; a full disk is a StorageError with the size needed.
    """
    from cem import signals
    from cem.io import ensure_dir, public_perms, storage_errors

    out = Path(out_dir)
    needed = sum(p.numel() * p.element_size() for p in model.parameters())
    with signals.deferred(), storage_errors(out, needed):
        ensure_dir(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        try:
            model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
            tokenizer.save_pretrained(tmp)
            public_perms(tmp)
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
    return out


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The configured model's tokenizer, without loading the weights (a pad token is set)."""
    if cfg.tokenizer:
        path = str(cfg.tokenizer)
    elif cfg.asset:
        from cem.assets.fetch import asset_dir

        path = str(asset_dir(cfg.asset))
    elif cfg.random_init:
        path = str(TINY_TOKENIZER_DIR)
    else:
        path = _resolve_path(cfg.path)
    tok = _load_tokenizer(path, cfg)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_asset(cfg: ModelConfig, dtype: torch.dtype, device: str) -> tuple[PreTrainedModel, Any]:
    from cem.assets.fetch import asset_dir
    from cem.assets.registry import ASSETS

    if cfg.asset not in ASSETS:
        raise ConfigError(
            "model.asset", cfg.asset, f"must be one of {', '.join(ASSETS)} (`cem assets list`)",
            "model.asset=smollm2-135m-instruct",
        )  # fmt: skip
    folder = asset_dir(cfg.asset)
    model = _from_pretrained(str(folder), cfg, dtype, device, "model.asset")
    return model, _load_tokenizer(str(cfg.tokenizer or folder), cfg)


def _load_pretrained(
    cfg: ModelConfig, dtype: torch.dtype, device: str
) -> tuple[PreTrainedModel, Any]:
    path = _resolve_path(cfg.path)
    model = _from_pretrained(path, cfg, dtype, device, "model.path")
    return model, _load_tokenizer(str(cfg.tokenizer or path), cfg)


def _resolve_path(path: str) -> str:
    """A local folder as an absolute path; anything else is passed on as a hub id."""
    local = Path(path).expanduser()
    if path.startswith(LOCAL_PREFIXES) or local.exists():
        if not local.is_dir():
            raise ModelError(
                f"model.path={path!r} is not a folder ({local.resolve()} is missing or a file); point "
                "it at a folder holding config.json and the weights, e.g. model.path=/data/my-model, "
                "or give a hub id such as model.path=Qwen/Qwen2.5-0.5B-Instruct"
            )
        return str(local.resolve())
    return path


def _from_pretrained(
    path: str, cfg: ModelConfig, dtype: torch.dtype, device: str, key: str
) -> PreTrainedModel:
    """A local plain safetensors folder is streamed (``cem.weights``); anything else, and a
    pinned ``model.revision``, goes through ``from_pretrained`` placed by ``device_map``."""
    from safetensors import SafetensorError  # a truncated or corrupt weights file

    from cem.weights import stream_load

    try:
        if Path(path).is_dir() and not cfg.revision:
            model = stream_load(Path(path), dtype, device, cfg.trust_remote_code)
            if model is not None:
                return model
        return AutoModelForCausalLM.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, dtype=dtype,
            device_map={"": device},
        )  # fmt: skip
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelError(
            f"could not load the model at {key}={path!r}: {str(e).rstrip('.')}. Check the folder or hub id; a hub "
            "model needs the network (and HF_HUB_OFFLINE unset) and, if gated, `hf auth login`; a "
            f"custom architecture needs model.trust_remote_code=true"
        ) from None


def _load_tokenizer(path: str, cfg: ModelConfig) -> PreTrainedTokenizerBase:
    # model.revision pins the model's repo; a separate model.tokenizer is taken as is.
    revision = None if cfg.tokenizer else cfg.revision
    try:
        return AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise ModelError(
            f"could not load the tokenizer from {path!r}: {str(e).rstrip('.')}. Set model.tokenizer to a "
            "folder or hub id that has one (e.g. model.tokenizer=/data/my-tokenizer)"
        ) from None


def _fit_tokenizer(model: PreTrainedModel, tok: PreTrainedTokenizerBase, cfg: ModelConfig) -> None:
    """Give the tokenizer a pad token and check its ids fit the embedding matrix."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    rows = model.get_input_embeddings().num_embeddings
    if len(tok) > rows:
        raise ModelError(
            f"the tokenizer ({cfg.tokenizer or 'the model folder'}) has {len(tok)} tokens but "
            f"the model {cfg.name} has {rows} embedding rows; set model.tokenizer to the "
            "model's own tokenizer (or leave it null)"
        )


def _plain(arch: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """``model.arch`` as a plain dict (Hydra hands over a DictConfig)."""
    if isinstance(arch, DictConfig):
        return OmegaConf.to_container(arch, resolve=True)
    return dict(arch)
