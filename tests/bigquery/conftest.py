"""Fixtures for BigQuery tests: the real bqemulator (tests/bigquery/emulator.py: `bq` is a fresh
dataset), the thread server of tests/server, and input tables in Vertex's shape."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.bigquery.emulator import BigQueryDataset, bq, bq_emulator  # noqa: F401  (fixtures)
from tests.conftest import cli_env, text_request
from tests.server.conftest import (  # noqa: F401  (fixtures)
    MODELS_TOML,
    make_settings,
    models_file,
    server,
    start_server,
)

#: Columns of the input tables made here: echoed columns of several types, then request (JSON).
INPUT_SCHEMA = [("key", "STRING"), ("n", "INT64"), ("score", "FLOAT64"), ("day", "DATE"),
                ("meta", "JSON"), ("request", "JSON")]
#: A request Vertex refuses: the role is not user or model.
BAD_REQUEST = {"contents": [{"role": "tester", "parts": [{"text": "hi"}]}]}


def input_rows(n: int, bad: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    return [{"key": f"k{i}", "n": i, "score": i / 2, "day": "2024-01-02", "meta": {"i": i},
             "request": BAD_REQUEST if i in bad else text_request(f"Say {i}.", maxOutputTokens=4)}
            for i in range(n)]


@pytest.fixture
def make_table(bq: BigQueryDataset) -> Callable[..., str]:  # noqa: F811
    """An input table of `n` rows (rows in `bad` hold an invalid request); its bq:// URI."""
    counter = iter(range(1000))

    def make(n: int, bad: tuple[int, ...] = ()) -> str:
        return bq.create_table(f"in_{next(counter)}", INPUT_SCHEMA, input_rows(n, bad))

    return make


@pytest.fixture
def bq_env(tmp_path: Path, bq: BigQueryDataset) -> dict[str, str]:  # noqa: F811
    """Environment for `python -m batchpredict`: the emulator, the test-double models (fast-*
    at once, slow-* one row per 0.05 s)."""
    models = tmp_path / "bq-models.toml"
    models.write_text(MODELS_TOML)
    return cli_env(tmp_path / "data", BATCHPREDICT_MODELS_FILE=str(models), **bq.env())
