"""Real object-store servers for tests: a GCS emulator and a moto S3 server on loopback.

Both run in this process on a free 127.0.0.1 port, once per test session, and talk real HTTP, so
gcsfs, s3fs, google-cloud-storage, boto3 and subprocesses (the CLI, a server) all reach them.

Use them from any test package (tests/ is a package, so `tests.emulators` imports as soon as
your test folder has an `__init__.py`, or when pytest runs from the repository root):

    # tests/<yours>/conftest.py
    from tests.emulators import gcs, gcs_emulator, s3, s3_server  # noqa: F401  (fixtures)

    def test_job(gcs):                       # gcs: a fresh, empty bucket for this test
        gcs.write("in/requests.jsonl", b'{"request": ...}\\n')
        uri = gcs.uri("in/requests.jsonl")   # "gs://<bucket>/in/requests.jsonl"
        env = {**os.environ, **gcs.env()}    # for a subprocess (CLI, uvicorn)
        ...

Fixtures:
- `gcs_emulator` (session): the running `GCSEmulator`; `.endpoint` is http://127.0.0.1:PORT.
- `gcs` (function): sets STORAGE_EMULATOR_HOST (and GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false) in
  this process for the test, clears batchpredict's filesystem cache, creates a new bucket, and
  yields a `Bucket` (`.name`, `.uri(key)`, `.write(key, data)`, `.read(key)`, `.keys(prefix)`,
  `.env()`).
- `s3_server` (session) and `s3` (function): the same for S3, through moto's ThreadedMotoServer;
  sets AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY=test and
  AWS_DEFAULT_REGION=us-east-1 (give the region this way: s3fs's client_kwargs region breaks
  mkdir against moto).

Without pytest: `with GCSEmulator() as emu: bucket = emu.bucket("name")`, likewise `S3Server`.

Traps these helpers already avoid (see /work/shared/REAL_SERVICES.md): gcsfs's gRPC bucket probe
(60 s per bucket against an emulator) is off through GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false,
which must be set before gcsfs is first imported: this module sets it on import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import pytest

__all__ = [
    "Bucket",
    "GCSEmulator",
    "S3Server",
    "free_port",
    "gcs",
    "gcs_emulator",
    "s3",
    "s3_server",
    "unique_bucket_name",
]

AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_bucket_name(prefix: str = "bp") -> str:
    """A valid bucket name (3-63 lowercase letters, digits, dashes) unique to this call."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Bucket:
    """One bucket on a test server, with helpers that bypass batchpredict entirely (boto3 or
    google-cloud-storage), so tests check what really landed in the store."""

    def __init__(self, scheme: str, name: str, server: GCSEmulator | S3Server) -> None:
        self.scheme = scheme
        self.name = name
        self.server = server

    def uri(self, key: str = "") -> str:
        return f"{self.scheme}://{self.name}/{key}" if key else f"{self.scheme}://{self.name}"

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should reach this bucket's server."""
        return self.server.env()

    def write(self, key: str, data: bytes | str) -> str:
        """Upload `data` as `key`; returns its URI."""
        body = data.encode() if isinstance(data, str) else data
        self.server.put(self.name, key, body)
        return self.uri(key)

    def read(self, key: str) -> bytes:
        return self.server.get(self.name, key)

    def keys(self, prefix: str = "") -> list[str]:
        """Object names under `prefix`, sorted."""
        return self.server.list(self.name, prefix)

    def __repr__(self) -> str:
        return f"Bucket({self.uri()!r})"


class _LoopbackServer:
    """A storage server on a free loopback port, run in a thread of this process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GCSEmulator(_LoopbackServer):
    """gcp-storage-emulator, in memory, in a daemon thread of this process."""

    def start(self) -> GCSEmulator:
        from gcp_storage_emulator.server import create_server

        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        self._server = create_server("127.0.0.1", self.port, in_memory=True)
        # A daemon thread: a test run that forgets stop() still exits.
        self._server._api.daemon = True
        self._server.start()
        return self

    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage as gcs_storage

        return gcs_storage.Client(
            project="test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.endpoint},
        )

    def bucket(self, name: str | None = None) -> Bucket:
        """Create a bucket (a fresh unique name when none is given)."""
        name = name or unique_bucket_name()
        self.client().create_bucket(name)
        return Bucket("gs", name, self)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().bucket(bucket).blob(key).upload_from_string(data)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().bucket(bucket).blob(key).download_as_bytes()  # type: ignore[no-any-return]

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client().list_blobs(bucket, prefix=prefix or None))


class S3Server(_LoopbackServer):
    """moto's S3 (and every other AWS service) as a real HTTP server in a thread of this process."""

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, **AWS_TEST_ENV}

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )

    def bucket(self, name: str | None = None) -> Bucket:
        name = name or unique_bucket_name()
        self.client().create_bucket(Bucket=name)
        return Bucket("s3", name, self)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)


def _clear_filesystem_cache() -> None:
    """Forget cached filesystem instances, so the next one reads the environment again."""
    with contextlib.suppress(ImportError):
        from batchpredict import storage

        storage.clear_filesystem_cache()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GCSEmulator]:
    with GCSEmulator() as emu:
        yield emu


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def gcs(gcs_emulator: GCSEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """A new bucket on the GCS emulator, with this process pointed at the emulator."""
    for key, value in gcs_emulator.env().items():
        monkeypatch.setenv(key, value)
    _clear_filesystem_cache()
    yield gcs_emulator.bucket()
    _clear_filesystem_cache()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """A new bucket on the moto S3 server, with this process pointed at it."""
    for key in ("AWS_ENDPOINT_URL_S3", "BATCHPREDICT_S3_ENDPOINT_URL", "AWS_PROFILE",
                "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    _clear_filesystem_cache()
    yield s3_server.bucket()
    _clear_filesystem_cache()
