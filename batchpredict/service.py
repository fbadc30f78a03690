"""The one job service: every face (CLI, Vertex REST, console, the faces to come) goes through it.

    submit    validate, resolve the model, check inputs and output prefix, store PENDING
    get / list / cancel / delete   (a job's progress is its committed counts: `Job.counts`)
    resume    a job FAILED by its store, storage or disk back to RUNNING, from its chunks
    output    the one reader of a job's predictions (downloads, failed rows)
    validate_inputs / validate_upload / store_upload / defaults   what a create form needs
    files     the file store (uploads.FileStore): uploads and job output files, per project

A `Scope` is where a call acts: a `Caller` (the projects it may use) and, from a path, one project
and location. A job outside the caller's scope does not exist for it: NotFound, never
PermissionDenied, so a caller cannot learn which job ids other projects hold. Local commands act
with `Scope.local()`, which may use every project.

Blocking work (storage, the job store) runs in threads; these methods are async.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from batchpredict import bigquery, outages, storage, uploads
from batchpredict import input as input_files
from batchpredict.bigquery.publish import plan_output
from batchpredict.config import DEFAULT_LOCATION, Settings
from batchpredict.data_gate import DataGate
from batchpredict.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from batchpredict.jobs import Face, Job, JobState, LineFormat, RunsIn
from batchpredict.output import ChunkedOutput, OutputReader
from batchpredict.policy import area_name
from batchpredict.scheduler import Scheduler
from batchpredict.store.base import JobStore
from batchpredict.store.files import SQLFileTable

__all__ = ["Caller", "JobRequest", "JobService", "Scope", "parse_job_id"]

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Caller:
    """Who acts: the projects it may use (None: every project) and where its jobs go by default."""

    projects: frozenset[str] | None
    default_project: str

    def may_use(self, project: str) -> bool:
        return self.projects is None or project in self.projects


@dataclass(frozen=True)
class Scope:
    caller: Caller
    #: From the path; None in express mode.
    project: str | None = None
    location: str | None = None

    @classmethod
    def local(cls, project: str = "local") -> Scope:
        """A command on this machine: every project, new jobs in `project`."""
        return cls(Caller(None, project))

    @property
    def target(self) -> tuple[str, str]:
        """(project, location) of a job created here: express mode uses the caller's default."""
        return self.project or self.caller.default_project, self.location or DEFAULT_LOCATION

    def sees(self, job: Job) -> bool:
        if not self.caller.may_use(job.project):
            return False
        if self.project is None:
            return True
        return job.project == self.project and job.location == self.location

    def check_parent(self) -> None:
        """Creating or listing under a project the caller may not use."""
        if self.project is not None and not self.caller.may_use(self.project):
            raise PermissionDenied(
                f"Permission denied on resource project {self.project} (or it may not exist). "
                "Use a token that allows this project."
            )


@dataclass
class JobRequest:
    """A job as a face asks for it, before the service checks it."""

    display_name: str
    model: str
    input_uris: list[str]
    output_prefix: str
    labels: dict[str, str] = field(default_factory=dict)
    runs_in: RunsIn = RunsIn.SCHEDULER
    #: A command's key for finding its own unfinished job again (`batchpredict run` resumes).
    fingerprint: str | None = None
    #: The API it comes through, the shape of its lines, and what only that face reads.
    face: Face = Face.VERTEX
    #: The input lines' format; None: detected from the first line at submit.
    line_format: LineFormat | None = LineFormat.VERTEX
    face_info: dict[str, Any] = field(default_factory=dict)


def parse_job_id(text: str) -> int:
    """A job id from a path segment or a command line: ASCII digits only."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise InvalidArgument(
            f"{text!r} is not a valid BatchPredictionJob id: ids are numbers, as in "
            "projects/P/locations/L/batchPredictionJobs/123."
        )
    return int(text)


class JobService:
    def __init__(
        self, store: JobStore, registry: Any, scheduler: Scheduler, settings: Settings,
        gate: DataGate | None = None,
    ) -> None:
        """`gate`: the projects' data policies; by default the open one of a single trusted
        user (no tokens: a local command, a loopback server)."""
        self.store = store
        self.registry = registry
        self.scheduler = scheduler
        self.settings = settings
        #: every storage touch on a project's behalf goes through its data policy
        self.gate = gate if gate is not None else DataGate(settings, restricted=False)
        scheduler.gate = self.gate
        #: Files per project: uploads and job output files (a table of the job store).
        self.files = uploads.FileStore(
            store if isinstance(store, SQLFileTable) else None, settings
        )
        outages.quiet_client_loggers()  # storage clients' tracebacks never reach the user

    @classmethod
    def open(cls, settings: Settings, store: JobStore | None = None, registry: Any = None,
             restricted: bool = False) -> JobService:
        """The service with its store, model registry, scheduler and data gate, from `settings`
        unless given; `restricted`: tokens are configured, so each project reaches only what
        its policy grants. The caller closes it (`close`) when done."""
        from batchpredict.backends.registry import ModelRegistry
        from batchpredict.store import open_store

        store = store if store is not None else open_store(settings)
        registry = registry if registry is not None else ModelRegistry.from_settings(settings)
        return cls(store, registry, Scheduler(store, registry, settings), settings,
                   DataGate(settings, restricted=restricted))

    async def close(self, store: bool = True) -> None:
        """Stop the scheduler, release the backends, and close the store (unless `store` is
        False: a store handed in by the caller stays open)."""
        await self.scheduler.stop()
        await self.registry.close()
        if store and hasattr(self.store, "close"):
            self.store.close()

    # -- jobs -----------------------------------------------------------------------------
    async def submit(self, scope: Scope, req: JobRequest) -> Job:
        """Check a job and store it PENDING. A bad model or spec is a 400; a missing input a 404;
        an output prefix that cannot be written a 4xx: no job is created for any of them."""
        scope.check_parent()
        self.registry.resolve(req.model)  # 400 listing the available models
        uris, prefix = list(req.input_uris), req.output_prefix
        project, location = scope.target
        # the project's data policy (403), then the prefix probed and the inputs expanded
        # (404 naming a missing one), on bounded threads: a 4xx now, not a FAILED job later
        inputs = await self.gate.resolve_job(project, uris, prefix)
        job = Job(
            display_name=req.display_name,
            model=req.model,
            input_uris=uris,
            output_prefix=prefix,
            project=project,
            location=location,
            labels=dict(req.labels),
            runs_in=req.runs_in,
            fingerprint=req.fingerprint,
            face=req.face,
            line_format=req.line_format or LineFormat(
                await self.gate.run(input_files.detect_line_format, inputs)),
            face_info=dict(req.face_info),
        )
        job.checkpoint.inputs = inputs
        if bigquery.is_table(prefix) or any(map(bigquery.is_table, uris)):  # its output table
            plan_output(job, storage.join(self.settings.outputs_uri, area_name(project)))
        job = await asyncio.to_thread(self.store.create, job)
        if job.runs_in == RunsIn.SCHEDULER:
            self.scheduler.wake()
        return job

    async def find_resumable(self, fingerprint: str) -> Job | None:
        """A command's unfinished job with this fingerprint, or its resumable FAILED one."""
        return await asyncio.to_thread(self.store.find_by_fingerprint, fingerprint)

    async def resume(self, scope: Scope, job_id: int) -> Job:
        """Take a job that FAILED because of its job store, storage or disk (`Job.resumable`)
        back to RUNNING: it runs on from its committed chunks, which are never sent to the model
        again. A server's scheduler picks it up; a command's job runs where it is resumed."""
        job = await self.get(scope, job_id)
        if not job.resumable:
            raise FailedPrecondition(_not_resumable(job))
        job = await asyncio.to_thread(self.store.transition, job_id, JobState.JOB_STATE_RUNNING,
                                      _resumed)
        if job.runs_in == RunsIn.SCHEDULER:
            self.scheduler.wake()
        return job

    async def get(self, scope: Scope, job_id: int) -> Job:
        job = await asyncio.to_thread(self.store.get, job_id)
        if not scope.sees(job):
            raise NotFound(f"BatchPredictionJob {job_id} was not found.")
        return job

    async def list(
        self,
        scope: Scope,
        matches: Callable[[Job], bool] | None = None,
        page_size: int = 0,
        page_token: str = "",
        filter_text: str | None = None,
        below: int | None = None,
    ) -> tuple[list[Job], str]:
        """One page of jobs, newest first, and the token of the next page ("" at the end).
        `filter_text` is what `matches` was compiled from: a page token is only good for it.
        `below`: start after the job with this id (a cursor, as OpenAI's `after`)."""
        scope.check_parent()
        if page_size < 0:
            raise InvalidArgument("pageSize must not be negative.")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = _read_page_token(page_token, filter_text) if page_token else below
        caller = scope.caller
        projects = ([scope.project] if scope.project is not None
                    else None if caller.projects is None else sorted(caller.projects))
        location = scope.location if scope.project is not None else None
        #: states the filter requires (state="X" at its top level): the indexed column
        states = getattr(matches, "states", None)
        page: list[Job] = []
        more = False
        batch = size + 1
        while True:  # keyset pages from the store; a selective filter may take several
            jobs = await asyncio.to_thread(
                self.store.page, batch, before, projects, location, states
            )
            for job in jobs:
                if not scope.sees(job) or (matches is not None and not matches(job)):
                    continue
                if len(page) == size:
                    more = True
                    break
                page.append(job)
            if more or len(jobs) < batch:
                break
            before, batch = jobs[-1].id, min(batch * 4, 5000)
        token = _page_token(page[-1].id, filter_text) if more else ""
        return page, token

    async def cancel(self, scope: Scope, job_id: int) -> Job:
        await self.get(scope, job_id)
        return await self.scheduler.cancel(job_id)

    async def delete(self, scope: Scope, job_id: int) -> Job:
        """Delete a finished job (its output stays); the job as it was."""
        job = await self.get(scope, job_id)
        await asyncio.to_thread(self.store.delete, job_id)
        return job

    async def committed_rows(self, job: Job) -> int:
        """Rows of a job durably written (its chunk objects are the truth: a kill can come
        between a chunk and its commit in the store)."""
        if not job.output_dir:
            return job.counts.done
        out = ChunkedOutput(job.output_dir)
        return max(job.counts.done, await asyncio.to_thread(out.committed_count))

    async def output(self, scope: Scope, job_id: int) -> tuple[Job, OutputReader]:
        """A job and the reader of its output so far (its folder readable by its project)."""
        job = await self.get(scope, job_id)
        if job.output_dir:
            self.gate.check_download(job.project, job.output_dir)
        return job, OutputReader(job.output_dir, job.line_format)

    def output_prefix_for(self, scope: Scope) -> str:
        """Where a job made by the OpenAI or Gemini face writes (their APIs name no output):
        `{outputs root}/{project}/batches`, in the project's own output area."""
        return storage.join(self.settings.outputs_uri, area_name(scope.target[0]), "batches")

    # -- what a create form needs ---------------------------------------------------------
    async def defaults(self, scope: Scope) -> dict[str, Any]:
        """The caller's project and location, where uploads go, a suggested output prefix, and
        the projects it may pick (for a caller allowed every project: those that have jobs)."""
        root = self.settings.uploads_uri.rstrip("/")
        caller = scope.caller
        projects = caller.projects
        if projects is None:
            have = await asyncio.to_thread(self.store.projects)
            projects = frozenset({caller.default_project, *have})
        return {
            "project": caller.default_project,
            "location": DEFAULT_LOCATION,
            "uploadsRoot": root,
            "outputUriPrefix": storage.join(self.settings.outputs_uri,
                                            self.gate.upload_folder(caller.default_project)),
            "projects": sorted(projects),
            "allProjects": caller.projects is None,
        }

    async def validate_inputs(
        self, scope: Scope, uris: builtins.list[str], max_rows: int, project: str | None = None,
        line_format: LineFormat = LineFormat.VERTEX,
    ) -> dict[str, Any]:
        """Check the files input URIs name (wildcards too) line by line, as the runner reads,
        under `project`'s data policy (default: the caller's default project); the report."""
        project = project or scope.caller.default_project
        Scope(scope.caller, project, DEFAULT_LOCATION).check_parent()
        limit = self.settings.max_line_bytes
        return await self.gate.validate_inputs(  # type: ignore[no-any-return]
            project, uris, limit, max_rows, line_format)

    async def validate_upload(
        self, scope: Scope, src: IO[bytes], file_name: str | None
    ) -> input_files.InputReport:
        name = uploads.safe_file_name(file_name)
        limit = self.settings.max_line_bytes
        report = await self.gate.run(
            input_files.check_stream, src, name, input_files.InputReport(), limit
        )
        input_files.require_rows(report, name)
        return report  # type: ignore[no-any-return]

    async def store_upload(
        self, scope: Scope, src: IO[bytes], file_name: str | None, allow_invalid: bool
    ) -> tuple[str, input_files.InputReport]:
        """Check an uploaded JSONL file and store it in the caller's file store; its URI."""
        report = await self.validate_upload(scope, src, file_name)
        if report.invalid and not allow_invalid:
            raise InvalidArgument(report.summary())
        stored = await self.files.upload(Scope(scope.caller), src, file_name, "batch")
        self.gate.check_upload_uri(scope.caller.default_project, stored.uri)
        return stored.uri, report


def _resumed(job: Job) -> None:
    if not (job.error or {}).get("resumable"):  # it was resumed a moment ago
        raise FailedPrecondition(f"Job {job.id} was resumed already; it is running again.")
    job.owner = job.heartbeat = job.end_time = job.error = None
    job.incomplete = 0


def _not_resumable(job: Job) -> str:
    if job.state != JobState.JOB_STATE_FAILED:
        return (f"Job {job.id} is {job.state.short}; only a job that failed because of its job "
                "store, storage or disk can be resumed.")
    why = (job.error or {}).get("message", "")
    return (f"Job {job.id} failed because of its input, model or limits, not its storage "
            f"({why}): it would fail the same way again. Fix that and create a new job.")


def _filter_hash(filter_text: str | None) -> str:
    return hashlib.sha256((filter_text or "").encode()).hexdigest()[:12]


def _page_token(last_id: int, filter_text: str | None) -> str:
    raw = orjson.dumps({"before": last_id, "filter": _filter_hash(filter_text)})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_page_token(token: str, filter_text: str | None) -> int:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        before, fhash = int(data["before"]), data["filter"]
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
        raise InvalidArgument(
            "pageToken is not valid: pass the nextPageToken of the previous list call unchanged."
        ) from None
    if fhash != _filter_hash(filter_text):
        raise InvalidArgument(
            "pageToken belongs to a list call with another filter: keep the filter unchanged "
            "while paging."
        )
    return before
