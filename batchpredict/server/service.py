"""What the REST methods do, apart from HTTP: create, get, list, cancel and delete a caller's jobs.

A `Scope` is where a request acts: `projects/{p}/locations/{l}` from its path, or, in express mode
(no project in the path), every project the caller may use, and its default project for creates.
A job outside the caller's scope does not exist for it: NotFound, never PermissionDenied, so a
caller cannot learn which job ids other projects hold.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from batchpredict.data_gate import DataGate
from batchpredict.errors import InvalidArgument, NotFound, PermissionDenied
from batchpredict.jobs import Job, JobState, format_time, utcnow
from batchpredict.scheduler import Scheduler
from batchpredict.server.auth import Caller
from batchpredict.server.filters import compile_filter
from batchpredict.server.job_spec import JobSpec
from batchpredict.store.base import JobStore

__all__ = ["DEFAULT_LOCATION", "JobService", "Scope", "parse_job_id"]

DEFAULT_LOCATION = "us-central1"
_JOB_ID = re.compile(r"[0-9]{1,18}")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Scope:
    caller: Caller
    #: From the path; None in express mode.
    project: str | None = None
    location: str | None = None

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


def parse_job_id(text: str) -> int:
    """A job id from a path segment: digits only (the SDK rejects other ids)."""
    if not _JOB_ID.fullmatch(text):  # ASCII only: "١٢٣".isdigit() is True
        raise InvalidArgument(
            f"{text!r} is not a valid BatchPredictionJob id: ids are numbers, as in "
            "projects/P/locations/L/batchPredictionJobs/123."
        )
    return int(text)


class JobService:
    def __init__(self, store: JobStore, registry: Any, scheduler: Scheduler,
                 gate: DataGate) -> None:
        self.store = store
        self.registry = registry
        self.scheduler = scheduler
        self.gate = gate  # security: every storage touch goes through the data policy

    def render(self, job: Job) -> dict[str, Any]:
        """The job's API JSON; a job running here shows its live row count in `progress`."""
        out = job.to_api()
        live = self.scheduler.progress.get(job.id)
        if live is not None and job.state == JobState.JOB_STATE_RUNNING:
            progress = out["progress"]
            progress["doneCount"] = str(max(live.done, job.counts.done))
            if live.total is not None:
                progress["totalCount"] = str(live.total)
        return out

    async def create(self, scope: Scope, spec: JobSpec) -> Job:
        scope.check_parent()
        self.registry.resolve(spec.model)  # 400 listing the available models
        uris, prefix = spec.inputs(), spec.output_prefix()
        project, location = scope.target
        # security: the project's data policy, on bounded threads (data_gate.py). A bad scheme,
        # bq://, a refused or missing URI, an unwritable folder: a 4xx now, not a FAILED job
        # later (the scheduler checks again before it runs: time passes in PENDING).
        inputs = await self.gate.resolve_job(project, uris, prefix)
        job = Job(
            display_name=spec.display_name,
            model=spec.model,
            input_uris=list(uris),
            output_prefix=prefix,
            project=project,
            location=location,
            labels=dict(spec.labels),
        )
        job.checkpoint.inputs = inputs
        job = await asyncio.to_thread(self.store.create, job)
        self.scheduler.wake()
        return job

    async def get(self, scope: Scope, job_id: int) -> Job:
        job = await asyncio.to_thread(self.store.get, job_id)
        if not scope.sees(job):
            raise NotFound(f"BatchPredictionJob {job_id} was not found.")
        return job

    async def list(
        self, scope: Scope, filter_text: str | None, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        """One page of jobs, newest first, and the token of the next page ("" at the end)."""
        scope.check_parent()
        matches = compile_filter(filter_text)
        if page_size < 0:
            raise InvalidArgument("pageSize must not be negative.")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = _read_page_token(page_token, filter_text) if page_token else None
        jobs = await asyncio.to_thread(self.store.list, scope.project)
        page: list[Job] = []
        more = False
        for job in jobs:
            if before is not None and job.id >= before:
                continue
            if not scope.sees(job) or not matches(job):
                continue
            if len(page) == size:
                more = True
                break
            page.append(job)
        token = _page_token(page[-1].id, filter_text) if more else ""
        return page, token

    async def cancel(self, scope: Scope, job_id: int) -> None:
        await self.get(scope, job_id)
        await self.scheduler.cancel(job_id)

    async def delete(self, scope: Scope, job_id: int) -> dict[str, Any]:
        """Delete a finished job; the reply is a done Operation, as Vertex's delete returns."""
        job = await self.get(scope, job_id)
        await asyncio.to_thread(self.store.delete, job_id)
        now = format_time(utcnow())
        return {
            "name": f"projects/{job.project}/locations/{job.location}/operations/"
                    f"{secrets.randbelow(9 * 10**18) + 10**18}",
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
                "genericMetadata": {"createTime": now, "updateTime": now},
            },
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }


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
