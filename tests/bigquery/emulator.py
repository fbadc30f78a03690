"""A real BigQuery emulator for tests: bqemulator (DuckDB-backed BigQuery REST API) on loopback.

It runs from its own venv (`.venv-bq`, made by install.sh; BATCHPREDICT_BQ_VENV names another),
as a subprocess on a free 127.0.0.1 port, once per test session, in memory:

- `bq_emulator` (session): the running `BigQueryEmulator`; `.endpoint`, `.env()`, `.client()`.
- `bq` (function): sets BIGQUERY_EMULATOR_HOST in this process for the test, clears
  batchpredict's cached BigQuery clients, and yields a fresh `BigQueryDataset` (`.uri`,
  `.table_uri(name)`, `.create_table(name, schema, rows)`, `.rows(name)`, `.columns(name)`,
  `.tables()`, `.env()` for subprocesses).

Tests skip, saying why, when .venv-bq is missing. Without pytest:
`with BigQueryEmulator() as emu: ds = emu.dataset()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulators import free_port

__all__ = ["BQ_PROJECT", "BigQueryDataset", "BigQueryEmulator", "bq", "bq_emulator"]

BQ_VENV = Path(os.environ.get("BATCHPREDICT_BQ_VENV")
               or Path(__file__).resolve().parents[2] / ".venv-bq")
BQ_PROJECT = "test-project"


class BigQueryDataset:
    """One dataset on the emulator, with helpers that use google-cloud-bigquery directly, so
    tests check what really landed in the tables."""

    def __init__(self, emulator: BigQueryEmulator, name: str) -> None:
        self.emulator = emulator
        self.project = BQ_PROJECT
        self.name = name
        self.uri = f"bq://{self.project}.{name}"

    def table_uri(self, table: str) -> str:
        return f"{self.uri}.{table}"

    def env(self) -> dict[str, str]:
        return self.emulator.env()

    def create_table(self, table: str, schema: list[tuple[str, str]] | list[Any],
                     rows: list[dict[str, Any]] | None = None) -> str:
        """A table with `schema` ((name, type) pairs or SchemaFields) holding `rows` (JSON
        cells given as Python values are sent as JSON text); returns its bq:// URI."""
        from google.cloud import bigquery

        fields = [f if isinstance(f, bigquery.SchemaField) else bigquery.SchemaField(*f)
                  for f in schema]
        client = self.emulator.client()
        client.create_table(bigquery.Table(f"{self.project}.{self.name}.{table}", schema=fields))
        if rows:
            json_cols = {f.name for f in fields if f.field_type == "JSON"}
            sent = [{k: json.dumps(v) if k in json_cols and v is not None else v
                     for k, v in row.items()} for row in rows]
            errors = client.insert_rows_json(f"{self.project}.{self.name}.{table}", sent)
            assert not errors, errors
        return self.table_uri(table)

    def tables(self) -> list[str]:
        return sorted(t.table_id for t in self.emulator.client().list_tables(
            f"{self.project}.{self.name}"))

    def columns(self, table: str) -> list[tuple[str, str]]:
        got = self.emulator.client().get_table(f"{self.project}.{self.name}.{table}")
        return [(f.name, f.field_type) for f in got.schema]

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row, in the table's order, as dicts (JSON cells parsed)."""
        it = self.emulator.client().list_rows(f"{self.project}.{self.name}.{table}")
        return [dict(row.items()) for row in it]


class BigQueryEmulator:
    """`bqemulator start` from .venv-bq, in a subprocess on free loopback ports, in memory.

    Its HOME is .venv-bq/home, where install.sh put DuckDB's spatial and avro extensions: without
    them the emulator tries to download them at start and fails offline."""

    def __init__(self, venv: Path = BQ_VENV) -> None:
        self.venv = venv
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bqemulator-{self.port}.log"

    @staticmethod
    def missing_reason(venv: Path = BQ_VENV) -> str | None:
        if not (venv / "bin" / "bqemulator").exists():
            return (f"the BigQuery emulator is not installed ({venv}/bin/bqemulator is missing); "
                    "bash install.sh makes it")
        return None

    def start(self) -> BigQueryEmulator:
        cmd = [str(self.venv / "bin" / "bqemulator"), "start", "--rest-host", "127.0.0.1",
               "--rest-port", str(self.port), "--grpc-host", "127.0.0.1",
               "--grpc-port", str(free_port()), "--project", BQ_PROJECT, "--ephemeral",
               "--log-level", "warning"]
        env = {**os.environ, "HOME": str(self.venv / "home")}
        env.pop("BIGQUERY_EMULATOR_HOST", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        ready = f"{self.endpoint}/bigquery/v2/projects/{BQ_PROJECT}/datasets"
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bqemulator exited at start: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(ready, timeout=2) as reply:
                    if reply.status == 200:
                        return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bqemulator not ready in 60 s: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> BigQueryEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        return {"BIGQUERY_EMULATOR_HOST": self.endpoint}

    def client(self) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=BQ_PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )

    def dataset(self, name: str | None = None) -> BigQueryDataset:
        name = name or f"ds_{uuid.uuid4().hex[:12]}"
        self.client().create_dataset(f"{BQ_PROJECT}.{name}")
        return BigQueryDataset(self, name)


@pytest.fixture(scope="session")
def bq_emulator() -> Iterator[BigQueryEmulator]:
    reason = BigQueryEmulator.missing_reason()
    if reason:
        pytest.skip(reason)
    with BigQueryEmulator() as emu:
        yield emu


@pytest.fixture
def bq(bq_emulator: BigQueryEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[BigQueryDataset]:
    """A new dataset on the BigQuery emulator, with this process pointed at the emulator."""
    from batchpredict.bigquery.client import clear_client_cache

    for key, value in bq_emulator.env().items():
        monkeypatch.setenv(key, value)
    clear_client_cache()
    yield bq_emulator.dataset()
    clear_client_cache()
