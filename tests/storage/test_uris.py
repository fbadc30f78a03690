"""storage.py without servers: schemes, BigQuery refusals, local and memory:// behaviour,
credentials errors, and the translation of every storage client error into ours."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchpredict import storage
from batchpredict.errors import (
    BatchPredictError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Outage,
)


@pytest.mark.parametrize(
    ("uri", "role", "words"),
    [
        ("bq://project.dataset.table", "input", "BigQuery sources"),
        ("bq://project.dataset", "output", "BigQuery destinations"),
        ("http://169.254.169.254/x.jsonl", "input", "Unsupported URI scheme 'http://'"),
        ("ftp://host/x.jsonl", "output", "Unsupported URI scheme 'ftp://'"),
        ("gs:///x.jsonl", "input", "names no bucket"),
        ("bq://project.dataset.table", "", "BigQuery tables"),
        ("", "input", "empty"),
    ],
)
def test_unsupported_uris_name_what_is_supported(uri: str, role: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        storage.check_uri(uri, role)
    assert words in info.value.message
    if uri.startswith("bq"):
        assert "gs://" in info.value.message and "s3://" in info.value.message


def test_bigquery_is_refused_for_inputs_and_outputs() -> None:
    with pytest.raises(InvalidArgument, match="BigQuery sources"):
        storage.expand_inputs(["bq://p.d.t"])
    with pytest.raises(InvalidArgument, match="BigQuery destinations"):
        storage.check_output_writable("bq://p.d")


def test_schemes() -> None:
    assert storage.scheme_of("/a/b") == "file"
    assert storage.scheme_of("file:///a") == "file"
    assert storage.scheme_of("GS://b/k") == "gs"
    assert storage.scheme_of("gcs://b/k") == "gs"
    assert storage.is_local("rel/path")


def test_memory_round_trip_and_failed_write() -> None:
    base = "memory:///bp-test-uris"  # fsspec names memory paths from the root
    storage.write_atomic(f"{base}/in/a.jsonl", b"1\n")
    storage.write_atomic(f"{base}/in/b.jsonl", b"2\n")
    assert storage.expand_inputs([f"{base}/in/*.jsonl"]) == [
        f"{base}/in/a.jsonl", f"{base}/in/b.jsonl"]
    with pytest.raises(RuntimeError), storage.open_atomic_writer(f"{base}/in/c.jsonl") as f:
        f.write(b"half")
        raise RuntimeError
    assert not storage.exists(f"{base}/in/c.jsonl")
    storage.check_output_writable(f"{base}/out")
    assert storage.list_files(f"{base}/out") == []


def test_local_paths_and_file_uris(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("2.jsonl", "1.jsonl"):
        (tmp_path / "in" / name).write_bytes(b"{}\n")
    got = storage.expand_inputs([f"file://{tmp_path}/in/*.jsonl", str(tmp_path / "in/1.jsonl")])
    assert got == [str(tmp_path / "in/1.jsonl"), str(tmp_path / "in/2.jsonl")]
    with pytest.raises(NotFound, match="does not exist"):
        storage.expand_inputs([str(tmp_path / "nope.jsonl")])
    with pytest.raises(InvalidArgument, match="is a folder"):
        storage.expand_inputs([str(tmp_path / "in")])
    with pytest.raises(RuntimeError), storage.open_atomic_writer(str(tmp_path / "o.jsonl")) as f:
        f.write(b"half")
        raise RuntimeError
    assert os.listdir(tmp_path) == ["in"]


def test_a_prefix_that_passes_a_permission_check_but_cannot_be_written_is_refused() -> None:
    """Root passes os.access on /proc; only a real write tells."""
    with pytest.raises(InvalidArgument) as err:
        storage.check_output_writable("/proc/out")
    assert err.value.message == (
        "Cannot write under the output prefix /proc/out: No such file or directory (/proc/out). "
        "Choose a folder this user can write to.")


def test_local_output_prefix_is_probed_with_a_real_write_that_leaves_no_file(
    tmp_path: Path,
) -> None:
    storage.check_output_writable(str(tmp_path / "not" / "yet" / "there"))
    assert os.listdir(tmp_path / "not" / "yet" / "there") == []  # made, as the job would
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="which is a file, not a folder"):
        storage.check_output_writable(str(tmp_path / "file" / "out"))


def test_gcs_without_credentials_says_how_to_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    storage.clear_filesystem_cache()
    try:
        with pytest.raises(FailedPrecondition) as info:
            storage.expand_inputs(["gs://bucket/in.jsonl"])
    finally:
        storage.clear_filesystem_cache()
    assert "GOOGLE_APPLICATION_CREDENTIALS" in info.value.message
    assert "gs://bucket/in.jsonl" in info.value.message


def test_filesystems_are_cached_per_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("BATCHPREDICT_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    storage.clear_filesystem_cache()
    a, _ = storage.filesystem("s3://bucket/a")
    b, path = storage.filesystem("s3://bucket/b")
    assert a is b and path == "bucket/b"
    assert a.client_kwargs.get("endpoint_url", a.endpoint_url) == "http://127.0.0.1:1"
    monkeypatch.setenv("BATCHPREDICT_S3_ENDPOINT_URL", "http://127.0.0.1:2")
    c, _ = storage.filesystem("s3://bucket/a")
    assert c is not a
    storage.clear_filesystem_cache()


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (FileNotFoundError("b/k"), NotFound, "does not exist"),
        (PermissionError("AccessDenied"), InvalidArgument, "Permission denied"),
        (OSError("Forbidden: b/k\nno access"), InvalidArgument, "Permission denied"),
        (ValueError("Bad Request: b/k"), InvalidArgument, "Cannot access"),
        (TimeoutError(), Outage, "cannot be reached (TimeoutError)"),  # waited out
        (RuntimeError("boom"), InvalidArgument, "Cannot access"),
    ],
)
def test_client_errors_become_ours(exc: Exception, kind: type, words: str) -> None:
    err = storage.translate_error("gs://b/k", exc)
    assert isinstance(err, kind) and isinstance(err, BatchPredictError)
    assert "gs://b/k" in err.message and words in err.message
    assert "\n" not in err.message


def test_s3_endpoint_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("BATCHPREDICT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    assert storage.s3_endpoint_url() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general")
    assert storage.s3_endpoint_url() == "http://general"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific")
    assert storage.s3_endpoint_url() == "http://s3-specific"
    monkeypatch.setenv("BATCHPREDICT_S3_ENDPOINT_URL", "http://ours")
    assert storage.s3_endpoint_url() == "http://ours"


def test_s3_without_credentials_says_how_to_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("BATCHPREDICT_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    storage.clear_filesystem_cache()
    try:
        with pytest.raises(FailedPrecondition) as info:
            storage.expand_inputs(["s3://bucket/in.jsonl"])
    finally:
        storage.clear_filesystem_cache()
    assert "AWS_ACCESS_KEY_ID" in info.value.message
    assert "s3://bucket/in.jsonl" in info.value.message
