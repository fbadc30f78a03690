"""Fixtures for storage tests: the real GCS emulator and moto S3 server (tests/emulators.py),
and `store`, which runs a test once against each of them."""

from __future__ import annotations

import pytest

from tests.emulators import Bucket, gcs, gcs_emulator, s3, s3_server  # noqa: F401  (fixtures)


@pytest.fixture(params=["gs", "s3"])
def store(request: pytest.FixtureRequest) -> Bucket:
    """A fresh bucket on the GCS emulator, then on the S3 server."""
    return request.getfixturevalue("gcs" if request.param == "gs" else "s3")  # type: ignore[no-any-return]
