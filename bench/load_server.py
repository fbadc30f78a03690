"""Load on one `batchpredict serve`: many concurrent creates, then many gets, then every job run.

    .venv/bin/python bench/load_server.py [--creates 200] [--gets 1000] [--concurrency 200]

Starts `python -m batchpredict serve` on a free loopback port with a fresh data directory and a
model registry naming the test double (no model: this measures the API, the store and the
scheduler), then with aiohttp:
  1. `--creates` create calls at once (at most `--concurrency` in flight),
  2. `--gets` get calls spread over the created jobs (same bound),
  3. lists every job across pages and waits until each has run,
and checks that every call was answered 200 and that no job was lost or left unfinished.
Prints one JSON line per phase with p50/p99/max latency in milliseconds; exits 1 on any loss.
Everything is bounded: each call times out after 60 s, the whole run after `--deadline` s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
MODELS = """
[[models]]
name = "bench-*"
backend = "python"
class = "tests.doubles.instant:InstantTestDouble"
options = { batch_size = 64 }
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(phase: str, latencies: list[float], ok: int, wall: float, **extra: Any) -> None:
    line = {
        "phase": phase,
        "calls": len(latencies),
        "ok": ok,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
        "wall_s": round(wall, 3),
        "calls_per_s": round(len(latencies) / wall, 1),
        **extra,
    }
    print(json.dumps(line), flush=True)


async def timed(session: aiohttp.ClientSession, gate: asyncio.Semaphore, method: str, url: str,
                body: Any = None) -> tuple[int, Any, float]:
    async with gate:
        started = time.perf_counter()
        async with session.request(method, url, json=body) as reply:
            data = await reply.json(content_type=None)
            return reply.status, data, time.perf_counter() - started


async def load(base: str, inputs: str, out: str, args: argparse.Namespace) -> bool:
    jobs_url = f"{base}/v1/projects/bench/locations/us-central1/batchPredictionJobs"
    gate = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    healthy = True
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # 1. creates, all at once
        def body(i: int) -> dict[str, Any]:
            return {
                "displayName": f"bench-{i}",
                "model": "bench-model",
                "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [inputs]}},
                "outputConfig": {"predictionsFormat": "jsonl",
                                 "gcsDestination": {"outputUriPrefix": f"{out}/{i}"}},
            }

        started = time.perf_counter()
        results = await asyncio.gather(
            *(timed(session, gate, "POST", jobs_url, body(i)) for i in range(args.creates))
        )
        wall = time.perf_counter() - started
        names = [data["name"] for status, data, _ in results if status == 200]
        report("create", [r[2] for r in results], len(names), wall,
               concurrency=args.concurrency)
        healthy &= len(names) == args.creates and len(set(names)) == args.creates

        # 2. gets, spread over the created jobs
        started = time.perf_counter()
        results = await asyncio.gather(
            *(timed(session, gate, "GET", f"{base}/v1/{names[i % len(names)]}")
              for i in range(args.gets))
        )
        wall = time.perf_counter() - started
        ok = sum(1 for status, data, _ in results if status == 200 and "state" in data)
        report("get", [r[2] for r in results], ok, wall, concurrency=args.concurrency)
        healthy &= ok == args.gets

        # 3. every job listed (across pages), until each has run to its end
        started = time.perf_counter()
        deadline = time.monotonic() + args.deadline
        page_latencies: list[float] = []
        sweeps = 0
        while True:
            sweeps += 1
            listed: dict[str, str] = {}
            token = ""
            while True:
                status, page, took = await timed(
                    session, gate, "GET", f"{jobs_url}?pageSize=100&pageToken={token}")
                page_latencies.append(took)
                healthy &= status == 200
                listed.update({j["name"]: j["state"] for j in page.get("batchPredictionJobs", [])})
                token = page.get("nextPageToken", "")
                if not token:
                    break
            finished = sum(1 for s in listed.values() if s.endswith(("SUCCEEDED", "FAILED",
                                                                     "CANCELLED")))
            if finished == len(names) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        succeeded = sum(1 for s in listed.values() if s == "JOB_STATE_SUCCEEDED")
        lost = sorted(set(names) - set(listed))
        report("list+drain", page_latencies, len(listed), time.perf_counter() - started,
               jobs_succeeded=succeeded, jobs_lost=len(lost), list_sweeps=sweeps)
        healthy &= not lost and succeeded == len(names)
    return healthy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--gets", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rows", type=int, default=10, help="Rows in each job's input.")
    parser.add_argument("--max-running-jobs", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=240.0, help="Seconds for everything.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bp-load-") as tmp:
        root = Path(tmp)
        (root / "models.toml").write_text(MODELS)
        inputs = root / "in.jsonl"
        with open(inputs, "w") as f:
            for i in range(args.rows):
                f.write(json.dumps({"key": i, "request": {"contents": [
                    {"role": "user", "parts": [{"text": f"row {i}"}]}]}}) + "\n")
        port = free_port()
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "BATCHPREDICT_MODELS_FILE": str(root / "models.toml"),
            "BATCHPREDICT_MAX_RUNNING_JOBS": str(args.max_running_jobs),
            "BATCHPREDICT_CHUNK_SECONDS": "0.5",
            "BATCHPREDICT_POLL_SECONDS": "0.2",
        }
        log = open(root / "server.log", "wb")  # closed below
        server = subprocess.Popen(
            [sys.executable, "-m", "batchpredict", "serve", "--port", str(port), "--data-dir",
             str(root / "data"), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            asyncio.run(wait_healthy(base, server))
            ok = asyncio.run(asyncio.wait_for(
                load(base, str(inputs), str(root / "out"), args), args.deadline + 60))
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
        if not ok:
            print((root / "server.log").read_text()[-3000:], file=sys.stderr)
        return 0 if ok else 1


async def wait_healthy(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as session:
        while True:
            if server.poll() is not None:
                raise SystemExit("the server exited while starting")
            try:
                async with session.get(f"{base}/healthz") as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 60 s")
            await asyncio.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
