"""Benchmark file loaders: every shared real file, and every kind of bad row."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from cem.benchmarks.loaders import FORMATS, LoadResult, load_file, load_path
from cem.errors import ConfigError, DataError

# Rows per shared file, counted independently of the loaders (csv module, pandas, wc -l).
SHARED_COUNTS = {
    "xiezhi/xiezhi_train_eng.jsonl": 2478,
    "xiezhi/xiezhi_spec_chn.jsonl": 14041,
    "mmlu/test/astronomy_test.csv": 152,
    "mmlu/test/college_biology_test.csv": 144,
    "mmlu/test/high_school_geography_test.csv": 198,
    "mmlu/test/high_school_world_history_test.csv": 237,
    "mmlu/test/us_foreign_policy_test.csv": 100,
    "mmlu/test/world_religions_test.csv": 171,
    "mmlu/val/astronomy_val.csv": 16,
    "mmlu/val/college_biology_val.csv": 16,
    "mmlu/val/high_school_geography_val.csv": 22,
    "mmlu/val/high_school_world_history_val.csv": 26,
    "mmlu/val/us_foreign_policy_val.csv": 11,
    "mmlu/val/world_religions_val.csv": 19,
    "ceval/val/high_school_geography_val.csv": 19,
    "ceval/val/law_val.csv": 24,
    "ceval/val/middle_school_history_val.csv": 22,
    "ceval/val/modern_chinese_history_val.csv": 23,
    "ceval/dev/high_school_geography_dev.csv": 5,
    "ceval/dev/law_dev.csv": 5,
    "ceval/dev/middle_school_history_dev.csv": 5,
    "ceval/dev/modern_chinese_history_dev.csv": 5,
}


def _fmt(rel: str) -> str:
    return rel.split("/")[0]


@functools.cache
def _load_shared(path: Path, fmt: str) -> LoadResult:
    """Each big shared file is read once per test session."""
    return load_file(path, fmt)


# ------------------------------------------------------------------ shared real files


def test_counts_cover_every_shared_file(shared_dir: Path):
    found = {
        str(p.relative_to(shared_dir))
        for p in shared_dir.rglob("*")
        if p.suffix in (".csv", ".jsonl", ".parquet", ".arrow")
    }
    assert found == set(SHARED_COUNTS)


@pytest.mark.parametrize("rel", sorted(SHARED_COUNTS))
def test_shared_file_counts(shared_dir: Path, rel: str):
    result = _load_shared(shared_dir / rel, _fmt(rel))
    assert len(result.items) == SHARED_COUNTS[rel]
    assert result.skipped == []
    assert len({it.id for it in result.items}) == len(result.items)


@pytest.mark.parametrize(
    ("sub", "fmt"),
    [("mmlu/test", "mmlu"), ("mmlu/val", "mmlu"), ("ceval/val", "ceval"), ("ceval/dev", "ceval")],
)
def test_shared_folders_have_unique_ids(shared_dir: Path, sub: str, fmt: str):
    result = load_path(shared_dir / sub, fmt, set_name="test")
    expected = sum(n for rel, n in SHARED_COUNTS.items() if rel.startswith(sub + "/"))
    assert len(result.items) == expected
    assert len({it.id for it in result.items}) == expected
    assert {it.set for it in result.items} == {"test"}


def test_xiezhi_spot_check(shared_dir: Path):
    path = shared_dir / "xiezhi" / "xiezhi_train_eng.jsonl"
    items = _load_shared(path, "xiezhi").items
    first = items[0]  # the answer is a combination of numbered statements
    assert first.question.startswith("The founding of the Chinese Tongmeng Association marked")
    assert first.choices == ["①②③④", "②③④", "③④", "①③④"]
    assert first.gold == "③④" and first.answer == 2
    assert first.subject == "History" and first.stem is None
    assert (first.id, first.source) == ("xiezhi_train_eng-0", f"{path}:1")
    twice = items[1486]  # line 1487: the gold text is written in two options
    assert twice.choices == ["double", "double", "treble", "quadruple"]
    assert (twice.answer, twice.meta["gold_options"]) == (0, [0, 1])
    assert twice.subject == "Medicine;Obstetrics and Gynaecology;Clinical Medicine"
    chn = _load_shared(shared_dir / "xiezhi" / "xiezhi_spec_chn.jsonl", "xiezhi").items[2]
    assert chn.question == "《义勇军进行曲》的曲作者是_____"
    assert chn.choices == ["聂耳", "冼星海", "光未然", "田汉"] and chn.gold == "聂耳"


def test_mmlu_spot_check(shared_dir: Path):
    path = shared_dir / "mmlu" / "test" / "astronomy_test.csv"
    item = load_file(path, "mmlu").items[1]
    assert item.question.startswith("If you know both the actual brightness of an object")
    assert item.choices == [
        "Its speed relative to you",
        "Its composition",
        "Its size",
        "Its distance from you",
    ]
    assert item.answer == 3 and item.subject == "astronomy"
    assert (item.id, item.source) == ("astronomy_test-1", f"{path}:2")


def test_mmlu_multiline_rows_report_their_start_line(shared_dir: Path):
    path = shared_dir / "mmlu" / "test" / "high_school_world_history_test.csv"
    raw = path.read_text(encoding="utf-8").split("\n")
    items = load_file(path, "mmlu").items
    for item in items[:5] + items[-3:]:
        line = int(item.source.rsplit(":", 1)[1])
        assert raw[line - 1].lstrip('"').startswith(item.question.split("\n")[0])
    assert items[-1].source.endswith(":1876") and items[-1].gold.startswith("The king of Ghana")


def test_ceval_spot_check(shared_dir: Path):
    path = shared_dir / "ceval" / "val" / "law_val.csv"
    item = load_file(path, "ceval").items[0]
    assert item.question == "下列关于法律推理的表述，能够成立的是____。"
    assert item.choices[2] == "类比推理是判例法国家运用的一种基本的法律推理方法"
    assert item.gold == item.choices[2] and item.subject == "law"
    assert (item.id, item.source) == ("law_val-0", f"{path}:2")
    dev = load_file(shared_dir / "ceval" / "dev" / "law_dev.csv", "ceval").items[0]
    assert dev.gold == "盗窃罪" and dev.meta["explanation"].startswith("1. 分析选项")


# ------------------------------------------------------------ generic jsonl and parquet


def _jsonl(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_answer_forms_and_optional_fields(tmp_path: Path):
    path = _jsonl(
        tmp_path / "mine.jsonl",
        {"question": "q0", "choices": ["a", "b", "c"], "answer": 2},
        {"question": "q1", "choices": ["a", "b", "c"], "answer": "B"},
        {"question": "q2", "choices": ["x", "y"], "answer": " y "},
        {"question": "q3", "choices": ["B", "A"], "answer": "A", "id": 7, "subject": "s"},
        {"question": "q4", "choices": ["a", "b"], "answer": 0, "stem": "S", "set": "pool"},
    )
    items = load_file(path, "jsonl", set_name="exam").items
    assert [it.answer for it in items] == [2, 1, 1, 1, 0]  # option text wins over a letter
    assert items[2].meta == {"answer_match": "strip"}
    assert [it.id for it in items] == ["mine-0", "mine-1", "mine-2", "7", "mine-4"]
    assert items[3].subject == "s" and items[4].stem == "S"
    assert [it.set for it in items] == ["exam"] * 4 + ["pool"]


def _write_table(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:  # the Arrow IPC file format; `datasets`' own stream format is tested below
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
    return path


ROWS = [
    {"question": "q0", "choices": ["a", "b"], "answer": "b"},
    {"question": "q1", "choices": ["a", "b"], "answer": "zebra"},
    {"question": "q2", "choices": ["a", "b", "c"], "answer": "C"},
]


@pytest.mark.parametrize("name", ["t.parquet", "t.arrow"])
def test_parquet_and_arrow(tmp_path: Path, name: str):
    path = _write_table(tmp_path / name, ROWS)
    with pytest.raises(DataError, match=rf"{name}:2: answer 'zebra' is not among the options"):
        load_file(path, "parquet")
    result = load_file(path, "parquet", skip_bad_rows=True)
    assert [(it.question, it.answer, it.id) for it in result.items] == [
        ("q0", 1, "t-0"),
        ("q2", 2, "t-2"),
    ]
    assert result.skipped == [(str(path), 2, "answer 'zebra' is not among the options ['a', 'b']")]


def test_arrow_written_by_datasets(tmp_path: Path):
    import datasets

    datasets.Dataset.from_list([ROWS[0], ROWS[2]]).save_to_disk(str(tmp_path / "saved"))
    result = load_path(tmp_path / "saved", "parquet")
    assert [it.answer for it in result.items] == [1, 2]


def test_parquet_file_errors(tmp_path: Path):
    path = _write_table(tmp_path / "cols.parquet", [{"question": "q", "options": ["a", "b"]}])
    with pytest.raises(DataError, match=r"cols.parquet: missing column\(s\) choices, answer"):
        load_file(path, "parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="junk.parquet: cannot read as Parquet"):
        load_file(tmp_path / "junk.parquet", "parquet")


# ---------------------------------------------------------------------------- bad rows

GOOD = {
    "jsonl": json.dumps({"question": "q", "choices": ["a", "b"], "answer": "a"}) + "\n",
    "xiezhi": json.dumps({"question": "q _____", "options": "a\nb\nc\nd", "answer": "b"}) + "\n",
    "mmlu": "q,a,b,c,d,A\n",
    "ceval": "",  # rows need their own ids: see _ceval
}
CEVAL_HEADER = "id,question,A,B,C,D,answer\n"


def _j(**fields: object) -> str:
    return json.dumps(fields, ensure_ascii=False) + "\n"


def _ceval(*bad: str) -> bytes:
    return (CEVAL_HEADER + "0,q,a,b,c,d,A\n" + "".join(bad) + "9,q,a,b,c,d,B\n").encode()


# (format, file name, content, line of the bad row, words of the reason)
BAD_ROWS = [
    ("jsonl", "miss.jsonl", _j(question="q", choices=["a", "b"]), 2, "missing answer"),
    ("jsonl", "js.jsonl", '{"question": "q",\n', 2, "invalid JSON"),
    ("jsonl", "arr.jsonl", "[1, 2]\n", 2, "expected a JSON object; got list"),
    ("jsonl", "few.jsonl", _j(question="q", choices=["a"], answer=0), 2, "fewer than 2 options"),
    (
        "jsonl",
        "many.jsonl",
        _j(question="q", choices=[f"o{i}" for i in range(27)], answer=0),
        2,
        "27 options; at most 26 (lettered A-Z)",
    ),  # fmt: skip
    (
        "jsonl",
        "notin.jsonl",
        _j(question="q", choices=["a", "b"], answer="zebra"),
        2,
        "answer 'zebra' is not among the options ['a', 'b']",
    ),
    (
        "jsonl",
        "range.jsonl",
        _j(question="q", choices=["a", "b"], answer=5),
        2,
        "answer index 5 is out of range for 2 options",
    ),
    ("jsonl", "noq.jsonl", _j(choices=["a", "b"], answer=0), 2, "missing question"),
    (
        "jsonl",
        "utf.jsonl",
        b'{"question": "caf\xe9", "choices": ["a", "b"], "answer": 0}\n',
        2,
        "undecodable text: not valid UTF-8 (byte 0xe9",
    ),
    ("xiezhi", "xmiss.jsonl", _j(question="q", options="a\nb\nc\nd"), 2, "missing answer"),
    (
        "xiezhi",
        "xnotin.jsonl",
        _j(question="q", options="a\nb\nc\nd", answer="③④"),
        2,
        "answer '③④' is not among the options ['a', 'b', 'c', 'd']",
    ),
    (
        "xiezhi",
        "xfew.jsonl",
        _j(question="q", options="a\n", answer="a"),
        2,
        "fewer than 2 options",
    ),
    ("mmlu", "cols_test.csv", "q,a,b,c,A\n", 2, "wrong column count: expected 6, got 5"),
    ("mmlu", "letter_test.csv", "q,a,b,c,d,E\n", 2, "answer 'E' is not among the options A, B"),
    ("mmlu", "none_test.csv", "q,a,b,c,d,\n", 2, "missing answer"),
    ("mmlu", "few_test.csv", "q,a,,,,A\n", 2, "fewer than 2 options"),
    ("mmlu", "bytes_test.csv", b'"two\nli\xffnes",a,b,c,d,A\n', 3, "not valid UTF-8 (byte 0xff"),
    ("ceval", "cols_val.csv", _ceval("1,q,a,b,c,A\n"), 3, "wrong column count: expected 7, got 6"),
    ("ceval", "dup_val.csv", _ceval("0,q,a,b,c,d,C\n"), 3, "duplicate id 'dup_val-0'"),
    ("ceval", "noans_val.csv", _ceval("1,q,a,b,c,d,\n"), 3, "missing answer"),
]


def _bad_file(tmp_path: Path, fmt: str, name: str, bad: str | bytes) -> Path:
    """A file of ``fmt`` whose second row is ``bad``, between two good rows."""
    if fmt == "ceval":
        content = bad if isinstance(bad, bytes) else bad.encode()
    else:
        bad = bad if isinstance(bad, bytes) else bad.encode()
        content = GOOD[fmt].encode() + bad + GOOD[fmt].encode()
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("fmt", "name", "bad", "line", "reason"), BAD_ROWS)
def test_bad_row_raises(tmp_path: Path, fmt: str, name: str, bad, line: int, reason: str):
    path = _bad_file(tmp_path, fmt, name, bad)
    with pytest.raises(DataError) as err:
        load_path(path, fmt)
    assert f"{name}:{line}: " in str(err.value)
    assert reason in str(err.value)
    assert (err.value.line, Path(err.value.path).name) == (line, name)


@pytest.mark.parametrize(("fmt", "name", "bad", "line", "reason"), BAD_ROWS)
def test_bad_row_skipped(tmp_path: Path, fmt: str, name: str, bad, line: int, reason: str):
    path = _bad_file(tmp_path, fmt, name, bad)
    result = load_path(path, fmt, skip_bad_rows=True)
    assert len(result.items) == 2
    assert len(result.skipped) == 1
    skipped_path, skipped_line, skipped_reason = result.skipped[0]
    assert (Path(skipped_path).name, skipped_line) == (name, line)
    assert reason in skipped_reason


def test_lines_after_multiline_rows_and_blank_lines(tmp_path: Path):
    path = tmp_path / "multi_test.csv"
    path.write_text('"a\nlong\nquestion",a,b,c,d,A\n\nq,a,b,c,d,B\n"q\n2",a,b,c,d,Z\n')
    with pytest.raises(DataError, match=r"multi_test.csv:6: answer 'Z'"):
        load_file(path, "mmlu")
    result = load_file(path, "mmlu", skip_bad_rows=True)
    assert [it.source.rsplit(":", 1)[1] for it in result.items] == ["1", "5"]
    assert result.items[0].question == "a\nlong\nquestion"


def test_unclosed_quote_is_named(tmp_path: Path):
    path = tmp_path / "quote_test.csv"
    path.write_text('q,a,b,c,d,A\n"open,a,b,c,d,A\nq,a,b,c,d,B\n')
    with pytest.raises(DataError, match=r"quote_test.csv:2: wrong column count.*unclosed quote"):
        load_file(path, "mmlu")


def test_skip_mode_counts_many_bad_rows(tmp_path: Path):
    rows = [GOOD["jsonl"], "not json\n", _j(question="q", choices=["a"], answer=0), "\n"]
    path = tmp_path / "many.jsonl"
    path.write_text("".join(rows + [GOOD["jsonl"], _j(question="q", choices=["a", "b"])]))
    result = load_file(path, "jsonl", skip_bad_rows=True)
    assert isinstance(result, LoadResult)
    assert len(result.items) == 2
    assert [line for _, line, _ in result.skipped] == [2, 3, 6]


def test_duplicate_ids_across_files(tmp_path: Path):
    _jsonl(tmp_path / "a.jsonl", {"id": "x", "question": "q", "choices": ["a", "b"], "answer": 0})
    _jsonl(
        tmp_path / "b.jsonl",
        {"id": "y", "question": "q", "choices": ["a", "b"], "answer": 0},
        {"id": "x", "question": "q", "choices": ["a", "b"], "answer": 1},
    )
    with pytest.raises(DataError, match=r"b.jsonl:2: duplicate id 'x' \(first at .*a.jsonl:1\)"):
        load_path(tmp_path, "jsonl")
    assert [it.id for it in load_path(tmp_path, "jsonl", skip_bad_rows=True).items] == ["x", "y"]


def test_mmlu_header_is_named(tmp_path: Path):
    path = tmp_path / "head_test.csv"
    path.write_text("question,A,B,C,D,answer\n" + GOOD["mmlu"])
    with pytest.raises(DataError, match=r"head_test.csv:1: this looks like a header"):
        load_file(path, "mmlu")


def test_bom_is_ignored(tmp_path: Path):
    path = tmp_path / "bom_val.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (CEVAL_HEADER + "3,q,a,b,c,d,D\n").encode())
    assert load_file(path, "ceval").items[0].id == "bom_val-3"


# ---------------------------------------------------------------------- file-level errors


@pytest.mark.parametrize(
    ("fmt", "name", "content"),
    [
        ("jsonl", "empty.jsonl", ""),
        ("xiezhi", "blank.jsonl", "\n  \n\n"),
        ("mmlu", "empty_test.csv", ""),
        ("ceval", "header_val.csv", CEVAL_HEADER),
    ],
)
def test_empty_file(tmp_path: Path, fmt: str, name: str, content: str):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=rf"{name}: file is empty"):
        load_path(tmp_path / name, fmt, skip_bad_rows=True)


def test_ceval_header_checked(tmp_path: Path):
    path = tmp_path / "noans_val.csv"
    path.write_text("id,question,A,B,C,D\n0,q,a,b,c,d\n")
    with pytest.raises(DataError, match=r"noans_val.csv:1: header lacks column\(s\) answer"):
        load_file(path, "ceval", skip_bad_rows=True)


def test_missing_path_names_the_config_key(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope.jsonl: path does not exist .*benchmark.path="):
        load_path(tmp_path / "nope.jsonl", "xiezhi")
    with pytest.raises(ConfigError, match="benchmark.path"):
        load_path(None, "xiezhi")


def test_folder_without_matching_files(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "a_test.csv").write_text(GOOD["mmlu"])
    with pytest.raises(DataError, match=r"no \*.csv file in this folder.*one of \['test'\]"):
        load_path(tmp_path, "mmlu")
    with pytest.raises(DataError, match=r"no \*.jsonl file"):
        load_path(tmp_path, "jsonl")


def test_all_rows_bad_in_skip_mode(tmp_path: Path):
    path = _jsonl(tmp_path / "bad.jsonl", "oops", "nope")
    assert len(load_file(path, "jsonl", skip_bad_rows=True).skipped) == 2
    with pytest.raises(DataError, match="bad.jsonl: no usable item: all 2 rows are bad"):
        load_path(path, "jsonl", skip_bad_rows=True)


def test_folder_order_and_limit(tmp_path: Path):
    for name in ("b_test.csv", "a_test.csv", ".hidden_test.csv"):
        (tmp_path / name).write_text(GOOD["mmlu"] * 3)
    result = load_path(tmp_path, "mmlu")
    assert [it.id for it in result.items][::3] == ["a_test-0", "b_test-0"]
    assert {it.subject for it in result.items} == {"a", "b"}
    assert [it.id for it in load_path(tmp_path, "mmlu", limit=4).items] == [
        "a_test-0",
        "a_test-1",
        "a_test-2",
        "b_test-0",
    ]


def test_bad_arguments(tmp_path: Path):
    assert FORMATS == ("jsonl", "xiezhi", "mmlu", "ceval", "parquet")
    path = _jsonl(tmp_path / "x.jsonl", GOOD["jsonl"].strip())
    with pytest.raises(ConfigError, match="benchmark.name must be one of jsonl, xiezhi"):
        load_path(path, "csv")
    with pytest.raises(ConfigError, match="benchmark.limit must be a positive integer"):
        load_path(path, "jsonl", limit=0)
    with pytest.raises(DataError, match="is a folder"):
        load_file(tmp_path, "jsonl")


def test_a_row_over_max_row_bytes_is_a_data_error_and_never_read_whole(tmp_path: Path):
    huge = _j(question="q" * 5_000_000, choices=["a", "b"], answer=0)  # a 5 MB line
    path = tmp_path / "big.jsonl"
    path.write_text(GOOD["jsonl"] + huge + GOOD["jsonl"].replace('"q"', '"r"'))
    with pytest.raises(DataError) as err:
        load_path(path, "jsonl", max_row_bytes=1000)
    assert str(err.value) == (f"{path}:2: row longer than 1000 bytes, the cap of "
                              "benchmark.max_row_bytes (try benchmark.max_row_bytes=10000)")  # fmt: skip
    result = load_path(path, "jsonl", skip_bad_rows=True, max_row_bytes=1000)
    assert [it.question for it in result.items] == ["q", "r"] and result.skipped[0][1] == 2
    csv_path = tmp_path / "big_test.csv"
    csv_path.write_text(GOOD["mmlu"] + "q" * 5000 + ",a,b,c,d,A\n" + GOOD["mmlu"])
    with pytest.raises(DataError, match=r"big_test.csv:2: row longer than 1000 bytes"):
        load_path(csv_path, "mmlu", max_row_bytes=1000)
    assert len(load_path(path, "jsonl", max_row_bytes=None).items) == 3  # no cap


def test_limit_stops_reading_where_no_later_row_can_count(tmp_path: Path):
    (tmp_path / "a_test.csv").write_text(GOOD["mmlu"] * 3)
    (tmp_path / "b_test.csv").write_text("not,a,row\n")  # never read: a would be an error
    assert [it.id for it in load_path(tmp_path, "mmlu", limit=2).items] == ["a_test-0", "a_test-1"]
    # JSON lines name their own sets: each set keeps its first `limit` items.
    rows = [_j(question=f"q{i}", choices=["a", "b"], answer=0, set=s)
            for i, s in enumerate(["exam", "exam", "exam", "test", "exam", "test", "test"])]  # fmt: skip
    path = tmp_path / "sets.jsonl"
    path.write_text("".join(rows))
    got = [(it.set, it.question) for it in load_path(path, "jsonl", limit=2).items]
    assert got == [("exam", "q0"), ("exam", "q1"), ("test", "q3"), ("test", "q5")]
