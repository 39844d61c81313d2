"""Corpus documents: the offline Wikipedia summaries, the user's own files, chunking, index cache.

A document is ``(doc_id, title, text)``. Sources index ``index_text(doc)`` and return
``doc.text`` as the passage. The on-disk index cache shared by the BM25 and dense indexes
lives here too: a folder per (kind, corpus hash), built in a temp folder and renamed into
place, with a manifest of file checksums written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cem.errors import DataError
from cem.io import ensure_dir, sha256_file

log = logging.getLogger(__name__)

CountTokens = Callable[[str], int]
SUMMARIES_ASSET = "wiki-summaries-en"
SUMMARIES_FILE = "summaries_en-us.json"
TEXT_SUFFIXES = (".txt", ".md")
MANIFEST = "manifest.json"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


@dataclass(frozen=True)
class Document:
    """One retrievable unit: ``doc_id`` is unique within its corpus."""

    doc_id: str
    title: str
    text: str


def index_text(doc: Document) -> str:
    """What gets indexed: the title (a strong retrieval signal) above the text."""
    return f"{doc.title}\n{doc.text}" if doc.title else doc.text


def whitespace_tokens(text: str) -> int:
    """The default token counter: whitespace-separated words."""
    return len(text.split())


# --------------------------------------------------------------------------- loading


def load_wiki_summaries(path: str | os.PathLike | None = None) -> list[Document]:
    """Load the offline Wikipedia summaries as ``(title, title, extract)`` documents.

    The general probe's passages (``cem.benchmarks.probe``) are left out: they measure
    forgetting, so no source may retrieve them.

    Args:
        path: the summaries JSON file or the folder holding it; None: the
            ``wiki-summaries-en`` asset (fetched on first use).
    """
    if path is None:
        from cem.assets.fetch import asset_dir

        path = asset_dir(SUMMARIES_ASSET)
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARIES_FILE
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DataError(path, None, "summaries file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, None, f"cannot read ({e})") from None
    if not isinstance(data, dict):
        raise DataError(path, None, "expected a JSON object mapping title -> summary")
    from cem.benchmarks.probe import probe_titles

    held_out = probe_titles()
    docs = []
    for key, entry in data.items():
        text = entry.get("extract", "") if isinstance(entry, dict) else ""
        if isinstance(text, str) and text.strip():
            title = entry.get("title") or key
            if str(key).casefold() in held_out or str(title).casefold() in held_out:
                continue
            docs.append(Document(doc_id=str(key), title=str(title), text=text.strip()))
    if not docs:
        raise DataError(path, None, "no summaries with a non-empty 'extract'")
    return docs


def load_local_corpus(path: str | os.PathLike, text_field: str = "text") -> list[Document]:
    """Load the user's corpus: a JSONL or Parquet file, a .txt/.md file, or a folder of them.

    JSONL/Parquet rows give ``text_field`` (required) and optional ``id`` and ``title``.
    Folders are read recursively (hidden entries skipped); a file's id is its relative path.

    Raises:
        DataError: the path is missing or unreadable, a row is bad, or no text was found.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        docs = _load_folder(path)
    elif not path.exists():
        raise DataError(path, None, "no such file or folder (set knowledge.sources.0.path=...)")
    elif path.suffix in (".jsonl", ".json"):
        docs = _load_jsonl(path, text_field)
    elif path.suffix == ".parquet":
        docs = _load_parquet(path, text_field)
    elif path.suffix in TEXT_SUFFIXES:
        docs = [d for d in [_load_text_file(path, path.parent)] if d is not None]
    else:
        raise DataError(path, None, "unsupported file type; expected .jsonl, .parquet, .txt, .md")
    if not docs:
        raise DataError(path, None, "the corpus is empty (no non-blank text)")
    return docs


def _row_doc(row: Any, path: Path, where: int, text_field: str) -> Document | None:
    if not isinstance(row, dict):
        raise DataError(path, where, f"expected a JSON object, got {type(row).__name__}")
    if text_field not in row:
        keys = sorted(row)
        raise DataError(path, where, f"no {text_field!r} field (fields: {keys}; set text_field=)")
    text = row[text_field]
    if text is None:
        return None
    if not isinstance(text, str):
        raise DataError(path, where, f"{text_field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        return None
    doc_id = row.get("id")
    doc_id = f"{path.name}:{where}" if doc_id is None or doc_id == "" else str(doc_id)
    return Document(doc_id=doc_id, title=str(row.get("title") or ""), text=text.strip())


def _load_jsonl(path: Path, text_field: str) -> list[Document]:
    docs = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(path, lineno, f"invalid JSON ({e.msg})") from None
                doc = _row_doc(row, path, lineno, text_field)
                if doc is not None:
                    docs.append(doc)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, None, f"cannot read ({e})") from None
    return docs


def _load_parquet(path: Path, text_field: str) -> list[Document]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if text_field not in names:
            raise DataError(path, None, f"no column {text_field!r} (columns: {names})")
        table = pq.read_table(path, columns=[c for c in (text_field, "id", "title") if c in names])
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(path, None, f"cannot read as Parquet ({e})") from None
    docs = []
    for i, row in enumerate(table.to_pylist(), 1):  # "line" i = 1-based row number
        doc = _row_doc(row, path, i, text_field)
        if doc is not None:
            docs.append(doc)
    return docs


def _load_text_file(path: Path, root: Path) -> Document | None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(path, None, "not UTF-8 text") from None
    except OSError as e:
        raise DataError(path, None, f"cannot read ({e})") from None
    if not text.strip():
        return None
    return Document(doc_id=path.relative_to(root).as_posix(), title="", text=text.strip())


def _load_folder(root: Path) -> list[Document]:
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix in TEXT_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(root, None, "no .txt or .md files in this folder")
    return [d for p in files if (d := _load_text_file(p, root)) is not None]


# --------------------------------------------------------------------------- chunking


def chunk_text(text: str, max_tokens: int, count_tokens: CountTokens | None = None) -> list[str]:
    """Split ``text`` into chunks of at most about ``max_tokens`` tokens at sentence ends.

    Sentences are packed greedily; a sentence longer than the budget is cut between words.
    Token counts of the pieces are summed, so the total may differ from the count of the
    joined chunk by a token or two with subword tokenizers.
    """
    count = count_tokens or whitespace_tokens
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1; got {max_tokens}")
    if count(text) <= max_tokens:
        return [text] if text.strip() else []
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        if not sentence:
            continue
        n = count(sentence)
        if n > max_tokens:
            pieces = _split_words(sentence, max_tokens, count)
            sentence, n = pieces[-1], count(pieces[-1])
            chunks += ([" ".join(current)] if current else []) + pieces[:-1]
            current, used = [], 0
        if current and used + n > max_tokens:
            chunks.append(" ".join(current))
            current, used = [], 0
        current.append(sentence)
        used += n
    if current:
        chunks.append(" ".join(current))
    return chunks


def _split_words(sentence: str, max_tokens: int, count: CountTokens) -> list[str]:
    """Cut one over-long sentence between words; binary search keeps tokenizer calls few."""
    words, pieces = sentence.split(), []
    while words:
        lo, hi = 1, len(words)  # the largest prefix that fits (at least one word)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(" ".join(words[:mid])) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        pieces.append(" ".join(words[:lo]))
        words = words[lo:]
    return pieces


def chunk_documents(
    docs: Iterable[Document], max_tokens: int, count_tokens: CountTokens | None = None
) -> list[Document]:
    """Chunk each document; chunk ``j`` of a split document gets id ``<doc_id>#<j>``."""
    out = []
    for doc in docs:
        chunks = chunk_text(doc.text, max_tokens, count_tokens)
        if len(chunks) == 1:
            out.append(Document(doc.doc_id, doc.title, chunks[0]))
        else:
            out += [Document(f"{doc.doc_id}#{j}", doc.title, c) for j, c in enumerate(chunks)]
    return out


# --------------------------------------------------------------------------- index cache


def corpus_hash(texts: Iterable[str]) -> str:
    """sha256 over the texts in order (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for text in texts:
        b = text.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def index_root(index_dir: str | None) -> Path:
    """``index_dir``, or ``$CEM_CACHE/indexes`` (``$CEM_CACHE`` defaults to ``~/.cache/cem``),
    created; a file in its place is a StorageError with the fix."""
    if index_dir:
        return ensure_dir(Path(index_dir).expanduser(), "give the source another index_dir")
    root = Path(os.environ.get("CEM_CACHE") or "~/.cache/cem").expanduser() / "indexes"
    return ensure_dir(root, "point CEM_CACHE at another folder")


def load_cached(folder: Path, meta: dict, load: Callable[[Path], Any]) -> Any | None:
    """Load an index from ``folder`` if its manifest matches ``meta`` and every checksum holds.

    A folder that fails any check, or whose ``load`` raises, is logged, deleted and
    reported as absent (None), so the caller rebuilds it.
    """
    if not folder.is_dir():
        return None
    try:
        with open(folder / MANIFEST, encoding="utf-8") as fh:
            manifest = json.load(fh)
        for key, value in meta.items():
            if manifest.get(key) != value:
                raise ValueError(f"manifest {key}={manifest.get(key)!r}, expected {value!r}")
        for name, digest in manifest["files"].items():
            if sha256_file(folder / name) != digest:
                raise ValueError(f"checksum mismatch for {name}")
        return load(folder)
    except Exception as e:  # anything wrong with a cache means: rebuild it
        log.warning("index cache %s is corrupt or stale (%s); deleting and rebuilding", folder, e)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def save_cached(folder: Path, meta: dict, save: Callable[[Path], None]) -> None:
    """Write an index with ``save`` into a temp folder beside ``folder``, then rename it.

    The manifest (``meta`` plus each file's sha256) is written last, so a folder without
    a valid manifest is never mistaken for a finished index.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        save(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump({**meta, "files": files}, fh, indent=2)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same index first: keep theirs
            if not (folder / MANIFEST).exists():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
