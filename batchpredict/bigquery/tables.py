"""BigQuery URIs, the checks of input and output tables, and reading an input table's rows.

    input   bq://PROJECT.DATASET.TABLE    a `request` column (JSON or STRING); other columns echoed
    output  bq://PROJECT.DATASET          a new table predictions_<YYYY_MM_DDThh_mm_ss_sssZ>
            bq://PROJECT.DATASET.TABLE    that table, created by the job (it must not exist yet)

Row positions. A row's index is its position in tabledata.list order, the order behind its
`startIndex` parameter: `iter_rows(uri, skip=N)` starts at index N. The emulator (DuckDB) and
BigQuery both give a table's rows in storage order, the same on every read while the table is
unchanged, but BigQuery promises no order and any write (DML, streaming, a load) may reorder. So
a job pins its input (`pin_input`: bq://P.D.T@<lastModifiedMs>:<numRows>) when it is created and
again when it first starts, and a resumed job whose table changed fails (FailedPrecondition)
instead of skipping or repeating rows.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from batchpredict.bigquery.client import ROW_CALLS, TIMEOUT, client, retry, translate
from batchpredict.errors import (
    AlreadyExists,
    BatchPredictError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

if TYPE_CHECKING:
    from batchpredict.input import Row

__all__ = [
    "OUTPUT_COLUMNS",
    "REFUSED_TYPES",
    "TableInfo",
    "TableRef",
    "canonical",
    "check_input_table",
    "check_output",
    "count_rows",
    "estimate_rows",
    "is_table",
    "iter_rows",
    "parse_input_uri",
    "parse_output_uri",
    "pin_input",
    "table_under",
]

#: Column types Vertex refuses in an input table (a REPEATED column is an ARRAY).
REFUSED_TYPES = frozenset({"RECORD", "STRUCT", "RANGE", "DATETIME", "GEOGRAPHY"})
#: Columns the output adds after the input's, with their types.
OUTPUT_COLUMNS = (("response", "JSON"), ("status", "STRING"), ("processed_time", "TIMESTAMP"))
PAGE_ROWS = 500

# project: lowercase letters, digits and dashes, after an optional "example.com:" domain;
# dataset: letters, digits, _; table: letters, digits, _ and - (flexible names are left out).
_PROJECT = r"(?:[a-z0-9][a-z0-9.\-]*:)?[a-z0-9][a-z0-9\-]{0,62}"
_DATASET = r"[A-Za-z0-9_]{1,1024}"
_TABLE = r"[A-Za-z0-9_\-]{1,1024}"
_PIN_RE = re.compile(r"@(\d+):(\d+)$")


def is_table(uri: str) -> bool:
    """A bq:// URI: a BigQuery table or dataset, not a file."""
    return isinstance(uri, str) and uri.strip().lower().startswith("bq://")


@dataclass(frozen=True)
class TableRef:
    project: str
    dataset: str | None = None
    table: str | None = None

    @property
    def path(self) -> str:
        """project.dataset[.table], as the client takes it."""
        return ".".join(p for p in (self.project, self.dataset, self.table) if p)

    @property
    def uri(self) -> str:
        return f"bq://{self.path}"

    @property
    def dataset_uri(self) -> str:
        return f"bq://{self.project}.{self.dataset}"

    def sql(self) -> str:
        return f"`{self.project}.{self.dataset}.{self.table}`"


def _split_pin(uri: str) -> tuple[str, tuple[int, int] | None]:
    m = _PIN_RE.search(uri)
    if not m:
        return uri, None
    return uri[: m.start()], (int(m.group(1)), int(m.group(2)))


_WANT = {
    "input": "bq://PROJECT.DATASET.TABLE",
    "output": "bq://PROJECT.DATASET (a new predictions_<timestamp> table) or "
              "bq://PROJECT.DATASET.TABLE",
    "prefix": "bq://PROJECT, bq://PROJECT.DATASET or bq://PROJECT.DATASET.TABLE",
}


def _parse(uri: str, role: str) -> TableRef:
    """`role`: input (a table), output (a dataset or table), prefix (a project, dataset or
    table; a trailing '.' is allowed). A pin (@ms:rows) is dropped."""
    text = _split_pin(uri.strip())[0]
    body = text[5:] if text.lower().startswith("bq://") else ""
    if role == "prefix":
        body = body.removesuffix(".")
    parts = body.split(".")
    # a project id may hold a domain ("example.com:proj"): the dataset and table are the last parts
    tails = {"input": (2,), "output": (2, 1), "prefix": (2, 1, 0)}[role]
    for n_tail in tails:
        if len(parts) < n_tail + 1:
            continue
        project = ".".join(parts[: len(parts) - n_tail])
        tail = [*parts[len(parts) - n_tail:], None, None]
        dataset, table = tail[0], tail[1]
        if (re.fullmatch(_PROJECT, project)
                and (dataset is None or re.fullmatch(_DATASET, dataset))
                and (table is None or re.fullmatch(_TABLE, table))):
            return TableRef(project, dataset, table)
    what = {"input": "input", "output": "output", "prefix": "data policy"}[role]
    raise InvalidArgument(
        f"The BigQuery {what} URI {uri!r} is not valid. Write it as {_WANT[role]}.")


def parse_input_uri(uri: str) -> TableRef:
    return _parse(uri, "input")


def parse_output_uri(uri: str) -> TableRef:
    return _parse(uri, "output")


def canonical(uri: str, role: str = "prefix") -> str:
    """bq://PROJECT[.DATASET[.TABLE]] of a URI in `role` (see `_parse`), checked, without pin."""
    return _parse(uri, role).uri


def table_under(uri: str, prefix: str) -> bool:
    """Whether the table or dataset `uri` is `prefix` (a project, dataset or table) or in it:
    bq://p.d grants bq://p.d.t, never bq://p.d_old.t."""
    try:
        have, grant = _parse(uri, "prefix"), _parse(prefix, "prefix")
    except InvalidArgument:
        return False
    mine = (have.project, have.dataset, have.table)
    want = [p for p in (grant.project, grant.dataset, grant.table) if p is not None]
    return list(mine[: len(want)]) == want


# -- input ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableInfo:
    ref: TableRef
    #: google.cloud.bigquery SchemaField list.
    schema: list[Any]
    modified_ms: int
    num_rows: int


def _get_table(ref: TableRef, role: str) -> Any:
    try:
        return client(ref.project).get_table(ref.path, retry=retry(), timeout=TIMEOUT)
    except Exception as exc:
        err = translate(ref.uri, exc)
        if isinstance(err, NotFound):
            raise NotFound(
                f"The BigQuery {role} table {ref.uri} does not exist. Check the project, "
                "dataset and table names."
            ) from exc
        raise err from exc


def _check_columns(ref: TableRef, fields: list[Any]) -> None:
    for f in fields:
        kind = f.field_type.upper()
        if f.mode == "REPEATED" or kind in REFUSED_TYPES:
            shown = f"ARRAY<{kind}>" if f.mode == "REPEATED" else kind
            raise InvalidArgument(
                f"Column {f.name!r} of the input table {ref.uri} has type {shown}, which batch "
                "prediction does not accept (ARRAY, STRUCT, RANGE, DATETIME and GEOGRAPHY are "
                "refused). Select the table without it, or cast it (e.g. TO_JSON(col)) in a "
                "view or a copy of the table."
            )
        if f.name.lower() in {name for name, _ in OUTPUT_COLUMNS}:
            raise InvalidArgument(
                f"The input table {ref.uri} has a column {f.name!r}, which the output adds. "
                "Rename it in a copy or a view of the table."
            )
    request = [f for f in fields if f.name.lower() == "request"]
    if not request:
        raise InvalidArgument(
            f"The input table {ref.uri} has no 'request' column. Put each "
            "GenerateContentRequest in a column named request, of type JSON (or STRING)."
        )
    if request[0].field_type.upper() not in ("JSON", "STRING"):
        raise InvalidArgument(
            f"The 'request' column of {ref.uri} has type {request[0].field_type}; it must be "
            "JSON or STRING holding a GenerateContentRequest."
        )


def check_input_table(uri: str) -> TableInfo:
    """The input table, after checking it as Vertex does: it exists (NotFound), it has a
    `request` column of type JSON or STRING, and no column of a type Vertex refuses (ARRAY,
    STRUCT, RANGE, DATETIME, GEOGRAPHY) nor one the output adds (InvalidArgument)."""
    ref = parse_input_uri(uri)
    table = _get_table(ref, "input")
    fields = list(table.schema)
    _check_columns(ref, fields)
    modified = table.modified or table.created
    return TableInfo(ref, fields, int(modified.timestamp() * 1000) if modified else 0,
                     int(table.num_rows or 0))


def pin_input(uri: str) -> str:
    """Check the input table and pin it as it is now: bq://P.D.T@<lastModifiedMs>:<numRows>.
    `iter_rows` refuses to resume (skip > 0) on a pinned table that changed since."""
    info = check_input_table(uri)
    return f"{info.ref.uri}@{info.modified_ms}:{info.num_rows}"


def _check_pin(uri: str) -> TableInfo:
    info = check_input_table(uri)
    pin = _split_pin(uri)[1]
    if pin is not None and pin != (info.modified_ms, info.num_rows):
        raise FailedPrecondition(
            f"The input table {info.ref.uri} changed since the job started (it then had "
            f"{pin[1]} rows, modified at {pin[0]} ms; now {info.num_rows} rows, modified at "
            f"{info.modified_ms} ms). A row's position may have moved, so the job cannot resume "
            "without skipping or repeating rows: restore the table, or start a new job."
        )
    return info


def _json_value(value: Any) -> Any:
    """A cell as the client returns it (datetime, Decimal, bytes...), as JSON can hold it: the
    form BigQuery's JSON uses (ISO times, numeric strings, base64 bytes)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict | list | str | int | float | bool) or value is None:
        return value
    return str(value)  # INTERVAL and other rare types: their text form


def iter_rows(uri: str, skip: int = 0, page_rows: int = PAGE_ROWS) -> Iterator[Row]:
    """Rows of the table from index `skip` on, as `input.Row`s, read a page at a time.

    A `request` that is NULL, not JSON (a STRING column), or not a valid GenerateContentRequest
    makes an error row, as a bad JSONL line does; the other columns are echoed."""
    info = _check_pin(uri) if skip else check_input_table(uri)
    request_col = next(f for f in info.schema if f.name.lower() == "request")
    is_string = request_col.field_type.upper() == "STRING"
    try:
        pages = client(info.ref.project).list_rows(
            info.ref.path, start_index=skip or None, page_size=page_rows,
            selected_fields=info.schema, retry=retry(), timeout=TIMEOUT,
        ).pages
        index = skip
        for page in pages:
            for record in page:
                extras = {k: _json_value(v) for k, v in record.items() if k != request_col.name}
                yield _make_row(index, extras or None, record[request_col.name], is_string,
                                f"Row {index} of {info.ref.uri}")
                index += 1
    except BatchPredictError:
        raise
    except Exception as exc:
        raise translate(info.ref.uri, exc) from exc


def _make_row(index: int, extras: dict[str, Any] | None, value: Any, is_string: bool,
              where: str) -> Row:
    from batchpredict.formats.vertex import decode_request_line
    from batchpredict.input import Row

    if value is None:
        return Row(index, extras, {}, error=InvalidArgument(
            f"{where} has no request (NULL). Put a GenerateContentRequest in its request column: "
            '{"contents": [...]}.'))
    request = value
    if is_string:
        try:
            request = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Row(index, extras, value, error=InvalidArgument(
                f"{where}: its request is not valid JSON: {exc.msg} at column {exc.colno}. "
                'It must be a GenerateContentRequest such as {"contents": [...]}.'))
    _, request, parsed = decode_request_line({"request": request}, where, '{"contents": [...]}')
    if isinstance(parsed, BatchPredictError):
        return Row(index, extras, request, error=parsed)
    return Row(index, extras, request, parsed=parsed)


def count_rows(uri: str) -> int:
    """The exact row count (a COUNT(*) query: it sees the streaming buffer too)."""
    with ROW_CALLS:
        return count_table(parse_input_uri(uri))


def count_table(ref: TableRef) -> int:
    try:
        job = client(ref.project).query(
            f"SELECT COUNT(*) AS n FROM {ref.sql()}", retry=retry(), timeout=TIMEOUT
        )
        return int(next(iter(job.result(retry=retry(), timeout=TIMEOUT)))["n"])
    except Exception as exc:
        raise translate(ref.uri, exc) from exc


def estimate_rows(uri: str) -> int:
    """The table's row count from its metadata (no query; a progress bar's total)."""
    with ROW_CALLS:
        return check_input_table(uri).num_rows


# -- output -----------------------------------------------------------------------------------
def check_output(uri: str) -> TableRef:
    """Before a job is created: the dataset exists (NotFound), and a named table does not
    (AlreadyExists: the job creates its table, and owns every row in it)."""
    ref = parse_output_uri(uri)
    try:
        client(ref.project).get_dataset(f"{ref.project}.{ref.dataset}", retry=retry(),
                                        timeout=TIMEOUT)
    except Exception as exc:
        err = translate(ref.dataset_uri, exc)
        if isinstance(err, NotFound):
            raise NotFound(
                f"The output BigQuery dataset {ref.dataset_uri} does not exist. Create it, or "
                "fix the output URI."
            ) from exc
        raise err from exc
    if ref.table is not None and existing_table(ref) is not None:
        raise taken(ref)
    return ref


def existing_table(ref: TableRef) -> Any:
    """The table, or None when it does not exist."""
    try:
        return client(ref.project).get_table(ref.path, retry=retry(), timeout=TIMEOUT)
    except Exception as exc:
        if getattr(exc, "code", None) == 404:
            return None
        raise translate(ref.uri, exc) from exc


def taken(ref: TableRef) -> AlreadyExists:
    return AlreadyExists(
        f"The output table {ref.uri} already exists. A job creates its own output table: name "
        f"a new table, or give the dataset ({ref.dataset_uri}) to get a predictions_<timestamp> "
        "table."
    )
