"""Load benchmark files into :class:`MCItem` lists.

Formats (``benchmark.name``): ``jsonl`` (the project's record schema), ``xiezhi``,
``mmlu``, ``ceval`` and ``parquet`` (Parquet or Arrow). :mod:`cem.benchmarks.formats`
reads each of them into raw rows; this module turns rows into items, checks ids,
handles bad rows and walks folders.

Conventions:

* ``source`` is ``"<path>:<line>"``, the physical line where the row starts (the row
  number for Parquet/Arrow). ``set`` is ``set_name`` unless a jsonl/parquet row has its own.
* ids: the row's ``id`` (jsonl/parquet), ``<file stem>-<id column>`` (C-Eval, whose raw
  ids restart at 0 in every file), otherwise ``<file stem>-<row index>`` (0-based). An id
  seen twice in one result is a bad row.
* answers: jsonl/parquet take an int index, an option text or a letter (option text
  first, so an option that is itself a letter wins); Xiezhi takes the option text only,
  matched exactly and else after stripping whitespace; MMLU and C-Eval take a letter.
* Xiezhi's ``subject`` is its ``labels`` joined with ``;`` (the full list is in
  ``meta["labels"]``) and its ``stem`` is None: the cloze formulation puts the option in
  the ``_____`` blank. Blank pieces of ``options`` are dropped.
* A folder is read non-recursively, in sorted order, skipping hidden files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cem.benchmarks.formats import (
    CEVAL_REQUIRED,
    LETTER_COLUMNS,
    BadRow,
    Record,
    check_choices,
    letter_answer,
    match_text,
    not_among,
    optional_text,
    read_ceval,
    read_json_lines,
    read_mmlu,
    read_table,
    resolve_answer,
    text_field,
)
from cem.benchmarks.schema import MCItem
from cem.errors import ConfigError, DataError

_SPLIT_SUFFIX = re.compile(r"_(test|val|dev|train)$")


@dataclass(frozen=True)
class FileContext:
    """What a converter needs to know about the file a row came from."""

    path: Path
    set_name: str

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def subject(self) -> str:
        """The subject named by the file (``astronomy_test.csv`` -> ``astronomy``)."""
        return _SPLIT_SUFFIX.sub("", self.path.stem)


def _item(rec: Record, ctx: FileContext, **kw: Any) -> MCItem:
    kw.setdefault("id", f"{ctx.stem}-{rec.index}")
    kw.setdefault("set", ctx.set_name)
    return MCItem(source=f"{ctx.path}:{rec.line}", **kw)


def convert_record(rec: Record, ctx: FileContext) -> MCItem:
    """A row in the project's record schema (generic ``jsonl`` and ``parquet``)."""
    f = rec.fields or {}
    question = text_field(f, "question")
    if f.get("choices") is None:
        raise BadRow("missing choices")
    choices = check_choices(f["choices"])
    answer, meta = resolve_answer(f.get("answer"), choices)
    extra = f.get("meta") or {}
    if not isinstance(extra, dict):
        raise BadRow(f"meta must be an object; got {extra!r}")
    kw: dict[str, Any] = {}
    if f.get("id") is not None and str(f["id"]) != "":
        kw["id"] = str(f["id"])
    if optional_text(f, "set"):
        kw["set"] = f["set"]
    return _item(
        rec,
        ctx,
        question=question,
        choices=choices,
        answer=answer,
        subject=optional_text(f, "subject") or "",
        stem=optional_text(f, "stem"),
        meta={**extra, **meta},
        **kw,
    )


def _xiezhi_labels(labels: Any) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str):
        return [labels]
    if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
        return labels
    raise BadRow(f"labels must be a list of texts; got {labels!r}")


def convert_xiezhi(rec: Record, ctx: FileContext) -> MCItem:
    """A Xiezhi row: ``options`` joined by newlines, ``answer`` the text of one of them."""
    f = rec.fields or {}
    question = text_field(f, "question")
    options = f.get("options")
    if options is None:
        raise BadRow("missing options")
    if isinstance(options, str):
        options = [o for o in options.split("\n") if o.strip()]
    choices = check_choices(options)
    answer = text_field(f, "answer")
    found = match_text(answer, choices)
    if found is None:
        raise not_among(answer, choices)
    labels = _xiezhi_labels(f.get("labels"))
    meta = {"labels": labels, **found[1]}
    return _item(
        rec,
        ctx,
        question=question,
        choices=choices,
        answer=found[0],
        subject=";".join(labels),
        stem=None,
        meta=meta,
    )


def convert_mmlu(rec: Record, ctx: FileContext) -> MCItem:
    """An MMLU row; the subject comes from the file name."""
    f = rec.fields or {}
    if rec.line == 1 and f["answer"].strip().lower() == "answer":
        raise BadRow("this looks like a header, but MMLU files have none (try benchmark=ceval)")
    question = text_field(f, "question")
    choices = check_choices([f[c] for c in LETTER_COLUMNS])
    answer = letter_answer(f, choices)
    return _item(rec, ctx, question=question, choices=choices, answer=answer, subject=ctx.subject)


def convert_ceval(rec: Record, ctx: FileContext) -> MCItem:
    """A C-Eval row; the id is ``<file stem>-<id column>``, the subject from the file name."""
    f = rec.fields or {}
    question = text_field(f, "question")
    choices = check_choices([f[c] for c in LETTER_COLUMNS])
    answer = letter_answer(f, choices)
    meta = {k: v for k, v in f.items() if k not in (*CEVAL_REQUIRED, "id") and v.strip()}
    kw = {}
    if "id" in f:
        kw["id"] = f"{ctx.stem}-{text_field(f, 'id').strip()}"
    return _item(
        rec,
        ctx,
        question=question,
        choices=choices,
        answer=answer,
        subject=ctx.subject,
        meta=meta,
        **kw,
    )


@dataclass(frozen=True)
class Format:
    """How one benchmark format is read: its file suffixes, reader and row converter."""

    suffixes: tuple[str, ...]
    read: Callable[[Path, int | None], Iterator[Record]]  # (path, max_row_bytes)
    convert: Callable[[Record, FileContext], MCItem]
    names_sets: bool = False  # a row may name its own set (so a limit cannot stop reading)


SPECS: dict[str, Format] = {
    "jsonl": Format((".jsonl",), read_json_lines, convert_record, names_sets=True),
    "xiezhi": Format((".jsonl",), read_json_lines, convert_xiezhi),
    "mmlu": Format((".csv",), read_mmlu, convert_mmlu),
    "ceval": Format((".csv",), read_ceval, convert_ceval),
    "parquet": Format((".parquet", ".arrow"), read_table, convert_record, names_sets=True),
}


FORMATS: tuple[str, ...] = tuple(SPECS)


@dataclass
class LoadResult:
    """Items loaded from one file or folder.

    Attributes:
        items: the good rows, in file order.
        skipped: ``(path, line, reason)`` for each bad row left out with ``skip_bad_rows``.
    """

    items: list[MCItem] = field(default_factory=list)
    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # items per set


def _spec(fmt: str) -> Format:
    if fmt not in SPECS:
        raise ConfigError(
            "benchmark.name",
            fmt,
            f"must be one of {', '.join(FORMATS)} to load a file",
            "benchmark=jsonl",
        )
    return SPECS[fmt]


def _existing(path: str | os.PathLike | None) -> Path:
    if path is None:
        raise ConfigError(
            "benchmark.path", None, "must name a file or folder", "benchmark.path=/data/mmlu/test"
        )
    p = Path(path)
    if not p.exists():
        raise DataError(
            p, None, "path does not exist (set benchmark.path=<file or folder of benchmark files>)"
        )
    return p


def load_file(
    path: str | os.PathLike | None,
    fmt: str,
    set_name: str = "exam",
    skip_bad_rows: bool = False,
    max_row_bytes: int | None = None,
) -> LoadResult:
    """Load one benchmark file.

    Args:
        path: the file.
        fmt: one of :data:`FORMATS`.
        set_name: the ``set`` given to the items.
        skip_bad_rows: leave bad rows out and list them in ``skipped`` instead of raising.
        max_row_bytes: a longer line is a bad row (it is never held in memory).

    Raises:
        DataError: the path is missing, not a file, empty, or (unless skipped) has a bad row.
    """
    spec, p = _spec(fmt), _existing(path)
    if p.is_dir():
        raise DataError(p, None, "is a folder; load_file reads one file (use load_path)")
    result = LoadResult()
    _load_into(result, {}, p, spec, ReadOptions(set_name, skip_bad_rows, None, max_row_bytes))
    return result


def load_path(
    path: str | os.PathLike | None,
    fmt: str,
    set_name: str = "exam",
    skip_bad_rows: bool = False,
    limit: int | None = None,
    recursive: bool = False,
    max_row_bytes: int | None = None,
) -> LoadResult:
    """Load a benchmark file, or every file of the format in a folder.

    Args:
        path: a file, or a folder whose matching files (``.jsonl`` for jsonl/xiezhi,
            ``.csv`` for mmlu/ceval, ``.parquet``/``.arrow`` for parquet) are read in
            sorted order; subfolders are searched only when ``recursive``.
        fmt: one of :data:`FORMATS`.
        set_name: the ``set`` given to the items.
        skip_bad_rows: leave bad rows out and list them in ``skipped`` instead of raising.
        limit: keep only the first ``limit`` items of each set. Reading stops there when
            rows cannot name their own set (MMLU, C-Eval, Xiezhi: files after that are not
            read); JSON-lines and Parquet rows past it are parsed but not kept.
        recursive: also read the files of every subfolder (``dev/``, ``val/``, ``test/``).
        max_row_bytes: a longer line is a bad row (it is never held in memory).

    Raises:
        DataError: as :func:`load_file`; also for a folder without matching files and for
            a result with no item at all.
        ConfigError: ``fmt`` or ``limit`` is not valid.
    """
    spec, p = _spec(fmt), _existing(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(
            "benchmark.limit", limit, "must be a positive integer or null", "benchmark.limit=100"
        )
    files = _folder_files(p, spec, fmt, recursive) if p.is_dir() else [p]
    result, seen = LoadResult(), {}
    opts = ReadOptions(set_name, skip_bad_rows, limit, max_row_bytes)
    for f in files:
        if _load_into(result, seen, f, spec, opts):
            break
    if not result.items:
        raise DataError(p, None, f"no usable item: all {len(result.skipped)} rows are bad")
    return result


def _folder_files(folder: Path, spec: Format, fmt: str, recursive: bool = False) -> list[Path]:
    """The folder's files with the format's suffixes, sorted; an error when there are none."""
    files = sorted(
        f
        for f in (folder.rglob("*") if recursive else folder.iterdir())
        if f.is_file() and f.suffix in spec.suffixes and not f.name.startswith(".")
    )
    if files:
        return files
    pattern = " or ".join(f"*{s}" for s in spec.suffixes)
    subs = sorted(
        d.name
        for d in folder.iterdir()
        if d.is_dir() and any(d.glob(f"*{s}") for s in spec.suffixes)
    )
    hint = (f"; subfolders are not searched: point benchmark.path at one of {subs}, or read "
            "them all with benchmark.split=true") if subs else ""  # fmt: skip
    raise DataError(folder, None, f"no {pattern} file in this folder for format {fmt}{hint}")


@dataclass(frozen=True)
class ReadOptions:
    """How rows are read: see :func:`load_path`."""

    set_name: str = "exam"
    skip_bad_rows: bool = False
    limit: int | None = None  # per set
    max_row_bytes: int | None = None


def _load_into(
    result: LoadResult, seen: dict[str, str], path: Path, spec: Format, opts: ReadOptions
) -> bool:
    """Append ``path``'s items to ``result``; ``seen`` maps ids to where they were first seen.

    Returns:
        True when the limit is reached and no later row can add an item (stop reading).
    """
    ctx = FileContext(path, opts.set_name)
    rows = 0
    for rec in spec.read(path, opts.max_row_bytes):
        rows += 1
        try:
            if rec.error is not None:
                raise BadRow(rec.error)
            item = spec.convert(rec, ctx)
            if item.id in seen:
                raise BadRow(f"duplicate id {item.id!r} (first at {seen[item.id]})")
        except BadRow as e:
            if not opts.skip_bad_rows:
                raise DataError(path, rec.line, e.reason) from None
            result.skipped.append((str(path), rec.line, e.reason))
            continue
        seen[item.id] = item.source
        kept = result.kept.get(item.set, 0)
        if opts.limit is not None and kept >= opts.limit:
            continue  # its set is full; a later row may belong to another set
        result.items.append(item)
        result.kept[item.set] = kept + 1
        if opts.limit is not None and not spec.names_sets and kept + 1 >= opts.limit:
            return True
    if rows == 0:
        raise DataError(path, None, "file is empty: no rows to load")
    return False
