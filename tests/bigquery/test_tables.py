"""batchpredict/bigquery against the real emulator: checking input tables, reading rows by
position, and publishing output rows exactly once."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from google.cloud.bigquery import SchemaField

from batchpredict.bigquery import tables
from batchpredict.bigquery.publish import TableOutput, output_schema
from batchpredict.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from batchpredict.input import count_rows, detect_line_format, estimate_rows, iter_rows
from batchpredict.jobs import Job, LineFormat, RowCounts
from tests.bigquery.conftest import BAD_REQUEST, INPUT_SCHEMA
from tests.bigquery.emulator import BigQueryDataset


def test_a_missing_table_or_dataset_is_not_found_by_name(bq: BigQueryDataset) -> None:
    with pytest.raises(NotFound) as info:
        tables.check_input_table(bq.table_uri("nope"))
    assert info.value.message.startswith(f"The BigQuery input table {bq.table_uri('nope')} "
                                         "does not exist.")
    with pytest.raises(NotFound, match=r"output BigQuery dataset bq://test-project.no_such "):
        tables.check_output("bq://test-project.no_such")


@pytest.mark.parametrize(("field", "shown"), [
    (SchemaField("tags", "STRING", mode="REPEATED"), "ARRAY<STRING>"),
    (SchemaField("info", "RECORD", fields=[SchemaField("x", "STRING")]), "RECORD"),
    (SchemaField("span", "RANGE", range_element_type="DATE"), "RANGE"),
    (SchemaField("at", "DATETIME"), "DATETIME"),
    (SchemaField("place", "GEOGRAPHY"), "GEOGRAPHY"),
])
def test_refused_column_types_are_named(bq: BigQueryDataset, field: SchemaField,
                                        shown: str) -> None:
    uri = bq.create_table("t", [SchemaField("request", "JSON"), field])
    with pytest.raises(InvalidArgument) as info:
        tables.check_input_table(uri)
    assert info.value.message.startswith(
        f"Column '{field.name}' of the input table {uri} has type {shown}")


def test_a_table_needs_a_json_or_string_request_column(bq: BigQueryDataset) -> None:
    with pytest.raises(InvalidArgument, match="has no 'request' column"):
        tables.check_input_table(bq.create_table("a", [("prompt", "STRING")]))
    with pytest.raises(InvalidArgument, match=r"'request' column of .* has type INT"):
        tables.check_input_table(bq.create_table("b", [("request", "INT64")]))
    with pytest.raises(InvalidArgument, match="a column 'status', which the output adds"):
        tables.check_input_table(bq.create_table("c", [("request", "JSON"),
                                                       ("status", "STRING")]))


def test_rows_keep_their_positions_and_echo_columns(bq: BigQueryDataset, make_table) -> None:
    uri = make_table(7, bad=(2,))
    pinned = tables.pin_input(uri)
    assert pinned.startswith(uri + "@")
    rows = list(tables.iter_rows(pinned, page_rows=3))  # three pages
    assert [r.index for r in rows] == list(range(7))
    assert rows[0].extras == {"key": "k0", "n": 0, "score": 0.0, "day": "2024-01-02",
                              "meta": {"i": 0}}
    assert rows[0].parsed is not None and rows[0].error is None
    assert rows[2].request == BAD_REQUEST and rows[2].parsed is None
    assert rows[2].error is not None and "valid role" in rows[2].error.message
    # through input.py, as the runner reads: a resumed job starts at row N, the same rows
    assert [r.extras for r in iter_rows([pinned], skip=4)] == [r.extras for r in rows[4:]]
    assert count_rows([pinned]) == estimate_rows([pinned]) == 7
    assert detect_line_format([pinned]) == LineFormat.VERTEX


def test_a_string_request_column_and_bad_values_become_error_rows(bq: BigQueryDataset) -> None:
    good = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).decode()
    uri = bq.create_table("s", [("request", "STRING")],
                          [{"request": good}, {"request": "{not json"}, {"request": None}])
    rows = list(tables.iter_rows(uri))
    assert rows[0].error is None and rows[0].extras is None
    assert rows[1].error is not None and "request is not valid JSON" in rows[1].error.message
    assert rows[2].error is not None and "has no request (NULL)" in rows[2].error.message


def test_a_table_that_changed_cannot_be_resumed(bq: BigQueryDataset, make_table) -> None:
    uri = make_table(3)
    pinned = tables.pin_input(uri)
    bq.emulator.client().insert_rows_json(uri.removeprefix("bq://"), [{"key": "late"}])
    assert len(list(tables.iter_rows(pinned))) == 4  # from the start: any order is fine
    with pytest.raises(FailedPrecondition, match="changed since the job started"):
        list(tables.iter_rows(pinned, skip=1))


def line(key: str) -> bytes:
    return orjson.dumps({"key": key, "status": "",
                         "processed_time": "2024-11-01T18:13:16.826+00:00",
                         "request": {"contents": []}, "response": {"k": key}}) + b"\n"


def table_job(bq: BigQueryDataset, staging: Path, inputs: list[str], job_id: int = 9) -> Job:
    job = Job("t", "m", inputs, bq.uri, id=job_id, output_dir=str(staging),
              output_table=bq.table_uri("out"))
    job.checkpoint.inputs = inputs
    return job


def test_publishing_is_exactly_once_across_a_resume(bq: BigQueryDataset, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"key": 1, "request": {}}\n')
    job = table_job(bq, tmp_path / "staging", [str(src)])
    out = TableOutput(job)
    for first in (0, 2, 4):
        out.write_chunk(first, first + 1, line(f"r{first}") + line(f"r{first + 1}"))
    out.publish([(0, [line("r0"), line("r1")], RowCounts())])  # opens: every committed chunk
    assert [r["key"] for r in bq.rows("out")] == ["r0", "r1", "r2", "r3", "r4", "r5"]
    out.write_chunk(6, 7, line("r6") + line("r7"))
    out.write_chunk(10, 10, line("r10"))
    out.publish([(6, [line("r6"), line("r7")], RowCounts()), (10, [line("r10")], RowCounts())])
    assert len(bq.rows("out")) == 8  # row 10 is past a gap: it waits for the end
    # a new runner (after a crash) learns from the table where publishing stopped
    again = TableOutput(job)
    again.publish([])
    assert again.published == 8
    again.assemble()  # the job ends: every line, past the gap too, then predictions.jsonl
    again.assemble()
    rows = bq.rows("out")
    assert [r["key"] for r in rows] == [f"r{i}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 10)]
    assert rows[0]["response"] == {"k": "r0"} and rows[0]["status"] == ""
    assert bq.columns("out") == [("key", "JSON"), ("request", "JSON"), ("response", "JSON"),
                                 ("status", "STRING"), ("processed_time", "TIMESTAMP")]
    assert (tmp_path / "staging" / "predictions.jsonl").read_bytes().count(b"\n") == 9
    with pytest.raises(AlreadyExists, match="already exists"):  # another job's table
        TableOutput(table_job(bq, tmp_path / "other", [str(src)], job_id=10)).publish([])


def test_output_columns_follow_the_input(bq: BigQueryDataset, make_table, tmp_path: Path) -> None:
    names = [n for n, _ in INPUT_SCHEMA]
    got = output_schema([tables.pin_input(make_table(1))])
    assert [f.name for f in got] == [*names, "response", "status", "processed_time"]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"key": 1, "request": {}}\n{"request": {}, "custom_id": "x"}\nnot json\n')
    assert [(f.name, f.field_type) for f in output_schema([str(src)])][:3] == [
        ("key", "JSON"), ("custom_id", "JSON"), ("request", "JSON")]
