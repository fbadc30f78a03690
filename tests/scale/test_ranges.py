"""Row ranges: the driver's plan and the workers' reads give exactly the rows, numbers and error
messages of reading the whole input in one stream, with committed rows skipped."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from batchpredict import storage
from batchpredict.executors import ranges
from batchpredict.executors.ranges import CommittedRows, plan_ranges, read_range
from batchpredict.input import file_rows


def one_stream(files: list[str], max_line: int) -> list[tuple[int, str | None, bytes]]:
    """(row, error, extras) of every row, read the way a single stream reads them."""
    out, index = [], 0
    for uri in files:
        with storage.open_read(uri) as f:
            for _, _, row in file_rows(f, uri, index, 0, max_line):
                assert row is not None
                out.append((row.index, row.error.message if row.error else None,
                            orjson.dumps(row.extras)))
                index += 1
    return out


def random_file(rnd: random.Random, path: Path, blank: float) -> str:
    lines = []
    for i in range(rnd.randint(0, 60)):
        r = rnd.random()
        if r < blank:
            lines.append(rnd.choice([b"", b"  \t", b" " * 50]))
        elif r < blank + 0.05:
            lines.append(b"x" * rnd.randint(30, 80))  # over a 40-byte limit
        elif r < 0.6:
            lines.append(orjson.dumps({"k": i, "request": {"contents": [
                {"role": "user", "parts": [{"text": f"row {i}"}]}]}}))
        else:
            lines.append(b"not json %d" % i)
    data = b"\n".join(lines)
    if data and rnd.random() < 0.7:
        data += b"\n"
    if rnd.random() < 0.1:
        data = data.replace(b"\n", b"\r\n")
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(("block", "blank"), [(1 << 20, 0.1), (64, 0.1), (64, 0.0), (97, 0.02)])
def test_ranges_read_exactly_what_one_stream_reads(tmp_path: Path, monkeypatch, block: int,
                                                   blank: float) -> None:
    monkeypatch.setattr(ranges, "_BLOCK", block)
    rnd = random.Random(block + int(blank * 100))
    for trial in range(150):
        files = [random_file(rnd, tmp_path / f"{trial}-{k}.jsonl", blank)
                 for k in range(rnd.randint(1, 3))]
        max_line = rnd.choice([40, 10_000])
        expected = one_stream(files, max_line)
        committed, pos = [], 0
        while pos < len(expected) and rnd.random() < 0.5:
            first = pos + rnd.randint(0, 5)
            last = first + rnd.randint(0, 4)
            if last < len(expected):
                committed.append((first, last))
            pos = last + 1 + rnd.randint(0, 3)
        chunk = rnd.randint(1, 10)
        plan = plan_ranges(files, chunk, committed, max_line, rnd.choice([100, 1 << 30]))
        got, planned = [], []
        while True:
            try:
                rng = next(plan)
            except StopIteration as end:
                total = end.value
                break
            planned.append(rng)
            got += [(r.index, r.error.message if r.error else None, orjson.dumps(r.extras))
                    for r in read_range(rng, max_line)]
        done = {i for first, last in committed for i in range(first, last + 1)}
        assert total == len(expected)
        assert got == [row for row in expected if row[0] not in done]
        assert all(r.rows <= chunk for r in planned)
        assert not any(r.first_row <= i <= r.last_row for r in planned for i in done)


def test_a_lost_ranges_rest_skips_its_committed_rows(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"k": i, "request": {"contents": [
        {"parts": [{"text": "x"}]}]}}) + b"\n" for i in range(10)))
    [rng] = list(plan_ranges([str(src)], 100))
    assert [r.index for r in read_range(rng.rest(6), 1000)] == [7, 8, 9]


def test_an_input_that_changed_under_a_job_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"request": {}}\n' * 4)
    [rng] = list(plan_ranges([str(src)], 100))
    src.write_bytes(b'{"request": {}}\n\n\n\n')
    with pytest.raises(Exception, match="changed while the job ran"):
        read_range(rng, 1000)


def test_committed_rows_know_their_gap_free_prefix() -> None:
    rows = CommittedRows([(10, 19), (0, 4)])
    assert rows.prefix == 0 + 5
    assert rows.overlaps(3, 3) and rows.overlaps(19, 30) and not rows.overlaps(5, 9)
    rows.add(5, 9)
    assert rows.prefix == 20 and rows.has(5, 9) and not rows.has(5, 8)
