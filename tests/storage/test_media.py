"""fileData fetching: allowed roots give bytes; everything else is a clear 400 for that row."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchpredict.config import Settings
from batchpredict.errors import InvalidArgument, NotFound
from batchpredict.media import MediaPolicy, check_file_uri, fetch_file_data
from tests.emulators import Bucket

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    (root / "cat.png").write_bytes(PNG)
    (root / "big.bin").write_bytes(b"x" * 2048)
    (tmp_path / "secret.txt").write_text("do not read")
    return root


def policy(*roots: str | Path, max_bytes: int = 1024) -> MediaPolicy:
    return MediaPolicy.parse(",".join(str(r) for r in roots), max_bytes)


async def test_allowed_local_root_returns_bytes(media_dir: Path) -> None:
    p = policy(media_dir)
    assert await fetch_file_data(str(media_dir / "cat.png"), "image/png", policy=p) == PNG
    assert await fetch_file_data(f"file://{media_dir}/cat.png", "image/png", policy=p) == PNG


async def test_settings_give_the_policy_and_the_environment_is_never_read_at_fetch_time(
    media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy_ = MediaPolicy.from_settings(
        Settings(media_roots=f"file://{media_dir}", max_media_bytes=100))
    assert await fetch_file_data(str(media_dir / "cat.png"), "image/png", policy=policy_) == PNG
    with pytest.raises(InvalidArgument, match="the limit is 100 bytes"):
        await fetch_file_data(str(media_dir / "big.bin"), None, policy=policy_)
    monkeypatch.setenv("BATCHPREDICT_MEDIA_ROOTS", str(media_dir))  # set after the app was built
    with pytest.raises(InvalidArgument, match="is not allowed"):
        await fetch_file_data(str(media_dir / "cat.png"), "image/png")


async def test_too_large_is_refused(media_dir: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        await fetch_file_data(str(media_dir / "big.bin"), "application/octet-stream",
                              policy=policy(media_dir))
    assert "2048 bytes; the limit is 1024 bytes" in info.value.message
    assert "BATCHPREDICT_MAX_MEDIA_BYTES" in info.value.message
    assert info.value.code == 400


async def test_missing_file_under_a_root_is_not_found(media_dir: Path) -> None:
    with pytest.raises(NotFound):
        await fetch_file_data(str(media_dir / "dog.png"), "image/png", policy=policy(media_dir))


@pytest.mark.parametrize(
    "make_uri",
    [
        lambda root: str(root.parent / "secret.txt"),  # outside the root
        lambda root: f"{root}/../secret.txt",  # .. escape
        lambda root: f"file://{root}/../secret.txt",
        lambda root: f"{root}-other/x.png",  # a sibling whose name starts like the root
        lambda root: "/etc/passwd",
    ],
)
def test_local_paths_outside_the_roots_are_refused(media_dir: Path, make_uri) -> None:
    uri = make_uri(media_dir)
    with pytest.raises(InvalidArgument) as info:
        check_file_uri(uri, policy(media_dir))
    assert "is not allowed" in info.value.message and uri in info.value.message
    assert "outside the allowed media roots" in info.value.message


def test_symlink_escape_is_refused(media_dir: Path) -> None:
    os.symlink(media_dir.parent / "secret.txt", media_dir / "innocent.png")
    os.symlink(media_dir.parent, media_dir / "up")
    for uri in (media_dir / "innocent.png", media_dir / "up" / "secret.txt"):
        with pytest.raises(InvalidArgument, match="resolves outside the allowed media roots"):
            check_file_uri(str(uri), policy(media_dir))


def test_local_files_are_off_by_default(media_dir: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_file_uri(str(media_dir / "cat.png"), MediaPolicy())
    assert "reading local files is off" in info.value.message
    assert "BATCHPREDICT_MEDIA_ROOTS" in info.value.message
    with pytest.raises(InvalidArgument, match="must be absolute"):
        check_file_uri("media/cat.png", policy(media_dir))
    with pytest.raises(InvalidArgument, match="local absolute path"):
        check_file_uri("file://otherhost/etc/passwd", policy(media_dir))


@pytest.mark.parametrize(
    "uri",
    [
        "http://169.254.169.254/computeMetadata/v1/",
        "https://example.com/cat.png",
        "HTTP://127.0.0.1:8080/admin",
        "ftp://host/cat.png",
        "data:image/png;base64,AAAA",
    ],
)
def test_other_schemes_are_refused(uri: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_file_uri(uri, MediaPolicy())
    assert "never from" in info.value.message or "is not allowed" in info.value.message
    assert "gs://" in info.value.message


def test_object_uris_and_roots() -> None:
    anywhere = MediaPolicy()
    assert check_file_uri("gs://b/media/cat.png", anywhere) == "gs://b/media/cat.png"
    assert check_file_uri("gcs://b/media/cat.png", anywhere) == "gs://b/media/cat.png"
    rooted = policy("gs://b/media", "s3://other")
    assert check_file_uri("gs://b/media/x/cat.png", rooted) == "gs://b/media/x/cat.png"
    assert check_file_uri("s3://other/cat.png", rooted) == "s3://other/cat.png"
    for uri in ("gs://b/media-private/cat.png", "gs://c/media/cat.png", "s3://b/media/cat.png"):
        with pytest.raises(InvalidArgument, match="outside the allowed media roots"):
            check_file_uri(uri, rooted)
    for uri in ("gs://b/media/../secret.png", "gs://b/media/./x.png"):
        with pytest.raises(InvalidArgument, match="segments are not allowed"):
            check_file_uri(uri, rooted)
    with pytest.raises(InvalidArgument, match="names no object"):
        check_file_uri("gs://b", anywhere)


def test_bad_roots_are_a_clear_configuration_error() -> None:
    with pytest.raises(InvalidArgument, match="not an absolute path"):
        MediaPolicy.parse("media")
    with pytest.raises(InvalidArgument, match="unsupported scheme"):
        MediaPolicy.parse("http://internal/")


async def test_fetch_from_object_stores(store: Bucket) -> None:
    uri = store.write("media/cat.png", PNG)
    store.write("media/big.bin", b"x" * 2048)
    p = policy(store.uri("media"))
    assert await fetch_file_data(uri, "image/png", policy=p) == PNG
    with pytest.raises(InvalidArgument, match="the limit is 1024 bytes"):
        await fetch_file_data(store.uri("media/big.bin"), None, policy=p)
    with pytest.raises(NotFound, match="does not exist"):
        await fetch_file_data(store.uri("media/none.png"), "image/png", policy=p)
