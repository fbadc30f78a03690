"""Runner overhead: batchpredict's own work per row, against a bare loop that does only the
unavoidable part (read, parse, build the output line, serialise, write).

The model is `InstantTestDouble` (tests/doubles/instant.py), a test double that answers at once, so
what is measured is the runner: streaming input, validation, batching, ordering, chunked export,
checkpoints and final assembly. Each measurement runs in a fresh process so peak RSS is its own.

    python bench/runner_overhead.py                 # 10k, 100k, 1M rows
    python bench/runner_overhead.py --rows 10000    # one size

Prints one JSON line per measurement, then a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent

REQUEST = {
    "contents": [
        {
            "role": "user",
            "parts": [{"text": "Summarise the plot of Hamlet in two sentences, please."}],
        }
    ],
    "generationConfig": {"temperature": 0.2, "topP": 0.95, "maxOutputTokens": 128},
}
# The shape InstantTestDouble answers with, written out here rather than imported: the bare loop
# must not import batchpredict, or its peak memory would include ours.
RESPONSE = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "ok 14"}]},
            "finishReason": "STOP",
            "avgLogprobs": -0.5,
        }
    ],
    "modelVersion": "test-double",
    "usageMetadata": {"promptTokenCount": 14, "candidatesTokenCount": 2, "totalTokenCount": 16},
}


def make_input(path: Path, rows: int) -> None:
    with open(path, "wb") as f:
        for i in range(rows):
            f.write(orjson.dumps({"key": f"row-{i}", "request": REQUEST}) + b"\n")


def bare_loop(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for raw in fin:
            obj = orjson.loads(raw)
            line = {
                "key": obj["key"],
                "status": "",
                "processed_time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "request": obj["request"],
                "response": RESPONSE,
            }
            fout.write(orjson.dumps(line) + b"\n")


def runner(src: Path, out: Path, data: Path) -> dict[str, int]:
    from batchpredict.backends.registry import ModelRegistry
    from batchpredict.config import Settings
    from batchpredict.jobs import RunsIn
    from batchpredict.service import JobRequest, JobService, Scope

    sys.path.insert(0, str(REPO))  # the test double lives in tests/, outside the package
    from tests.doubles.instant import InstantTestDouble

    settings = Settings(data_dir=str(data), chunk_rows=10_000, chunk_seconds=10.0)
    service = JobService.open(settings, registry=ModelRegistry.serving(InstantTestDouble()))

    async def run() -> Any:
        job = await service.submit(Scope.local(), JobRequest(
            "bench", "test-double", [str(src)], str(out), runs_in=RunsIn.COMMAND))
        try:
            return await service.scheduler.run_here(job.id)
        finally:
            await service.close()

    done = asyncio.run(run())
    assert done.state.value == "JOB_STATE_SUCCEEDED", done.error
    return {"succeeded": done.counts.succeeded, "failed": done.counts.failed}


def measure(mode: str, rows: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        src = tmpdir / "in.jsonl"
        make_input(src, rows)
        started = time.perf_counter()
        cpu0 = time.process_time()
        extra: dict[str, object] = {}
        if mode == "bare":
            bare_loop(src, tmpdir / "out.jsonl")
        else:
            extra = runner(src, tmpdir / "out", tmpdir / "data")
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "bench": "runner_overhead",
        "mode": mode,
        "rows": rows,
        "seconds": round(wall, 3),
        "rows_per_s": round(rows / wall),
        "cpu_us_per_row": round(cpu / rows * 1e6, 2),
        "peak_rss_mb": round(peak_mb, 1),
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--mode", choices=["bare", "runner"])
    args = parser.parse_args()
    if args.mode:  # child: one measurement
        for rows in args.rows:
            print(json.dumps(measure(args.mode, rows)), flush=True)
        return
    results = []
    for rows in args.rows or [10_000, 100_000, 1_000_000]:
        for mode in ("bare", "runner"):
            proc = subprocess.run(
                [sys.executable, __file__, "--mode", mode, "--rows", str(rows)],
                capture_output=True, text=True, check=True, env={**os.environ},
            )
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(result), flush=True)
            results.append(result)
    print("\n| rows | bare loop rows/s | runner rows/s | runner / bare "
          "| bare peak MB | runner peak MB |")
    print("|---:|---:|---:|---:|---:|---:|")
    by = {(r["mode"], r["rows"]): r for r in results}
    for rows in sorted({r["rows"] for r in results}):
        b, r = by[("bare", rows)], by[("runner", rows)]
        print(
            f"| {rows:,} | {b['rows_per_s']:,} | {r['rows_per_s']:,} | "
            f"{r['rows_per_s'] / b['rows_per_s']:.2f} | {b['peak_rss_mb']} | {r['peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
