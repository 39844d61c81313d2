"""Benchmark file formats read into raw rows: JSON lines, CSV (with or without a header),
Parquet and Arrow.

A reader yields one :class:`Record` per row with the physical line where the row starts,
so that every error can name the file and the line. Text is read as bytes and decoded
line by line, so that a non-UTF-8 byte is reported on its own line. A row that cannot be
read carries an ``error``. For Parquet and Arrow files the "line" is the 1-based row
number. The field and answer checks that the converters in :mod:`cem.benchmarks.loaders`
share are here too; they raise :class:`BadRow`.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cem.benchmarks.schema import LETTERS
from cem.errors import DataError

LETTER_COLUMNS = ("A", "B", "C", "D")
MMLU_COLUMNS = ("question", *LETTER_COLUMNS, "answer")
CEVAL_REQUIRED = MMLU_COLUMNS
RECORD_COLUMNS = ("question", "choices", "answer")  # jsonl and parquet


class BadRow(Exception):
    """A row that cannot become an item; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Record:
    """One raw row of a file.

    Attributes:
        line: 1-based physical line where the row starts (row number for Parquet/Arrow);
            for an undecodable row, the line with the bad bytes.
        index: 0-based position of the row among the file's rows, bad rows included.
        fields: the row's values by column name; None when the row could not be read.
        error: why the row could not be read (undecodable text, invalid JSON...).
    """

    line: int
    index: int
    fields: dict[str, Any] | None
    error: str | None = None


# --------------------------------------------------------------------------- readers


def decode_lines(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, str, str | None]]:
    """``(line number, text, error)`` for each line of ``path``, read one line at a time.

    The text keeps its ``\\n`` (undecodable bytes replaced by U+FFFD, a leading BOM
    removed); ``error`` says why a line could not be decoded, or that it is longer than
    ``max_bytes`` (such a line is not held in memory: it is skipped in 1 MB reads).
    """
    with open(path, "rb") as fh:
        for lineno in itertools.count(1):
            chunk = fh.readline(max_bytes + 1) if max_bytes else fh.readline()
            if not chunk:
                return
            if max_bytes and len(chunk) > max_bytes:
                while chunk and not chunk.endswith(b"\n"):
                    chunk = fh.readline(1 << 20)
                yield lineno, "\n", (f"row longer than {max_bytes} bytes, the cap of "
                                      f"benchmark.max_row_bytes (try benchmark.max_row_bytes="
                                      f"{10 * max_bytes})")  # fmt: skip
                continue
            text, error = _decode(chunk.removesuffix(b"\n"))
            yield lineno, (text.removeprefix("\ufeff") if lineno == 1 else text) + "\n", error


def _decode(chunk: bytes) -> tuple[str, str | None]:
    try:
        return chunk.decode("utf-8"), None
    except UnicodeDecodeError as e:
        why = (f"undecodable text: not valid UTF-8 "
               f"(byte 0x{chunk[e.start]:02x} at byte {e.start + 1} of the line)")  # fmt: skip
        return chunk.decode("utf-8", errors="replace"), why


def _parse_json(text: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON ({e.msg} at column {e.colno})"
    if not isinstance(value, dict):
        return None, f"expected a JSON object; got {type(value).__name__}"
    return value, None


def read_json_lines(path: Path, max_row_bytes: int | None = None) -> Iterator[Record]:
    """Yield one record per non-blank line of a JSON-lines file."""
    index = 0
    for lineno, text, bad in decode_lines(path, max_row_bytes):
        if not text.strip() and bad is None:
            continue
        fields, error = (None, bad) if bad else _parse_json(text)
        yield Record(lineno, index, fields, error)
        index += 1


def _csv_rows(
    path: Path, max_row_bytes: int | None = None
) -> Iterator[tuple[int, int, list[str] | None, str | None]]:
    """Yield ``(start line, end line, fields, error)`` for each non-blank CSV row."""
    bad: dict[int, str] = {}  # filled as the reader pulls lines

    def lines() -> Iterator[str]:
        for lineno, text, error in decode_lines(path, max_row_bytes):
            if error:
                bad[lineno] = error
            yield text

    reader = csv.reader(lines())
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield start, reader.line_num, None, f"CSV error: {e}"
            continue
        end = reader.line_num
        bad_line = next((n for n in range(start, end + 1) if n in bad), None)
        if bad_line is not None:  # first: an over-long line reads as a blank one
            yield bad_line, end, None, bad[bad_line]
        elif any(cell.strip() for cell in row):
            yield start, end, row, None


def _csv_records(
    path: Path, columns: tuple[str, ...] | None, max_row_bytes: int | None
) -> Iterator[Record]:
    """Records of a CSV file: ``columns`` names a headerless file's columns, None reads a header."""
    index = 0
    for start, end, row, error in _csv_rows(path, max_row_bytes):
        if columns is None:  # the first row is the header
            columns = _ceval_header(path, start, row, error)
            continue
        rec = Record(start, index, None, error)
        index += 1
        if row is not None and len(row) != len(columns):
            span = f"; the row runs to line {end}: an unclosed quote?" if end > start else ""
            rec.error = f"wrong column count: expected {len(columns)}, got {len(row)}{span}"
        elif row is not None:
            rec.fields = dict(zip(columns, row, strict=True))
        yield rec


def _ceval_header(path: Path, line: int, row: list[str] | None, error: str | None) -> tuple:
    """Check a C-Eval header row and return its column names."""
    if row is None:
        raise DataError(path, line, f"cannot read the header: {error}")
    names = tuple(cell.strip() for cell in row)
    missing = [c for c in CEVAL_REQUIRED if c not in names]
    if missing:
        raise DataError(
            path,
            line,
            f"header lacks column(s) {', '.join(missing)}: expected "
            f"id,question,A,B,C,D,answer[,explanation]; got {','.join(names)}",
        )
    return names


def read_mmlu(path: Path, max_row_bytes: int | None = None) -> Iterator[Record]:
    """MMLU CSV: no header; question, A, B, C, D, answer letter."""
    return _csv_records(path, MMLU_COLUMNS, max_row_bytes)


def read_ceval(path: Path, max_row_bytes: int | None = None) -> Iterator[Record]:
    """C-Eval CSV: a header naming id, question, A-D, answer (and explanation in dev)."""
    return _csv_records(path, None, max_row_bytes)


def read_table(path: Path, max_row_bytes: int | None = None) -> Iterator[Record]:
    """Parquet (``.parquet``) or Arrow (``.arrow``) rows, read through ``datasets`` (its
    rows are typed columns, not lines: ``max_row_bytes`` does not apply)."""
    rows = _table_rows(path)
    if rows:
        missing = [c for c in RECORD_COLUMNS if c not in rows[0]]
        if missing:
            raise DataError(
                path, None, f"missing column(s) {', '.join(missing)}; found {', '.join(rows[0])}"
            )
    for index, fields in enumerate(rows):
        yield Record(index + 1, index, fields)


def _table_rows(path: Path) -> list[dict[str, Any]]:
    import datasets  # slow to import: only when a table is read
    import pyarrow as pa

    try:
        if path.suffix == ".arrow":
            try:  # the streaming format that `datasets` writes
                return datasets.Dataset.from_file(str(path)).to_list()
            except pa.ArrowInvalid:  # the Arrow IPC file (Feather v2) format
                with pa.memory_map(str(path)) as source:
                    return pa.ipc.open_file(source).read_all().to_pylist()
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        return ds.to_list()
    except (pa.ArrowException, OSError, ValueError) as e:
        kind = "Arrow" if path.suffix == ".arrow" else "Parquet"
        raise DataError(path, None, f"cannot read as {kind}: {e}") from None


# ------------------------------------------------------------- fields and answers


def text_field(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow(f"missing {key}")
    if not isinstance(value, str):
        raise BadRow(f"{key} must be text; got {value!r}")
    return value


def optional_text(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRow(f"{key} must be text; got {value!r}")
    return value


def check_choices(choices: Any) -> list[str]:
    """Return ``choices`` if it is a list of 2 to 26 option texts (letters A-Z), 2 not blank."""
    if not isinstance(choices, list | tuple) or not all(isinstance(c, str) for c in choices):
        raise BadRow(f"options must be a list of texts; got {choices!r}")
    if sum(1 for c in choices if c.strip()) < 2:
        raise BadRow(f"fewer than 2 options: {list(choices)!r}")
    if len(choices) > len(LETTERS):
        raise BadRow(f"{len(choices)} options; at most {len(LETTERS)} (lettered A-Z) are supported")
    return list(choices)


def match_text(answer: str, choices: list[str]) -> tuple[int, dict[str, Any]] | None:
    """Find the option whose text is ``answer``: exactly, else after stripping whitespace.

    Returns:
        The index of the first match and the meta facts to record (``gold_options`` when
        the text occurs more than once, ``answer_match: "strip"`` when stripping was
        needed), or None when no option matches.
    """
    for normalise, how in ((lambda s: s, None), (str.strip, "strip")):
        target = normalise(answer)
        hits = [i for i, c in enumerate(choices) if normalise(c) == target]
        if hits:
            meta: dict[str, Any] = {"gold_options": hits} if len(hits) > 1 else {}
            if how:
                meta["answer_match"] = how
            return hits[0], meta
    return None


def not_among(answer: Any, choices: list[str]) -> BadRow:
    return BadRow(f"answer {answer!r} is not among the options {choices!r}")


def resolve_answer(answer: Any, choices: list[str]) -> tuple[int, dict[str, Any]]:
    """Gold index from an int index, an option text, or a letter (text is tried first)."""
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise BadRow("missing answer")
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(choices):
            return answer, {}
        raise BadRow(f"answer index {answer} is out of range for {len(choices)} options")
    if isinstance(answer, str):
        found = match_text(answer, choices)
        if found is not None:
            return found
        letter = answer.strip()
        if len(letter) == 1 and letter in LETTERS[: len(choices)]:
            return LETTERS.index(letter), {}
    raise not_among(answer, choices)


def letter_answer(fields: dict[str, Any], choices: list[str]) -> int:
    letter = fields["answer"].strip()
    if not letter:
        raise BadRow("missing answer")
    if len(letter) != 1 or letter not in LETTERS[: len(choices)]:
        allowed = ", ".join(LETTERS[: len(choices)])
        raise BadRow(f"answer {letter!r} is not among the options {allowed}: {choices!r}")
    return LETTERS.index(letter)
