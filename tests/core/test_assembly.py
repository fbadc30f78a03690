"""predictions.jsonl from the committed chunks: put together early as the gap-free run from
row 0 grows (local output), and the final assembly that renames it, or copies every chunk when
the early file does not hold exactly the committed chunks."""

from __future__ import annotations

from pathlib import Path

from batchpredict.output import Chunk, ChunkedOutput

LINES = {(0, 1): b'{"r":0}\n{"r":1}\n', (2, 3): b'{"r":2}\n{"r":3}\n', (4, 4): b'{"r":4}\n'}


def written(tmp_path: Path) -> tuple[ChunkedOutput, list[Chunk]]:
    out = ChunkedOutput(str(tmp_path / "out"))
    for (first, last), data in LINES.items():
        assert out.write_chunk(first, last, data)
    return out, [Chunk(first, last, out.chunk_uri(first, last)) for first, last in LINES]


def test_chunks_are_appended_as_the_run_from_row_0_grows(tmp_path: Path) -> None:
    out, (c0, c1, c2) = written(tmp_path)
    out.assemble_early([c0, c2])  # 2-3 is not committed yet: 4 waits behind the gap
    early = out.early
    assert early is not None and early.next_row == 2
    assert Path(early.path).read_bytes() == LINES[(0, 1)]
    assert Path(early.path).parent == Path(out.incremental_dir)
    out.assemble_early([c0, c1, c2])  # the gap filled: the rest follows, 0-1 not again
    assert Path(early.path).read_bytes() == b"".join(LINES.values())

    assert out.assemble([c0, c1, c2]) == out.predictions_uri
    assert Path(out.predictions_uri).read_bytes() == b"".join(LINES.values())
    assert not Path(early.path).exists() and not Path(out.incremental_dir).exists()


def test_committed_chunks_around_a_gap_are_copied_whole(tmp_path: Path) -> None:
    """A cancelled job keeps its committed rows around gaps: the early file (rows 0-1) does
    not hold them all, so every committed chunk is copied, and the early file goes."""
    out, (c0, _, c2) = written(tmp_path)
    out.assemble_early([c0])
    early = out.early
    assert early is not None and Path(early.path).exists()
    out.assemble([c0, c2])
    assert Path(out.predictions_uri).read_bytes() == LINES[(0, 1)] + LINES[(4, 4)]
    assert not Path(early.path).exists() and not Path(out.incremental_dir).exists()


def test_a_vanished_chunk_stops_early_assembly_and_the_end_says_so(tmp_path: Path) -> None:
    """An error while appending abandons the early file; the final assembly then reads the
    chunks itself, and a missing one is its error, as before."""
    out, (c0, c1, c2) = written(tmp_path)
    Path(c1.uri).unlink()
    out.assemble_early([c0, c1, c2])
    early = out.early
    assert early is not None and early.broken and not Path(early.path).exists()
    Path(c1.uri).write_bytes(LINES[(2, 3)])
    out.assemble([c0, c1, c2])  # copied whole, from every chunk
    assert Path(out.predictions_uri).read_bytes() == b"".join(LINES.values())
