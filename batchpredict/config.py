"""Settings: where batchpredict keeps its data and how it runs jobs. Every default lives here, once.

`Settings` is what an app or a command is built with: each setting comes from a `BATCHPREDICT_*`
environment variable, else its default; the CLI's flags override both. `Settings.describe()` lists
them all (the README's table is checked against it by a test). Nothing reads the environment at
row time: the parts that need a setting are handed it when they are built.

`RunnerSettings` is the part of them one job's runner uses (`Settings.runner_settings()`), plus
two internal sizes that are not settings.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchpredict.errors import InvalidArgument

__all__ = ["DEFAULT_LOCATION", "DEFAULT_MODEL", "RunnerSettings", "Settings"]

#: The location of jobs created without one (Vertex's default region).
DEFAULT_LOCATION = "us-central1"
#: The model `batchpredict run` uses when none is named: the embedded one.
DEFAULT_MODEL = "smollm2-135m"


@dataclass
class RunnerSettings:
    """What one job's runner needs; the defaults of the matching `Settings` fields."""

    #: Write a chunk of output after this many rows...
    chunk_rows: int = 10_000
    #: ...or after this many seconds, whichever comes first.
    chunk_seconds: float = 10.0
    #: Longest input line accepted, in bytes; longer lines become error rows.
    max_line_bytes: int = 16 * 1024 * 1024
    #: A job still running this long after it started ends FAILED (24 h, as on Vertex).
    time_limit_seconds: float = 24 * 3600.0
    #: How often a running job checks for cancel and proves it is alive.
    poll_seconds: float = 1.0
    #: A runner silent this long is presumed dead; another may take its job.
    stale_after_seconds: float = 30.0
    #: How long a job waits out its job store, storage or disk being away (retrying with
    #: backoff) before it fails, resumable from its committed rows (outages.py).
    outage_deadline_seconds: float = 600.0
    #: Rows read from storage at a time (not a setting).
    read_batch_rows: int = 256
    #: Most rows between the reader and the chunk writer at once: memory stays flat.
    window_rows: int = 20_000


def _default_data_dir() -> str:
    return str(Path.home() / ".batchpredict")


@dataclass
class Settings:
    #: Job store (SQLite) and server state live here.
    data_dir: str = field(default_factory=_default_data_dir)
    #: Job store URL: empty for SQLite in data_dir, or postgresql://...
    store_url: str = ""
    #: Model registry file (TOML); empty for the built-in registry (the embedded model).
    models_file: str = ""
    #: Write a chunk of output after this many rows...
    chunk_rows: int = RunnerSettings.chunk_rows
    #: ...or after this many seconds, whichever comes first.
    chunk_seconds: float = RunnerSettings.chunk_seconds
    #: Longest input line accepted, in bytes; longer lines become error rows.
    max_line_bytes: int = RunnerSettings.max_line_bytes
    #: A job still running this long after it started ends FAILED (24 h, as on Vertex).
    time_limit_seconds: float = RunnerSettings.time_limit_seconds
    #: Jobs run at once by all the servers sharing the job store (claims are counted in the
    #: store); more wait in JOB_STATE_PENDING.
    max_running_jobs: int = 1
    #: Where a job's rows run: local (in the server's process), processes (worker processes on
    #: this machine) or ray (Ray actors; see BATCHPREDICT_RAY_ADDRESS).
    executor: str = "local"
    #: Workers per job: processes or Ray actors, each loading the model once (local: ranges run
    #: at once). 0: one per CPU for processes, as many as the Ray cluster fits for ray, 1 local.
    workers: int = 0
    #: Ray cluster to run on (ray://host:10001, or host:6379 from a cluster node); empty: a
    #: single-node cluster started on this machine for the first job that needs it.
    ray_address: str = ""
    #: Workers that have not started (loaded the model) after this many seconds fail the job.
    worker_start_seconds: float = 300.0
    #: How often a running job checks for cancel and the time limit, and the scheduler for work.
    poll_seconds: float = RunnerSettings.poll_seconds
    #: A runner silent this long is presumed dead; the server then resumes its job.
    stale_after_seconds: float = RunnerSettings.stale_after_seconds
    #: How long a running job waits out its job store, storage or disk being away before it
    #: fails; such a failure is resumable (`batchpredict jobs resume`, or the same `run`).
    outage_deadline_seconds: float = RunnerSettings.outage_deadline_seconds
    #: Access tokens file (TOML or JSON): token -> projects it may use ("*" for all). Without
    #: tokens (here or in BATCHPREDICT_TOKENS) the server answers loopback clients only.
    tokens_file: str = ""
    #: Access tokens inline: "TOKEN=PROJECT[,PROJECT...][;TOKEN=...]"; "*" allows every project.
    tokens: str = ""
    #: The project of jobs created without one in the path (express mode, `jobs create` with no
    #: --project) by a caller whose token allows every project, or when no tokens are configured.
    default_project: str = "default"
    #: fileData URIs a backend may fetch: comma-separated URI prefixes (gs://bucket/media/,
    #: s3://bucket/, /srv/media/ or file:///srv/media/). Empty: any gs:// or s3:// object, no
    #: local files.
    media_roots: str = ""
    #: Largest fileData object fetched for a backend, in bytes; larger ones fail their row (400).
    max_media_bytes: int = 20 * 1024 * 1024
    #: S3 endpoint for s3:// URIs (MinIO, moto, ...); empty: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL,
    #: else AWS. Read from the environment when a filesystem is made.
    s3_endpoint_url: str = ""
    #: Where files uploaded through the console (POST /batchpredict/v1/uploads) are stored: a
    #: folder, gs://bucket/prefix or s3://bucket/prefix. Empty: {data_dir}/uploads.
    uploads_root: str = ""
    # -- security: data policy and limits (see policy.py, data_gate.py, server/http_guard.py) --
    #: Data policy per project (TOML or JSON): [projects.NAME] read = [...], write = [...] URI
    #: prefixes. Empty: the [projects] table of the tokens file, if any. With tokens configured,
    #: a project reaches only its own areas and these prefixes.
    projects_file: str = ""
    #: Root of each project's default output area ({outputs_root}/{project}/): a folder,
    #: gs://bucket/prefix or s3://bucket/prefix. Empty: `outputs` beside the uploads root.
    outputs_root: str = ""
    #: Allow memory:// URIs as inputs and outputs (for tests; the server's own memory).
    allow_memory_uris: bool = False
    #: Host names the server answers besides loopback ones (comma-separated, e.g.
    #: "batch.example.com"); without tokens, any other Host header is refused (DNS rebinding).
    allowed_hosts: str = ""
    #: Largest request body of the JSON API, in bytes (413 beyond).
    max_request_bytes: int = 32 * 1024 * 1024
    #: Largest console upload (POST /batchpredict/v1/uploads), in bytes (413 beyond).
    max_upload_bytes: int = 1024 * 1024 * 1024
    #: Most files a job's input wildcards may match.
    max_input_files: int = 10_000
    #: Longest an API call may spend on storage (expanding wildcards, checking an output
    #: prefix, validating inputs); validation then reports what it checked (`truncated`).
    storage_call_seconds: float = 30.0
    #: Most bytes inputs:validate reads before it stops (`truncated`).
    validate_max_bytes: int = 256 * 1024 * 1024
    #: Threads for the storage work of API calls (apart from those that get and list jobs).
    storage_threads: int = 8
    #: Most jobs of one project running at once on this server; 0: no cap.
    max_running_jobs_per_project: int = 0

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env = os.environ.get(f"BATCHPREDICT_{f.name.upper()}")
            if env is not None and env != "":
                values[f.name] = _convert(f, env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str]]:
        """(environment variable, default) for every setting."""
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
            out.append((f"BATCHPREDICT_{f.name.upper()}", str(default)))
        return out

    def runner_settings(self) -> RunnerSettings:
        return RunnerSettings(
            chunk_rows=self.chunk_rows,
            chunk_seconds=self.chunk_seconds,
            max_line_bytes=self.max_line_bytes,
            time_limit_seconds=self.time_limit_seconds,
            poll_seconds=self.poll_seconds,
            stale_after_seconds=self.stale_after_seconds,
            outage_deadline_seconds=self.outage_deadline_seconds,
        )

    @property
    def sqlite_path(self) -> Path:
        return Path(self.data_dir).expanduser() / "jobs.sqlite3"

    @property
    def uploads_uri(self) -> str:
        """The uploads root as a URI or absolute path (uploads_root, else {data_dir}/uploads)."""
        return self.uploads_root or str(Path(self.data_dir).expanduser() / "uploads")

    @property
    def outputs_uri(self) -> str:
        """The outputs root: outputs_root, else `outputs` beside the uploads root."""
        if self.outputs_root:
            return self.outputs_root
        root = self.uploads_uri.rstrip("/")
        parent = root.rsplit("/", 1)[0] if "/" in root.split("://", 1)[-1] else root
        return f"{parent}/outputs"


def _convert(f: dataclasses.Field[Any], text: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        if text.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if text.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise InvalidArgument(
            f"BATCHPREDICT_{f.name.upper()}={text!r} is not true or false. Set it to true or false."
        )
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise InvalidArgument(
            f"BATCHPREDICT_{f.name.upper()}={text!r} is not a valid {kind}. Set it to a number."
        ) from None
    return text
