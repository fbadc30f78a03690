"""A batch job as the domain knows it: its states, the allowed transitions, its counts.

A `Job` is what the job store keeps and what every face reads. It knows states and counts, not
any API's JSON: the Vertex rendering lives in the Vertex face (`server/vertex/resource.py`), and
the CLI prints from the `Job` itself. Also here: which state may follow which
(`ALLOWED_TRANSITIONS`, enforced by the store's one transition method), the completion stats and
token usage of its committed rows, the runner's checkpoint, where a job runs (`RunsIn`), and a
bounded history of its progress (`Job.record_progress`) that the console draws charts from.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "ALLOWED_TRANSITIONS",
    "MAX_PARTIAL_FAILURES",
    "PROGRESS_HISTORY_MAX",
    "PROGRESS_HISTORY_STEP",
    "TERMINAL_STATES",
    "Checkpoint",
    "Face",
    "Job",
    "JobState",
    "LineFormat",
    "RowCounts",
    "RunsIn",
    "format_time",
    "owner_id",
    "parse_time",
    "transition_allowed",
    "utcnow",
]


class JobState(StrEnum):
    JOB_STATE_UNSPECIFIED = "JOB_STATE_UNSPECIFIED"
    JOB_STATE_QUEUED = "JOB_STATE_QUEUED"
    JOB_STATE_PENDING = "JOB_STATE_PENDING"
    JOB_STATE_RUNNING = "JOB_STATE_RUNNING"
    JOB_STATE_SUCCEEDED = "JOB_STATE_SUCCEEDED"
    JOB_STATE_FAILED = "JOB_STATE_FAILED"
    JOB_STATE_CANCELLING = "JOB_STATE_CANCELLING"
    JOB_STATE_CANCELLED = "JOB_STATE_CANCELLED"
    JOB_STATE_PAUSED = "JOB_STATE_PAUSED"
    JOB_STATE_EXPIRED = "JOB_STATE_EXPIRED"
    JOB_STATE_UPDATING = "JOB_STATE_UPDATING"
    JOB_STATE_PARTIALLY_SUCCEEDED = "JOB_STATE_PARTIALLY_SUCCEEDED"

    @property
    def short(self) -> str:
        """'RUNNING' for JOB_STATE_RUNNING: what tables show."""
        return self.value.removeprefix("JOB_STATE_")

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


S = JobState
TERMINAL_STATES = frozenset({S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED})

#: Every state change goes through the store's `transition`, which refuses pairs not listed here.
#: RUNNING -> RUNNING is a resume (a new runner takes over after a crash or Ctrl-C).
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.JOB_STATE_PENDING: frozenset(
        {S.JOB_STATE_RUNNING, S.JOB_STATE_CANCELLED, S.JOB_STATE_FAILED}
    ),
    S.JOB_STATE_RUNNING: frozenset(
        {
            S.JOB_STATE_RUNNING,
            S.JOB_STATE_SUCCEEDED,
            S.JOB_STATE_FAILED,
            S.JOB_STATE_CANCELLING,
        }
    ),
    S.JOB_STATE_CANCELLING: frozenset({S.JOB_STATE_CANCELLED}),
    S.JOB_STATE_SUCCEEDED: frozenset(),
    # A resume: only for a job that failed because of its store, storage or disk, not its
    # input (`Job.resumable`; `transition_allowed` checks it).
    S.JOB_STATE_FAILED: frozenset({S.JOB_STATE_RUNNING}),
    S.JOB_STATE_CANCELLED: frozenset(),
}


def transition_allowed(job: Job, to: JobState) -> bool:
    """Whether `job` may become `to`: the pair is in ALLOWED_TRANSITIONS, and a FAILED job
    runs again only when its failure is resumable."""
    if to not in ALLOWED_TRANSITIONS.get(job.state, frozenset()):
        return False
    return job.state != S.JOB_STATE_FAILED or job.resumable


#: At most this many progress samples are kept with a job (a few kB in its record) ...
PROGRESS_HISTORY_MAX = 200
#: ... at most one per this many seconds (doubled each time a full history is thinned).
PROGRESS_HISTORY_STEP = 2.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(t: datetime | None) -> str | None:
    """RFC 3339 with microseconds and Z, as Vertex writes timestamps."""
    if t is None:
        return None
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def owner_id() -> str:
    """Who runs a job: host and pid, so a later process can tell a dead runner from a live one."""
    return f"{socket.gethostname()}:{os.getpid()}"


_TIMES = ("create_time", "start_time", "end_time", "update_time", "heartbeat", "waiting_since")

#: Vertex's partialFailures never exceeds 20 entries.
MAX_PARTIAL_FAILURES = 20


class RunsIn(StrEnum):
    """Who runs a job. Every job is submitted through the one job service; this says which
    scheduler may then start it."""

    #: Any server's scheduler sharing the store (jobs created through an API).
    SCHEDULER = "scheduler"
    #: Only the command that created it (`batchpredict run`), which runs it here and now and
    #: resumes it when run again; a server sharing the store leaves it alone.
    COMMAND = "command"


class Face(StrEnum):
    """The API a job was created through; each face lists and renders its own jobs, the console
    and `jobs list` show them all."""

    VERTEX = "vertex"
    OPENAI = "openai"
    GEMINI = "gemini"
    CLI = "cli"


class LineFormat(StrEnum):
    """The shape of a job's input and output lines (`formats/`): one runner, one chunk protocol,
    only the line codec differs."""

    #: `{"request": GenerateContentRequest, ...}` in; `{..., status, processed_time, request,
    #: response}` out, as Vertex writes.
    VERTEX = "vertex"
    #: OpenAI Batch API: `{custom_id, method, url, body}` in; `{id, custom_id, response, error}`.
    OPENAI = "openai"
    #: Gemini Developer API batch files: `{key, request}` in; `{key, response}` or `{key, error}`.
    GEMINI = "gemini"


@dataclass
class RowCounts:
    """Counts over committed output lines. Tokens are summed over successful rows only."""

    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    candidates_tokens: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.candidates_tokens

    def add(self, other: RowCounts) -> None:
        self.succeeded += other.succeeded
        self.failed += other.failed
        self.prompt_tokens += other.prompt_tokens
        self.candidates_tokens += other.candidates_tokens


@dataclass
class Checkpoint:
    """What a runner needs to resume: the resolved input files and the rows already committed."""

    inputs: list[str] = field(default_factory=list)
    committed_rows: int = 0
    #: "running" while rows flow; "assembling" once every chunk is written and predictions.jsonl
    #: is being put together (a crash then only redoes the assembly).
    phase: str = "running"
    #: Why the rows stopped, once assembling (a `runner.StopReason` value): a runner that takes
    #: the job over mid-assembly ends it the same way.
    stop_reason: str = ""


@dataclass
class Job:
    display_name: str
    model: str
    input_uris: list[str]
    output_prefix: str
    project: str = "local"
    location: str = "us-central1"
    labels: dict[str, str] = field(default_factory=dict)
    id: int = 0
    state: JobState = JobState.JOB_STATE_PENDING
    error: dict[str, Any] | None = None
    create_time: datetime = field(default_factory=utcnow)
    start_time: datetime | None = None
    end_time: datetime | None = None
    update_time: datetime = field(default_factory=utcnow)
    output_dir: str | None = None
    counts: RowCounts = field(default_factory=RowCounts)
    incomplete: int = 0
    total_rows: int | None = None
    model_version: str | None = None
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    #: host:pid of the process running the job, and when it last said it was alive.
    owner: str | None = None
    heartbeat: datetime | None = None
    runs_in: RunsIn = RunsIn.SCHEDULER
    #: The CLI's `run` finds an unfinished job with the same inputs, output and model by this.
    fingerprint: str | None = None
    #: Errors of up to `MAX_PARTIAL_FAILURES` committed failed rows (google.rpc.Status).
    partial_failures: list[dict[str, Any]] = field(default_factory=list)
    #: [unix seconds, done rows, total tokens] of committed rows, oldest first (record_progress).
    progress_history: list[list[float]] = field(default_factory=list)
    #: The API the job came through, the shape of its lines, and what only its face reads
    #: (OpenAI: input_file_id, endpoint, completion_window; Gemini: whether requests were inlined).
    face: Face = Face.VERTEX
    line_format: LineFormat = LineFormat.VERTEX
    face_info: dict[str, Any] = field(default_factory=dict)
    #: A BigQuery output's table, bq://PROJECT.DATASET.TABLE, named at create; its chunks are
    #: then written to `output_dir`, a staging folder (bigquery/publish.py).
    output_table: str | None = None
    #: While the job waits out an outage (outages.py): what it waits for (a URI, a folder, the
    #: job store), since when, and the last error, in one line. None while nothing is away.
    waiting_for: str | None = None
    waiting_since: datetime | None = None
    waiting_reason: str | None = None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/batchPredictionJobs/{self.id}"

    @property
    def waiting_text(self) -> str | None:
        """'waiting for gs://b/out/... since 12:03:04' (local time) while it waits, else None."""
        if not self.waiting_for:
            return None
        since = f" since {self.waiting_since.astimezone():%H:%M:%S}" if self.waiting_since else ""
        return f"waiting for {self.waiting_for}{since}"

    @property
    def resumable(self) -> bool:
        """FAILED because of its store, storage or disk (its `error` says `resumable`): it can
        run again from its committed rows."""
        return self.state == JobState.JOB_STATE_FAILED and bool((self.error or {}).get("resumable"))

    def record_progress(self, now: datetime) -> None:
        """Add a sample of the committed counts to `progress_history`, keeping it bounded: the
        newest sample is replaced until it is a step after the one before it, and a full history
        drops every other sample (the first and the newest stay), so a long run keeps an even,
        coarser record."""
        history = self.progress_history
        t = round(now.timestamp(), 3)
        if not history and self.start_time is not None:
            history.append([round(self.start_time.timestamp(), 3), 0, 0])
        sample = [t, self.counts.done, self.counts.total_tokens]
        step = PROGRESS_HISTORY_STEP
        if len(history) >= 5:
            # As sparse as the oldest samples (thinned the most), so the history stays even. The
            # gap after the start, and one pause (a resumed run), do not count.
            gaps = (history[2][0] - history[1][0], history[3][0] - history[2][0])
            step = max(step, min(gaps))
        if len(history) >= 2 and history[-1][0] - history[-2][0] < step:
            history[-1] = sample
        else:
            history.append(sample)
        if len(history) > PROGRESS_HISTORY_MAX:
            kept = history[::2]
            if kept[-1] is not history[-1]:
                kept.append(history[-1])
            history[:] = kept

    # -- storage form -----------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        rec = dataclasses.asdict(self)
        rec["state"] = self.state.value
        rec["runs_in"] = self.runs_in.value
        rec["face"], rec["line_format"] = self.face.value, self.line_format.value
        for key in _TIMES:
            rec[key] = format_time(getattr(self, key))
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Job:
        rec = dict(rec)
        rec["state"] = JobState(rec["state"])
        # records written before `runs_in` existed: a fingerprint meant a command's job
        default = RunsIn.COMMAND if rec.get("fingerprint") else RunsIn.SCHEDULER
        rec["runs_in"] = RunsIn(rec.get("runs_in") or default)
        rec["face"] = Face(rec.get("face") or Face.VERTEX)
        rec["line_format"] = LineFormat(rec.get("line_format") or LineFormat.VERTEX)
        rec["counts"] = RowCounts(**rec["counts"])
        rec["checkpoint"] = Checkpoint(**rec["checkpoint"])
        for key in _TIMES:
            rec[key] = parse_time(rec.get(key))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in known})
