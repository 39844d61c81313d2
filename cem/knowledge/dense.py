"""Dense retrieval: normalised sentence-transformers embeddings in an exact faiss index.

Inner product over unit vectors is cosine similarity; ``IndexFlatIP`` is exact, which is
cheap at the scale of the offline corpus (10k documents). The index is cached on disk by
corpus hash, embedding-model name and weight dtype, like the BM25 index; ``cem assets
fetch`` builds the default one (``knowledge=wiki_dense``) once, so that no run pays for it.
The embedder runs where ``model.device`` resolves (``cem.device``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from cem.errors import ModelError
from cem.knowledge.corpus import corpus_hash, load_cached, save_cached

log = logging.getLogger(__name__)

INDEX_VERSION = 1
INDEX_FILE = "index.faiss"
BATCH_SIZE = 64  # sentences per forward pass; small enough for CPU memory


def embedding_dtype(spec: str, device: str) -> str:
    """The embedder's weight dtype: ``spec``, or for ``auto`` bfloat16 where it is native
    (the one rule: ``cem.device.resolve_dtype``)."""
    from cem import device as devices

    return devices.resolve_dtype("knowledge.sources.<i>.embedding_dtype", spec, device)


def load_embedder(model: str | None, asset: str, device: str, dtype: str) -> tuple[Any, str]:
    """Load a sentence-transformers model and the name that identifies it in the cache.

    Args:
        model: a local folder or hub id; wins over ``asset`` when set.
        asset: the offline asset holding the model folder (fetched on first use).
        device: a ``model.device`` value, resolved by ``cem.device.resolve_device``.
        dtype: ``knowledge.sources.<i>.embedding_dtype``; it is part of the name.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    from cem import device as devices

    if model:
        where, name = model, model
    else:
        from cem.assets.fetch import asset_dir

        where, name = str(asset_dir(asset)), f"asset:{asset}"
    target = devices.resolve_device(device)
    dtype = embedding_dtype(dtype, target)
    try:
        kwargs = {"dtype": getattr(torch, dtype)}
        return SentenceTransformer(where, device=target, model_kwargs=kwargs), f"{name}@{dtype}"
    except Exception as e:  # missing folder, no network for a hub id, bad weights
        raise ModelError(
            f"cannot load the embedding model {where!r} ({e}); point "
            "knowledge.sources.<i>.embedding_model at a sentence-transformers folder, "
            "or fetch the asset with `cem assets fetch minilm-l6-v2`"
        ) from None


def embed(model: Any, texts: list[str]) -> np.ndarray:
    """Unit-norm float32 embeddings, one row per text."""
    vectors = model.encode(
        texts,
        batch_size=BATCH_SIZE,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _dimension(model: Any) -> int:
    # sentence-transformers 6 renamed get_sentence_embedding_dimension.
    get = getattr(model, "get_embedding_dimension", None)
    return int(get() if get else model.get_sentence_embedding_dimension())


class DenseIndex:
    """An exact inner-product index over embedded texts; hits are ``(position, cosine)``.

    ``folder`` is its cache folder and ``cached`` says whether it was loaded from there
    (set by ``load_or_build``).
    """

    def __init__(self, index: Any, model: Any):
        self.index = index
        self.model = model
        self.folder: Path | None = None
        self.cached = False

    @classmethod
    def build(cls, texts: list[str], model: Any) -> DenseIndex:
        import faiss

        vectors = embed(model, texts)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return cls(index, model)

    @classmethod
    def load(cls, folder: Path, model: Any, n_docs: int) -> DenseIndex:
        """Load a saved index; raises if its size or dimension does not match."""
        import faiss

        index = faiss.read_index(str(folder / INDEX_FILE))
        dim = _dimension(model)
        if index.ntotal != n_docs or index.d != dim:
            raise ValueError(
                f"index has {index.ntotal} vectors of dim {index.d}, expected {n_docs} of {dim}"
            )
        return cls(index, model)

    def save(self, folder: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(folder / INDEX_FILE))

    @classmethod
    def load_or_build(
        cls, texts: list[str], model: Any, model_name: str, root: Path, kind: str
    ) -> DenseIndex:
        """The cached index under ``root/<kind>-dense-<hash of corpus and model>/``.

        A corrupt or stale cache folder is logged, deleted and rebuilt.
        """
        digest = corpus_hash(texts)
        key = hashlib.sha256(f"{digest}\0{model_name}".encode()).hexdigest()
        folder = Path(root) / f"{kind}-dense-{key[:16]}"
        meta = {
            "format": "cem-dense-faiss-flatip",
            "version": INDEX_VERSION,
            "corpus_sha256": digest,
            "model": model_name,
            "n_docs": len(texts),
        }
        index = load_cached(folder, meta, lambda f: cls.load(f, model, len(texts)))
        if index is not None:
            log.info("loaded dense index %s", folder)
            index.folder, index.cached = folder, True
            return index
        log.info("embedding %d texts with %s into %s", len(texts), model_name, folder)
        index = cls.build(texts, model)
        save_cached(folder, meta, index.save)
        index.folder = folder
        return index

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """Top ``k`` documents per query by cosine similarity, best first."""
        k = min(k, self.index.ntotal)
        if not queries or k < 1:
            return [[] for _ in queries]
        scores, ids = self.index.search(embed(self.model, queries), k)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]
