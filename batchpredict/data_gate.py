"""The data gate: how the job service touches storage on a project's behalf. One object per
service (`JobService.gate`), holding the projects' data policies (policy.py) and the limits on
storage work (bounded_io.py):

    create          resolve_job: output prefix writable by the project, inputs readable (each
                    wildcard's base and every file it matches), wildcards capped in count and time;
                    a BigQuery input table checked and pinned, an output dataset checked
    inputs:validate validate_inputs: the same checks, then at most N rows / bytes / seconds read
    uploads         upload_folder + check_upload_uri: into the project's own uploads area
    downloads       check_download: the job's output folder is readable by its project
    scheduler       recheck_job before a job runs (time passes in PENDING), and
                    scoped_backend: each row's fileData URIs checked against the job's project

All of it runs on the bounded `bounded_io.API_POOL` (request handlers) or `JOB_POOL` (jobs), never
on the default thread pool that get and list use.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from batchpredict import bounded_io, storage
from batchpredict.backends.base import Backend, generate_per_row
from batchpredict.bigquery import tables
from batchpredict.bounded_io import API_POOL, JOB_POOL, ReadStopped, run_io
from batchpredict.errors import (
    BatchPredictError,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
)
from batchpredict.policy import (
    MEDIA_SCOPE,
    DataPolicies,
    DataPolicy,
    MediaScope,
    area_name,
    canonical,
)

if TYPE_CHECKING:
    from batchpredict.jobs import Job
    from batchpredict.schema import GenerateContentRequest

__all__ = ["DataGate", "ProjectScopedBackend", "expand_inputs", "table_input"]


def expand_inputs(policy: DataPolicy, uris: list[str], max_files: int,
                  deadline: float) -> list[str]:
    """The files that input URIs name, each one the project may read, in order, canonical
    (local ones as real paths). A wildcard's base folder must be readable too."""
    if not uris:
        raise InvalidArgument("No input URI given. Pass at least one JSONL file or wildcard.")
    out: list[str] = []
    for uri in uris:
        storage.check_uri(uri, "input")
        scheme = storage.scheme_of(uri)
        if not bounded_io.has_wildcard(uri):
            canon = policy.check_read(uri)
            out.extend([canon] if scheme == "file" else storage.expand_inputs([canon]))
            continue
        if scheme == "file":
            path = uri[len("file://"):] if uri.startswith("file://") else uri
            base, segments = bounded_io.split_glob(os.path.abspath(os.path.expanduser(path)))
            real_base = policy.check_read_folder(base)
            matches = bounded_io.glob_local(real_base, segments, deadline, max_files, uri)
            if not matches:
                raise NotFound(
                    f"The wildcard {uri} matches no file. Check the path and pattern, and that "
                    "the files were uploaded."
                )
        else:
            policy.check_read_folder(bounded_io.split_glob(uri)[0])
            matches = storage.expand_inputs([uri])
        if len(matches) > max_files:
            raise InvalidArgument(
                f"The wildcard {uri} matches more than {max_files} files "
                "(BATCHPREDICT_MAX_INPUT_FILES). Use a narrower pattern or merge the files."
            )
        out.extend(policy.check_read(m) for m in matches)
    seen: set[str] = set()
    files = [u for u in out if not (u in seen or seen.add(u))]  # type: ignore[func-returns-value]
    if len(files) > max_files:
        raise InvalidArgument(
            f"The inputs name {len(files)} files; the limit is {max_files} "
            "(BATCHPREDICT_MAX_INPUT_FILES). Merge the files or raise the limit."
        )
    return files


def table_input(policy: DataPolicy, uris: list[str], pin: bool) -> list[str]:
    """A BigQuery input: one table the project may read, checked and pinned (`pin`) as it is
    now (bigquery/tables.py)."""
    if len(uris) != 1:
        raise InvalidArgument(
            "A BigQuery input is one table: give bq://PROJECT.DATASET.TABLE alone, without "
            "other inputs."
        )
    canon = policy.check_read(uris[0])
    return [tables.pin_input(canon) if pin else canon]


class DataGate:
    def __init__(self, settings: Any, restricted: bool) -> None:
        from batchpredict.media import MediaPolicy

        self.settings = settings
        self.policies = DataPolicies(settings, restricted)
        self.media = MediaPolicy.from_settings(settings)
        self.seconds = float(settings.storage_call_seconds)
        API_POOL.resize(int(settings.storage_threads))
        # a running job's driver plans, counts and commits on a few threads, and its in-process
        # workers read a range per lane (executors/)
        JOB_POOL.resize(8 * int(settings.max_running_jobs) + 8)

    def policy(self, project: str) -> DataPolicy:
        return self.policies.for_project(project)

    async def run(self, fn: Any, *args: Any) -> Any:
        """Blocking storage work of a request handler, on the bounded API pool."""
        return await run_io(fn, *args, pool=API_POOL)

    async def _bounded(self, what: str, fn: Any) -> Any:
        try:
            return await run_io(fn, pool=API_POOL, timeout=self.seconds + 5)
        except TimeoutError:
            raise DeadlineExceeded(
                f"{what} took longer than {self.seconds:g} seconds "
                "(BATCHPREDICT_STORAGE_CALL_SECONDS). Try again, or use fewer or narrower URIs."
            ) from None

    # -- create --------------------------------------------------------------------------------
    async def resolve_job(self, project: str, uris: list[str], prefix: str) -> list[str]:
        """At create: refuse an output prefix the project may not write (or that cannot be
        written) and inputs it may not read; the input files, canonical."""
        policy = self.policy(project)
        deadline = time.monotonic() + self.seconds
        max_files = int(self.settings.max_input_files)

        def work() -> list[str]:
            policy.check_write(prefix)
            if tables.is_table(prefix):  # the dataset exists; a named table does not yet
                tables.check_output(prefix)
            else:
                storage.check_output_writable(prefix)
            if any(map(tables.is_table, uris)):  # the table exists, its columns are accepted
                return table_input(policy, uris, pin=True)
            return expand_inputs(policy, uris, max_files, deadline)

        return await self._bounded("Checking the job's input and output URIs", work)  # type: ignore[no-any-return]

    # -- inputs:validate -----------------------------------------------------------------------
    async def validate_inputs(self, project: str, uris: list[str], max_line_bytes: int,
                              max_rows: int, line_format: str = "vertex") -> dict[str, Any]:
        """The validation report of inputs the project may read: at most `max_rows` rows,
        BATCHPREDICT_VALIDATE_MAX_BYTES bytes and BATCHPREDICT_STORAGE_CALL_SECONDS seconds
        (then `truncated`, and `stoppedBy` says which limit)."""
        from batchpredict.input import InputReport, check_stream

        policy = self.policy(project)
        deadline = time.monotonic() + self.seconds
        max_files = int(self.settings.max_input_files)
        max_bytes = int(self.settings.validate_max_bytes)

        def work() -> dict[str, Any]:
            files = expand_inputs(policy, uris, max_files, deadline)
            bounded_io.guard_reads(max(0.0, deadline - time.monotonic()), max_bytes)
            report, stopped = InputReport(), ""
            for uri in files:
                try:
                    with storage.open_read(uri) as f:
                        check_stream(f, uri, report, max_line_bytes, max_rows, line_format)
                except ReadStopped as stop:
                    report.truncated, stopped = True, stop.reason
                if report.truncated:
                    break
            body = report.to_api()
            if report.truncated:
                body["stoppedBy"] = stopped or "rows"
            return body

        return await self._bounded("Validating the inputs", work)  # type: ignore[no-any-return]

    # -- uploads and downloads -----------------------------------------------------------------
    def upload_folder(self, project: str) -> str:
        """The folder name of `project` under the uploads root (its own uploads area)."""
        self.policy(project)
        return area_name(project)

    def check_upload_uri(self, project: str, uri: str) -> None:
        area = self.policy(project).uploads_area
        if not canonical(uri)[1].startswith(area.rstrip("/") + "/"):
            raise Internal(f"An upload landed outside its project's area: {uri}.")

    def check_download(self, project: str, output_dir: str) -> None:
        """A job's output folder, before its files are served: readable by the job's project."""
        self.policy(project).check_read_folder(output_dir, what="output folder")

    # -- jobs ----------------------------------------------------------------------------------
    async def recheck_job(self, job: Job) -> BatchPredictError | None:
        """Before a job runs: its output prefix and input files still allowed (the refusal, or
        None). Its configuration or files may have changed while it waited."""
        policy = self.policy(job.project)

        def work() -> None:
            policy.check_write(job.output_prefix)
            for uri in job.checkpoint.inputs:
                policy.check_read(uri)
            if job.start_time is None and any(map(tables.is_table, job.checkpoint.inputs)):
                # a BigQuery input, pinned again as the job first starts (rows keep positions)
                job.checkpoint.inputs = table_input(policy, job.checkpoint.inputs, pin=True)

        try:
            await run_io(work, pool=JOB_POOL, timeout=self.seconds)
        except BatchPredictError as exc:
            return exc
        except TimeoutError:
            return DeadlineExceeded("Checking the job's input files took too long.")
        return None

    def scoped_backend(self, backend: Backend, project: str) -> Backend:
        return ProjectScopedBackend(backend, self.policy(project), self.media)


def _file_uris(request: GenerateContentRequest) -> list[str]:
    """The request's fileData URIs (on every row's path: plain loops, no lists built for a
    request without any)."""
    found: list[str] = []
    for content in request.contents:
        for part in content.parts:
            if part.file_data is not None:
                found.append(part.file_data.file_uri)
    if request.system_instruction is not None:
        for part in request.system_instruction.parts:
            if part.file_data is not None:
                found.append(part.file_data.file_uri)
    return found


class ProjectScopedBackend(Backend):
    """A job's backend, answering only rows whose fileData URIs the job's project may read
    (the others fail with PERMISSION_DENIED), with the project's policy in effect for the
    media that the backend fetches (media.py)."""

    kind = "project-scoped"

    def __init__(self, inner: Backend, policy: DataPolicy, media: Any) -> None:
        self.inner = inner
        self.scope = MediaScope(policy, media)
        self.batch_size = inner.batch_size
        self.max_concurrency = inner.max_concurrency
        self.dedupe = getattr(inner, "dedupe", True)

    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        uris = [_file_uris(r) for r in requests]
        refusals: list[BatchPredictError | None] = [None] * len(requests)
        if any(uris):
            refusals = await run_io(self._refusals, uris, pool=JOB_POOL)
        todo = [i for i, refused in enumerate(refusals) if refused is None]
        results: list[dict[str, Any] | BatchPredictError] = list(refusals)  # type: ignore[arg-type]
        if todo:
            token = MEDIA_SCOPE.set(self.scope)
            try:
                answers = await generate_per_row(self.inner, [requests[i] for i in todo])
            finally:
                MEDIA_SCOPE.reset(token)
            for i, answer in zip(todo, answers, strict=True):
                results[i] = answer
        return results

    def _refusals(self, uris: list[list[str]]) -> list[BatchPredictError | None]:
        out: list[BatchPredictError | None] = []
        for row in uris:
            try:
                for uri in row:
                    self.scope.policy.check_file_data(uri)
                out.append(None)
            except BatchPredictError as exc:
                out.append(exc)
        return out
