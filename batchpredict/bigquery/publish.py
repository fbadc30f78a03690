"""A job's BigQuery output table: its columns, and publishing committed output rows exactly once.

A job that writes a table still writes its output as chunks, in a staging folder of its project's
output area ({outputs root}/{project}/bigquery/prediction-model-<time>/, `plan_output`); those
chunks stay the truth for resume (`output.ChunkedOutput`). `TableOutput` is the runner's
`ChunkedOutput` for such a job: as the committed rows without a gap from row 0 grow, the driver
(executors/commits.py) hands it those runs and the committed chunks (`publish`), and it copies
them into the table in row order, one insertAll request at a time, each all-or-nothing (no
skipInvalidRows). So the table always holds the first N output
lines, and N = COUNT(*) tells a new runner where publishing stopped, whether or not the server
honours insertIds (the emulator ignores them). Each row still carries insertId
"{job id}-{output line}": on BigQuery this also covers a COUNT(*) that does not yet see rows
streamed a moment before a crash. Before the chunks are assembled (the job ends), every output
line not yet in the table is published, rows past a gap too (`assemble`).

The table is created when the first rows are published, with the input's columns (a table's own,
or a JSONL input's extra fields as JSON columns), then `response` (JSON), `status` (STRING, ""
on success) and `processed_time` (TIMESTAMP). Its description names the job: a table that exists
without it is someone else's, and the job fails instead of writing into it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from batchpredict import storage
from batchpredict.bigquery.client import TIMEOUT, client, retry, translate
from batchpredict.bigquery.tables import (
    OUTPUT_COLUMNS,
    check_input_table,
    count_table,
    existing_table,
    is_table,
    parse_output_uri,
    taken,
)
from batchpredict.errors import AlreadyExists, InvalidArgument
from batchpredict.jobs import Job, LineFormat, format_time
from batchpredict.output import Chunk, ChunkedOutput, OutputReader, Run, make_output_dir

__all__ = ["TableOutput", "output_schema", "plan_output"]

#: insertAll limits: BigQuery takes up to 10 MB and recommends about 500 rows a request.
INSERT_ROWS = 500
INSERT_BYTES = 8 * 1024 * 1024


def plan_output(job: Job, area: str, now: datetime | None = None) -> None:
    """At create, for a job that reads or writes a table (Vertex's lines only): when its output
    is bq://, its table (the one named, or predictions_<YYYY_MM_DDThh_mm_ss_sssZ> in the
    dataset, Vertex's naming) and the folder where its chunks are written, under `area` (the
    project's output area) in bigquery/."""
    if job.line_format != LineFormat.VERTEX:
        raise InvalidArgument(
            f"BigQuery tables hold Vertex's rows (a request column); this job's lines are "
            f"{job.line_format.value}'s. Use JSONL files for its input and output."
        )
    if not is_table(job.output_prefix):
        return
    now = (now or datetime.now(UTC)).astimezone(UTC)
    ref = parse_output_uri(job.output_prefix)
    if ref.table is None:
        stamp = now.strftime("%Y_%m_%dT%H_%M_%S_") + f"{now.microsecond // 1000:03d}Z"
        ref = parse_output_uri(f"{ref.dataset_uri}.predictions_{stamp}")
    job.output_table = ref.uri
    job.output_dir = make_output_dir(storage.join(area, "bigquery"), now)


def output_schema(inputs: list[str]) -> list[Any]:
    """The output table's columns: a table input's own, or each extra field of a JSONL input as
    a JSON column (found by one pass over the input) then `request`; then OUTPUT_COLUMNS."""
    from google.cloud.bigquery import SchemaField

    if inputs and is_table(inputs[0]):
        echoed = list(check_input_table(inputs[0]).schema)
    else:
        echoed = [SchemaField(name, "JSON") for name in _jsonl_extra_fields(inputs)]
        echoed.append(SchemaField("request", "JSON"))
    return echoed + [SchemaField(name, kind) for name, kind in OUTPUT_COLUMNS]


def _jsonl_extra_fields(inputs: list[str]) -> list[str]:
    """Top-level fields of the JSONL lines other than `request` (and the output's own), in the
    order first seen; lines that are not JSON objects are skipped (they become error rows)."""
    seen: dict[str, None] = {}
    skip = {"request", *(name for name, _ in OUTPUT_COLUMNS)}
    for uri in inputs:
        with storage.open_read(uri) as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    for key in obj:
                        if key not in skip:
                            seen.setdefault(key, None)
    return list(seen)


class TableOutput(ChunkedOutput):
    """The chunked output of a job that writes a BigQuery table, publishing its committed rows
    there (module doc)."""

    publishes = True

    def __init__(self, job: Job) -> None:
        assert job.output_dir and job.output_table
        super().__init__(job.output_dir)
        self.ref = parse_output_uri(job.output_table)
        self.job_id = job.id
        self.inputs = list(job.checkpoint.inputs)
        self.line_format = job.line_format
        self.marker = f"batchpredict job {job.name}, created {format_time(job.create_time)}"
        #: The table's columns once it is open (None before).
        self.schema: list[Any] | None = None
        #: Output lines already in the table: the first `published` lines of the job's output.
        self.published = 0

    def open(self, gap_free: bool = True, chunks: list[Chunk] | None = None) -> None:
        """Create the table if it is missing, or take it back when it is this job's (made before
        a crash); then learn how many rows it holds and publish the committed ones it lacks
        (`catch_up`; `chunks`: the committed chunks, default every chunk object)."""
        from google.cloud.bigquery import Table

        table = existing_table(self.ref)
        if table is None:
            new = Table(self.ref.path, schema=output_schema(self.inputs))
            new.description = self.marker
            try:
                table = client(self.ref.project).create_table(new, retry=retry(),
                                                               timeout=TIMEOUT)
            except Exception as exc:
                err = translate(self.ref.uri, exc)
                if not isinstance(err, AlreadyExists):
                    raise err from exc
                table = existing_table(self.ref)  # made a moment ago: whose is it?
        if table is None or (table.description or "") != self.marker:
            raise taken(self.ref)
        self.schema = list(table.schema)
        self.published = count_table(self.ref)
        self.catch_up(gap_free, chunks)

    def publish(self, runs: list[Run], chunks: list[Chunk] | None = None) -> None:
        """Runs of output lines just committed (row order), into the table. A run past a gap
        waits for `assemble`; lines already in the table are skipped. `chunks`: every committed
        chunk (default: every chunk object), published first when the table is opened."""
        if self.schema is None:
            self.open(chunks=chunks)  # publishes every committed chunk, these runs among them
            return
        for first, lines, _ in runs:
            if first > self.published:
                return
            self._insert(first, lines[self.published - first:])

    def catch_up(self, gap_free: bool, chunks: list[Chunk] | None = None) -> None:
        """Committed output lines not yet in the table, in output order: with `gap_free`, those
        of the chunks without a gap from row 0 (while the job runs: chunks past a gap wait for
        it to fill); else every line, past a gap too (the job ends)."""
        if gap_free:
            lines = self._gap_free_lines(chunks)
        elif chunks is None or storage.exists(self.predictions_uri):
            lines = OutputReader(self.output_dir, self.line_format).lines()
        else:
            lines = (raw for c in chunks for raw in storage.read_bytes(c.uri).splitlines())
        skipped = 0
        batch: list[bytes] = []
        for raw in lines:
            if skipped < self.published:
                skipped += 1
                continue
            batch.append(raw)
            if len(batch) >= INSERT_ROWS:
                self._insert(self.published, batch)
                batch = []
        if batch:
            self._insert(self.published, batch)

    def _gap_free_lines(self, chunks: list[Chunk] | None) -> Iterator[bytes]:
        n = 0
        for chunk in self.chunks() if chunks is None else chunks:
            if chunk.first != n:
                return
            n = chunk.last + 1
            yield from storage.read_bytes(chunk.uri).splitlines()

    def assemble(self, chunks: list[Chunk] | None = None) -> str:
        """Publish every committed line, then assemble the chunks (both, even if publishing
        fails: the error is raised after the chunks are assembled)."""
        try:
            if self.schema is None:
                self.open(gap_free=False, chunks=chunks)
            else:
                self.catch_up(gap_free=False, chunks=chunks)
        finally:
            assembled = super().assemble(chunks)
        return assembled

    def _insert(self, first: int, lines: Iterable[bytes]) -> None:
        """Output lines `first`.. into the table, in requests of at most INSERT_ROWS rows."""
        batch: list[dict[str, Any]] = []
        ids: list[str] = []
        size = 0
        for raw in lines:
            if not raw.strip():
                continue
            batch.append(self._table_row(orjson.loads(raw)))
            ids.append(f"{self.job_id}-{first + len(ids)}")
            size += len(raw)
            if len(batch) >= INSERT_ROWS or size >= INSERT_BYTES:
                self._send(batch, ids)
                first, batch, ids, size = first + len(ids), [], [], 0
        if batch:
            self._send(batch, ids)

    def _table_row(self, line: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for f in self.schema or []:
            value = line.get(f.name)
            if value is None:
                continue
            # JSON cells travel as JSON text: a dict would be stored as Python's repr
            row[f.name] = orjson.dumps(value).decode() if f.field_type == "JSON" else value
        return row

    def _send(self, rows: list[dict[str, Any]], ids: list[str]) -> None:
        try:
            errors = client(self.ref.project).insert_rows_json(
                self.ref.path, rows, row_ids=ids, retry=retry(), timeout=TIMEOUT)
        except Exception as exc:
            raise translate(self.ref.uri, exc) from exc
        if errors:
            first = errors[0]
            raise InvalidArgument(
                f"BigQuery refused {len(errors)} rows for {self.ref.uri}; insertId "
                f"{ids[first['index']]} (job-line): {first.get('errors')}"
            )
        self.published += len(rows)
