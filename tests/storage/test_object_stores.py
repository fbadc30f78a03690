"""storage.py against real servers (GCS emulator, moto S3): wildcards, clear errors, probes of the
output prefix, whole-or-nothing writes, and the chunked output a job writes there."""

from __future__ import annotations

import orjson
import pytest

from batchpredict import output, storage
from batchpredict.errors import BatchPredictError, InvalidArgument, NotFound
from tests.emulators import Bucket


def test_wildcards_and_several_uris_expand_in_order(store: Bucket) -> None:
    for name in ("b.jsonl", "a.jsonl", "c.txt", "sub/d.jsonl"):
        store.write(f"in/{name}", b"{}\n")
    single = store.write("other/z.jsonl", b"{}\n")
    got = storage.expand_inputs([single, store.uri("in/*.jsonl"), store.uri("in/a.jsonl")])
    assert got == [single, store.uri("in/a.jsonl"), store.uri("in/b.jsonl")]
    deep = storage.expand_inputs([store.uri("in/**/*.jsonl")])
    assert store.uri("in/sub/d.jsonl") in deep and store.uri("in/c.txt") not in deep
    with pytest.raises(InvalidArgument, match="is not valid"):
        storage.expand_inputs([store.uri("in/**.jsonl")])


def test_new_objects_are_seen_at_once(store: Bucket) -> None:
    """No listing cache hides an object another process uploaded after a first look."""
    store.write("in/1.jsonl", b"{}\n")
    assert len(storage.expand_inputs([store.uri("in/*.jsonl")])) == 1
    store.write("in/2.jsonl", b"{}\n")
    assert len(storage.expand_inputs([store.uri("in/*.jsonl")])) == 2
    assert storage.list_files(store.uri("in")) == [store.uri("in/1.jsonl"), store.uri("in/2.jsonl")]


@pytest.mark.parametrize(
    ("path", "error", "words"),
    [
        ("in/missing.jsonl", NotFound, "does not exist"),
        ("nothing/*.jsonl", NotFound, "matches no file"),
        ("in", InvalidArgument, "is a folder"),
    ],
)
def test_bad_inputs_say_which_uri_and_what_to_do(
    store: Bucket, path: str, error: type, words: str
) -> None:
    store.write("in/x.jsonl", b"{}\n")
    with pytest.raises(error) as info:
        storage.expand_inputs([store.uri("in/x.jsonl"), store.uri(path)])
    assert store.uri(path) in info.value.message
    assert words in info.value.message


@pytest.mark.parametrize("path", ["in.jsonl", "*.jsonl"])
def test_missing_bucket_is_named(store: Bucket, path: str) -> None:
    uri = f"{store.scheme}://no-such-bucket-{store.name[-6:]}/{path}"
    with pytest.raises(NotFound) as info:
        storage.expand_inputs([uri])
    assert f"bucket {store.scheme}://no-such-bucket-" in info.value.message
    assert "does not exist" in info.value.message


def test_output_probe_leaves_nothing_and_names_a_missing_bucket(store: Bucket) -> None:
    storage.check_output_writable(store.uri("out/run1"))
    assert store.keys() == []
    missing = f"{store.scheme}://no-such-bucket-{store.name[-6:]}/out"
    with pytest.raises(NotFound) as info:
        storage.check_output_writable(missing)
    assert "output bucket" in info.value.message and missing in info.value.message


def test_a_failed_write_leaves_no_object(store: Bucket) -> None:
    with pytest.raises(RuntimeError), storage.open_atomic_writer(store.uri("o/half")) as f:
        f.write(b"first part\n")
        raise RuntimeError("the source broke mid-copy")
    storage.write_atomic(store.uri("o/whole"), b"all\n")
    assert store.keys("o/") == ["o/whole"]
    assert store.read("o/whole") == b"all\n"


def test_a_failed_large_upload_leaves_no_object(gcs: Bucket) -> None:
    """Past gcsfs's block size the upload is resumable (parts sent before the end): a failure
    still must not commit the parts sent."""
    block = b"x" * (6 * 1024 * 1024)
    with pytest.raises(RuntimeError), storage.open_atomic_writer(gcs.uri("o/big")) as f:
        f.write(block)
        f.write(block)
        raise RuntimeError("boom")
    assert gcs.keys("o/") == []
    storage.write_atomic(gcs.uri("o/big"), block + block)
    assert len(gcs.read("o/big")) == 2 * len(block)


def test_chunked_output_commits_resumes_and_assembles(store: Bucket) -> None:
    out = output.ChunkedOutput(output.make_output_dir(store.uri("results")))
    lines = [orjson.dumps({"key": i, "status": "", "response": {}}) + b"\n" for i in range(6)]
    out.write_chunk(0, 1, b"".join(lines[0:2]))
    out.write_chunk(2, 3, b"".join(lines[2:4]))
    out.write_chunk(5, 5, lines[5])  # past a gap: dropped, its row reruns
    committed, chunks = out.committed()
    assert committed == 4 and len(chunks) == 2
    out.write_chunk(4, 5, b"".join(lines[4:6]))
    final = out.assemble()
    assert final.startswith(f"{store.scheme}://") and final.endswith("/predictions.jsonl")
    key = final.split("/", 3)[3]
    assert store.read(key) == b"".join(lines)
    assert store.keys() == [key]  # chunks removed
    assert out.assemble() == final  # repeatable
    assert store.read(key) == b"".join(lines)


def test_every_storage_error_is_ours(store: Bucket) -> None:
    """Whatever goes wrong, callers see a BatchPredictError naming the URI, never a client's."""
    bad = f"{store.scheme}://no-such-bucket-{store.name[-6:]}/x"
    for call in (storage.read_bytes, storage.size, lambda u: storage.write_atomic(u, b"1")):
        with pytest.raises(BatchPredictError) as info:
            call(bad)
        assert "no-such-bucket" in info.value.message
    assert storage.list_files(bad) == []
    assert storage.exists(bad) is False
