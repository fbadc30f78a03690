"""Scale-out: one job's rows on several workers (executors), against the bare loop.

Part 1, `throughput`: the runner-overhead job (bench/runner_overhead.py: the instant test
double, so only batchpredict's own work counts) with each executor, beside the bare
read-parse-write loop, each in a fresh process:

    bare                 single-threaded read, parse, build the output line, write
    local                the job in one process (today's default)
    processes x2         two worker processes, the driver beside them
    ray x2               two Ray actors on a single-node cluster started before the clock

Part 2, `latency`: a latency-bound job: the OpenAI-compatible test double
(tests/doubles/openai_server.py, in its own process) answers after L seconds; every worker
keeps C requests in flight (the registry entry's `concurrency`), so W workers should reach
W * C / L rows/s. Ray with 1 and with 2 actors.

    python bench/scale_out.py                       # both parts, the default sizes
    python bench/scale_out.py --part throughput --rows 1000000 --rounds 5
    python bench/scale_out.py --part latency --latency-rows 6400

Prints one JSON line per measurement, then markdown tables.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

import runner_overhead  # noqa: E402  (the same input and bare loop)


def _cpu() -> float:
    s, k = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + k.ru_utime + k.ru_stime


def run_job(src: Path, workdir: Path, executor: str, workers: int, registry: Any,
            model: str, chunk_rows: int) -> dict[str, Any]:
    """One whole job through the job service, on `executor`; the Ray cluster (if any) is
    started before the clock."""
    from batchpredict.config import Settings
    from batchpredict.jobs import RunsIn
    from batchpredict.service import JobRequest, JobService, Scope

    extra: dict[str, Any] = {}
    if executor == "ray":
        from batchpredict.executors.ray_actors import connect

        t0 = time.perf_counter()
        connect("")
        extra["ray_init_s"] = round(time.perf_counter() - t0, 2)
    settings = Settings(data_dir=str(workdir / "data"), chunk_rows=chunk_rows, chunk_seconds=10.0,
                        executor=executor, workers=workers)
    service = JobService.open(settings, registry=registry)

    first: list[float] = []

    def on_progress(p: Any) -> None:
        if p.done and not first:
            first.append(time.perf_counter())

    async def run() -> Any:
        job = await service.submit(Scope.local(), JobRequest(
            "bench", model, [str(src)], str(workdir / "out"), runs_in=RunsIn.COMMAND))
        try:
            return await service.scheduler.run_here(job.id, on_progress=on_progress)
        finally:
            await service.close()

    cpu0, t0 = _cpu(), time.perf_counter()
    done = asyncio.run(run())
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    assert done.state.value == "JOB_STATE_SUCCEEDED", done.error
    # start-up: claim, workers started (processes, actors: the backend loaded), first answers
    start = first[0] - t0 if first else 0.0
    return {"seconds": round(wall, 3), "start_s": round(start, 2), "cpu_s": round(cpu, 2),
            "succeeded": done.counts.succeeded, **extra}


def child_throughput(mode: str, rows: int, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        src = workdir / "in.jsonl"
        runner_overhead.make_input(src, rows)
        if mode == "bare":
            cpu0, t0 = _cpu(), time.perf_counter()
            runner_overhead.bare_loop(src, workdir / "out.jsonl")
            result: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 3),
                                      "cpu_s": round(_cpu() - cpu0, 2)}
        else:
            from batchpredict.backends.registry import ModelRegistry
            from tests.doubles.instant import InstantTestDouble

            registry = ModelRegistry.serving(InstantTestDouble())
            result = run_job(src, workdir, mode, workers, registry, "test-double", 10_000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"bench": "scale_out", "part": "throughput", "mode": mode, "workers": workers,
            "rows": rows, "rows_per_s": round(rows / result["seconds"]), **result,
            "driver_peak_mb": round(peak, 1), "worker_peak_mb": round(kids, 1)}


def child_latency(url: str, workers: int, rows: int, concurrency: int,
                  chunk_rows: int) -> dict[str, Any]:
    import orjson

    from batchpredict.backends.registry import ModelEntry, ModelRegistry

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        src = workdir / "in.jsonl"
        with open(src, "wb") as f:
            for i in range(rows):
                f.write(orjson.dumps({"key": i, "request": {
                    "contents": [{"role": "user", "parts": [{"text": f"item {i}"}]}],
                    "generationConfig": {"temperature": 0.2, "maxOutputTokens": 8}}}) + b"\n")
        registry = ModelRegistry([ModelEntry("echo", "openai", {
            "base_url": url + "/v1", "concurrency": concurrency}, num_cpus=0.5)])
        result = run_job(src, workdir, "ray", workers, registry, "echo", chunk_rows)
    return {"bench": "scale_out", "part": "latency", "mode": "ray", "workers": workers,
            "rows": rows, "concurrency_per_worker": concurrency,
            "rows_per_s": round(rows / result["seconds"], 1),
            "after_start_rows_per_s": round(rows / (result["seconds"] - result["start_s"]), 1),
            **result}


def in_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return dict(result)


MODES = (("bare", 1), ("local", 1), ("processes", 2), ("ray", 2))


def throughput(rows_list: list[int], rounds: int) -> None:
    """`rounds` rounds of every mode, one after another, so each executor's ratio is taken
    against the bare loop of its own round (a shared machine's speed drifts by tens of percent
    within minutes); the table gives the median round and the spread."""
    results = []
    for rows in rows_list:
        for number in range(rounds):
            for mode, workers in MODES:
                results.append({**in_child("throughput", mode, str(rows), str(workers)),
                                "round": number})
    print(f"\nMedian of {rounds} rounds (ratio: rows/s over the same round's bare loop)")
    print("| rows | executor | rows/s | / bare (median) | / bare (each round) | CPU s "
          "| driver peak MB | worker peak MB |")
    print("|---:|---|---:|---:|---|---:|---:|---:|")
    for rows in rows_list:
        mine = [r for r in results if r["rows"] == rows]
        bare = {r["round"]: r["rows_per_s"] for r in mine if r["mode"] == "bare"}
        for mode, workers in MODES:
            runs = sorted((r for r in mine if r["mode"] == mode),
                          key=lambda r: r["rows_per_s"] / bare[r["round"]])
            mid = runs[len(runs) // 2]
            ratios = ", ".join(f"{r['rows_per_s'] / bare[r['round']]:.2f}"
                               for r in sorted(runs, key=lambda r: r["round"]))
            name = mode if mode in ("bare", "local") else f"{mode} x{workers}"
            kids = mid["worker_peak_mb"] if mode == "processes" else ""
            print(f"| {rows:,} | {name} | {mid['rows_per_s']:,} | "
                  f"{mid['rows_per_s'] / bare[mid['round']]:.2f} | {ratios} | {mid['cpu_s']} | "
                  f"{mid['driver_peak_mb']} | {kids} |")


def latency(rows: int, latency_s: float, concurrency: int, chunk_rows: int) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.openai_server", "--latency", str(latency_s)],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        results = [in_child("latency", url, str(w), str(rows), str(concurrency), str(chunk_rows))
                   for w in (1, 2)]
    finally:
        server.terminate()
        server.wait(10)
    one = results[0]["rows_per_s"]
    print(f"\nL = {latency_s} s, C = {concurrency} per worker, {rows} rows, chunk_rows "
          f"{chunk_rows}")
    steady = results[0]["after_start_rows_per_s"]
    print("| Ray workers | rows/s (whole job) | vs 1 | start-up s | rows/s after start-up "
          "| vs 1 | ideal W*C/L |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ideal = r["workers"] * concurrency / latency_s
        print(f"| {r['workers']} | {r['rows_per_s']} | {r['rows_per_s'] / one:.2f}x | "
              f"{r['start_s']} | {r['after_start_rows_per_s']} | "
              f"{r['after_start_rows_per_s'] / steady:.2f}x | {ideal:g} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        if kind == "throughput":
            out = child_throughput(args[0], int(args[1]), int(args[2]))
        else:
            out = child_latency(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
        print(json.dumps(out), flush=True)
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["throughput", "latency", "both"], default="both")
    parser.add_argument("--rows", type=int, action="append")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-rows", type=int, default=6400)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-chunk-rows", type=int, default=200)
    args = parser.parse_args()
    if args.part in ("throughput", "both"):
        throughput(args.rows or [200_000, 1_000_000], args.rounds)
    if args.part in ("latency", "both"):
        latency(args.latency_rows, args.latency, args.concurrency, args.latency_chunk_rows)


if __name__ == "__main__":
    main()
