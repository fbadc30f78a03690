"""Every storage client exception the code maps is mapped, to the right error, from the real
exception classes of botocore, google-auth and gcsfs (and the names in CREDENTIAL_ERRORS are
real classes of those libraries, so the mapping by name cannot go stale silently)."""

from __future__ import annotations

import botocore.exceptions as boto
import google.auth.exceptions as gauth
import pytest
from gcsfs.retry import HttpError

from batchpredict.errors import FailedPrecondition, InvalidArgument, NotFound, Outage
from batchpredict.storage import translate_error
from batchpredict.storage.filesystems import CREDENTIAL_ERRORS


def test_every_credential_error_name_is_a_real_client_exception() -> None:
    real = {name for module in (boto, gauth) for name in dir(module)}
    assert sorted(CREDENTIAL_ERRORS - real) == []


CREDENTIAL_CASES = [
    ("s3://b/k", boto.NoCredentialsError(), "No usable AWS credentials"),
    ("s3://b/k", boto.PartialCredentialsError(provider="env", cred_var="AWS_SECRET"),
     "No usable AWS credentials"),
    ("s3://b/k", boto.CredentialRetrievalError(provider="sso", error_msg="expired"),
     "No usable AWS credentials"),
    ("gs://b/k", gauth.DefaultCredentialsError("no ADC"),
     "No usable Google Cloud credentials"),
    ("gs://b/k", gauth.RefreshError("token expired"), "No usable Google Cloud credentials"),
]


@pytest.mark.parametrize(("uri", "exc", "start"), CREDENTIAL_CASES,
                         ids=[type(c[1]).__name__ for c in CREDENTIAL_CASES])
def test_credential_errors_say_how_to_configure_credentials(uri, exc, start) -> None:
    err = translate_error(uri, exc)
    assert isinstance(err, FailedPrecondition)
    assert err.message.startswith(f"{start} to access {uri}")


def test_every_mapped_credential_class_has_a_case() -> None:
    assert {type(c[1]).__name__ for c in CREDENTIAL_CASES} == CREDENTIAL_ERRORS


@pytest.mark.parametrize("code", [401, 403])
def test_gcsfs_http_permission_errors_name_the_uri_and_the_grant(code: int) -> None:
    err = translate_error("gs://b/k", HttpError({"code": code, "message": "Forbidden"}))
    assert isinstance(err, InvalidArgument)
    assert err.message.startswith("Permission denied for gs://b/k (")
    assert "Grant the credentials batchpredict runs with access to it" in err.message


def test_s3_access_denied_and_os_permission_errors_are_permission_errors() -> None:
    for exc in (PermissionError("AccessDenied: no"), PermissionError(13, "Permission denied")):
        err = translate_error("s3://b/k", exc)
        assert err.message.startswith("Permission denied for s3://b/k (")


def test_missing_objects_are_not_found() -> None:
    err = translate_error("/srv/none.jsonl", FileNotFoundError(2, "No such file"))
    assert isinstance(err, NotFound)
    assert err.message == (
        "/srv/none.jsonl does not exist. Check the path and that the object was uploaded."
    )


def test_a_server_error_is_an_outage_to_wait_out() -> None:
    err = translate_error("gs://b/k", HttpError({"code": 500, "message": "backend error"}))
    assert isinstance(err, Outage) and err.resource == "gs://b/k"
    assert err.message == (
        "The storage of gs://b/k answered HTTP 500 (HttpError: backend error, 500). Check that "
        "the storage service is up and reachable from this machine.")


def test_anything_else_is_named_with_its_type() -> None:
    err = translate_error("gs://b/k", ValueError("Bad Request: b/k"))
    assert isinstance(err, InvalidArgument)
    assert err.message == "Cannot access gs://b/k: ValueError: Bad Request: b/k"
