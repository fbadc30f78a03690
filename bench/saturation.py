"""Saturation: can batchpredict keep C requests in flight against a server that answers after L s?

The server is batchpredict's latency TEST DOUBLE (tests/doubles/openai_server.py, an
OpenAI-compatible server answering canned text after exactly L seconds), in its own process.
With C requests in flight the ideal is C / L rows per second; the aim is 95% of it.

Contenders, each in a fresh process, same server, same rows, same concurrency:
- reference: a bare asyncio + aiohttp loop with a semaphore (no job, no output): the ceiling this
  server and machine allow, to read the others against. Not a peer.
- batchpredict: a whole job (SQLite store, JSONL in, chunked predictions out) through `JobRunner`
  and the openai backend, built from a registry entry as `batchpredict run` builds it.
- peer `curator`: bespokelabs-curator's online mode (openai backend, `base_url` = the double),
  installed at bench time with pip into a temporary virtual environment (never committed).
  Its token counting uses tiktoken's cl100k_base, read from the copy bundled in litellm's wheel
  (this machine reaches no other host).
The OpenAI cookbook's `api_request_parallel_processor.py` is not run: it is published only on
GitHub, not on a package registry, and this machine reaches package registries only.

    python bench/saturation.py                               # 2000 rows, L=0.2 s, C=64, + curator
    python bench/saturation.py --rows 4000 --peers none
    python bench/saturation.py --peer-venv /tmp/curator-venv    # reuse (or keep) the peer's venv

Prints one JSON line per measurement: rows/s, ideal, achieved/ideal, client CPU ms per request,
and the server's CPU (to show the double was not the bottleneck). With N rows the best possible
is ceil(N / C) waves of L seconds (2000 rows, C=64: 32 waves, 97.7% of C / L), and the
double's own answers arrive a few ms after L, more on a busy machine: the reference line shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PEER_REQUIREMENT = "bespokelabs-curator==0.1.31"
MAX_TOKENS = 16


def _cpu_seconds() -> float:
    self_ = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prompt(i: int) -> str:
    return f"Summarise item {i} of the catalogue in one line."


# -- workers (run in their own process) -----------------------------------------------------------
def worker_batchpredict(url: str, rows: int, concurrency: int, workdir: Path) -> dict[str, Any]:
    import asyncio

    import orjson

    from batchpredict.backends.registry import ModelEntry, ModelRegistry
    from batchpredict.config import Settings
    from batchpredict.jobs import RunsIn
    from batchpredict.service import JobRequest, JobService, Scope

    src = workdir / "in.jsonl"
    with open(src, "wb") as f:
        for i in range(rows):
            f.write(orjson.dumps({"key": i, "request": {
                "contents": [{"role": "user", "parts": [{"text": prompt(i)}]}],
                "generationConfig": {"temperature": 0.2, "maxOutputTokens": MAX_TOKENS}}}) + b"\n")
    registry = ModelRegistry([ModelEntry("echo", "openai", {
        "base_url": url + "/v1", "concurrency": concurrency})])
    service = JobService.open(Settings(data_dir=str(workdir)), registry=registry)

    async def run() -> tuple[Any, float, float]:
        job = await service.submit(Scope.local(), JobRequest(
            "saturation", "echo", [str(src)], str(workdir / "out"), runs_in=RunsIn.COMMAND))
        await registry.backend_for("echo")  # started before the clock, as a server's would be
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        done = await service.scheduler.run_here(job.id)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        await service.close()
        return done, wall, cpu

    done, wall, cpu = asyncio.run(run())
    [predictions] = (workdir / "out").glob("prediction-model-*/predictions.jsonl")
    lines = sum(1 for _ in open(predictions, "rb"))
    return {"wall_s": wall, "cpu_s": cpu, "ok": done.counts.succeeded,
            "failed": done.counts.failed, "lines": lines, "state": done.state.value}


def worker_bare_loop(url: str, rows: int, concurrency: int) -> dict[str, Any]:
    """The floor: a plain asyncio + aiohttp loop with a semaphore, no job, no output."""
    import asyncio

    import aiohttp
    import orjson

    async def run() -> tuple[int, float, float]:
        slots = asyncio.Semaphore(concurrency)
        ok = 0
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency)
        ) as session:
            async def one(i: int) -> None:
                nonlocal ok
                body = orjson.dumps({"model": "echo", "max_tokens": MAX_TOKENS,
                                     "temperature": 0.2,
                                     "messages": [{"role": "user", "content": prompt(i)}]})
                async with slots, session.post(url + "/v1/chat/completions", data=body,
                                               headers={"Content-Type": "application/json"}) as r:
                    ok += bool(orjson.loads(await r.read())["choices"])

            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(rows)))
            return ok, time.perf_counter() - t0, _cpu_seconds() - cpu0

    ok, wall, cpu = asyncio.run(run())
    return {"wall_s": wall, "cpu_s": cpu, "ok": ok, "failed": rows - ok, "lines": 0}


CURATOR_WORKER = r'''
import json, resource, sys, time
def cpu():
    s, k = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + k.ru_utime + k.ru_stime
url, (rows, concurrency, max_tokens) = sys.argv[1], map(int, sys.argv[2:5])
from bespokelabs import curator
prompts = [f"Summarise item {i} of the catalogue in one line." for i in range(rows)]
llm = curator.LLM(model_name="echo", backend="openai",
                  generation_params={"max_tokens": max_tokens, "temperature": 0.2},
                  backend_params={"base_url": url + "/v1", "api_key": "not-needed",
                                  "max_concurrent_requests": concurrency,
                                  "max_requests_per_minute": 10_000_000,
                                  "max_tokens_per_minute": 1_000_000_000,
                                  "max_retries": 0, "require_all_responses": False})
c0, t0 = cpu(), time.perf_counter()
out = llm(prompts)
wall, used = time.perf_counter() - t0, cpu() - c0
dataset = getattr(out, "dataset", out)
n = len(dataset)
print("RESULT " + json.dumps({"wall_s": wall, "cpu_s": used, "ok": n, "failed": rows - n,
                              "lines": n}))
'''


def peer_venv(path: str | None) -> tuple[Path, bool]:
    """A virtual environment holding curator: `path` if it has it, else a fresh one (pip)."""
    if path and (Path(path) / "bin" / "python").exists():
        check = subprocess.run([f"{path}/bin/python", "-c", "import bespokelabs.curator"],
                               capture_output=True)
        if check.returncode == 0:
            return Path(path), False
    venv = Path(path) if path else Path(tempfile.mkdtemp(prefix="bench-peer-"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"# installing {PEER_REQUIREMENT} into {venv} (a minute or two)...", file=sys.stderr)
    subprocess.run([f"{venv}/bin/python", "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", PEER_REQUIREMENT], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return venv, path is None


def run_curator(venv: Path, url: str, rows: int, concurrency: int,
                workdir: Path) -> dict[str, Any]:
    tokenizers = next(venv.glob("lib/python*/site-packages/litellm/litellm_core_utils/tokenizers"))
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tokenizers), "TELEMETRY_ENABLED": "false",
           "CURATOR_DISABLE_RICH_DISPLAY": "1", "CURATOR_DISABLE_CACHE": "true",
           "CURATOR_CACHE_DIR": str(workdir / "curator-cache"),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "not-needed"}
    script = workdir / "curator_worker.py"
    script.write_text(CURATOR_WORKER)
    done = subprocess.run([f"{venv}/bin/python", str(script), url, str(rows), str(concurrency),
                           str(MAX_TOKENS)], capture_output=True, text=True, env=env,
                          cwd=workdir, timeout=900)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    raise RuntimeError(f"curator failed ({done.returncode}):\n{done.stderr[-3000:]}")


# -- driver -------------------------------------------------------------------------------------
def start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.openai_server", "--latency", str(latency)],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)["url"]


def measure(name: str, run: Any, server: subprocess.Popen[str], args: argparse.Namespace,
            ) -> dict[str, Any]:
    server_cpu0 = _proc_cpu(server.pid)
    result = run()
    server_cpu = _proc_cpu(server.pid) - server_cpu0
    ideal = args.concurrency / args.latency
    rate = args.rows / result["wall_s"]
    record = {
        "bench": "saturation", "contender": name, "rows": args.rows, "latency_s": args.latency,
        "concurrency": args.concurrency, "rows_per_s": round(rate, 1), "ideal_rows_per_s": ideal,
        "achieved_over_ideal": round(rate / ideal, 3), "wall_s": round(result["wall_s"], 3),
        "client_cpu_ms_per_request": round(1000 * result["cpu_s"] / args.rows, 3),
        "server_cpu_ms_per_request": round(1000 * server_cpu / args.rows, 3),
        "ok": result["ok"], "failed": result["failed"], "output_lines": result["lines"],
    }
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--peers", default="curator", help="curator or none")
    p.add_argument("--peer-venv", default=None, help="reuse/keep the peer's venv here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--url", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker == "batchpredict":
        result = worker_batchpredict(args.url, args.rows, args.concurrency, Path(args.workdir))
        print("RESULT " + json.dumps(result))
        return
    if args.worker == "bare":
        print("RESULT " + json.dumps(worker_bare_loop(args.url, args.rows, args.concurrency)))
        return

    server, url = start_server(args.latency)
    workdir = Path(tempfile.mkdtemp(prefix="bench-saturation-"))
    venv, remove_venv = None, False
    try:
        def run_worker(kind: str) -> dict[str, Any]:
            here = workdir / kind
            here.mkdir()
            done = subprocess.run(
                [sys.executable, __file__, "--worker", kind, "--url", url,
                 "--rows", str(args.rows), "--concurrency", str(args.concurrency),
                 "--workdir", str(here)],
                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                timeout=900,
            )
            for line in done.stdout.splitlines():
                if line.startswith("RESULT "):
                    return dict(json.loads(line[len("RESULT "):]))
            raise RuntimeError(f"{kind} worker failed:\n{done.stderr[-3000:]}")

        # The floor this server and machine allow, for reference (not a peer).
        measure("reference: bare asyncio+aiohttp loop", lambda: run_worker("bare"), server, args)
        measure("batchpredict", lambda: run_worker("batchpredict"), server, args)
        if args.peers == "curator":
            venv, remove_venv = peer_venv(args.peer_venv)
            here = workdir / "curator"
            here.mkdir()
            measure("curator " + PEER_REQUIREMENT.split("==")[1],
                    lambda: run_curator(venv, url, args.rows, args.concurrency, here),
                    server, args)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
        if remove_venv and venv is not None:
            shutil.rmtree(venv, ignore_errors=True)


if __name__ == "__main__":
    main()
