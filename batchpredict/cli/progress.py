"""What commands print about jobs, from the domain `Job`: the progress bar of `run` and
`jobs wait`, the summary of a finished run, one job, and a table of jobs."""

from __future__ import annotations

import time

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from batchpredict.cli.common import err, out
from batchpredict.jobs import Job, JobState, format_time
from batchpredict.runner import Progress as RunProgress

__all__ = ["ProgressBar", "print_job", "print_jobs_table", "print_summary", "state_text"]

_STATE_COLOURS = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "CANCELLING": "yellow",
    "RUNNING": "cyan",
    "PENDING": "blue",
}


def state_text(state: JobState) -> str:
    return f"[{_STATE_COLOURS.get(state.short, 'white')}]{state.short}[/]"


class ProgressBar:
    """rows, rows/s, tokens/s and ETA, for `run` and `jobs wait`; rates count the rows done
    since the bar appeared."""

    def __init__(self, quiet: bool, label: str = "predict") -> None:
        self.quiet = quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f}/{task.fields[total_text]} rows"),
            TextColumn("{task.fields[rate]} rows/s"),
            TextColumn("{task.fields[tps]} tok/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err,
            disable=quiet,
        )
        self.default_label = label
        self.task = self.progress.add_task(label, total=None, total_text="?", rate="-", tps="-")
        self.started = time.monotonic()
        self.first: RunProgress | None = None
        self.last_draw = 0.0
        self.shown_waiting = ""

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def label(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def loading(self, model: str | None) -> None:
        """While a model loads, the bar says so."""
        self.label(f"loading {model}" if model else self.default_label)

    def update(self, p: RunProgress) -> None:
        if (p.waiting or "") != self.shown_waiting:  # an outage began or ended: say so
            self.shown_waiting = p.waiting or ""
            self.label(f"[yellow]{p.waiting}[/]" if p.waiting else self.default_label)
        now = time.monotonic()
        if self.first is None:
            self.first, self.started = p, now
        if now - self.last_draw < 0.1 and p.done != p.total:
            return
        self.last_draw = now
        elapsed = max(now - self.started, 1e-6)
        rows = p.done - self.first.done
        tokens = p.tokens - self.first.tokens
        self.progress.update(
            self.task,
            completed=p.done,
            total=p.total,
            total_text=f"{p.total:,}" if p.total is not None else "?",
            rate=f"{rows / elapsed:,.1f}",
            tps=f"{tokens / elapsed:,.0f}",
        )

    def show_job(self, job: Job) -> None:
        """A job as polled from a server."""
        self.update(RunProgress(job.counts.done, job.total_rows, job.counts.succeeded,
                                job.counts.failed, job.counts.total_tokens, job.waiting_text))
        if not job.waiting_text:
            self.label(f"{self.default_label} {state_text(job.state)}")


def _rows_text(job: Job) -> str:
    return (f"{job.counts.succeeded} succeeded, {job.counts.failed} failed, "
            f"{job.incomplete} incomplete")


def print_summary(job: Job, resume_command: str | None = None) -> None:
    """What a run ended with; an interrupted run (still RUNNING) says so, counts the rows not
    yet done, and gives the command that resumes it."""
    interrupted = job.state == JobState.JOB_STATE_RUNNING
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("job", f"{job.id} ({job.display_name})")
    if interrupted:
        table.add_row("state", "[yellow]INTERRUPTED[/] (resumable: completed rows are kept)")
        left = "?" if job.total_rows is None else str(max(0, job.total_rows - job.counts.done))
        table.add_row("rows", f"{job.counts.succeeded} succeeded, {job.counts.failed} failed, "
                              f"{left} not done yet")
    else:
        table.add_row("state", state_text(job.state))
        table.add_row("rows", _rows_text(job))
    table.add_row(
        "tokens",
        f"{job.counts.prompt_tokens} prompt + {job.counts.candidates_tokens} output = "
        f"{job.counts.total_tokens} (successful rows)",
    )
    if job.start_time and job.end_time:
        seconds = (job.end_time - job.start_time).total_seconds()
        table.add_row("time", f"{seconds:.1f} s")
    if job.error:
        table.add_row("error", job.error.get("message", ""))
    out.print(table, highlight=False)
    if job.output_table:  # a BigQuery output: the table (its chunks stage in output_dir)
        out.print(f"output  {job.output_table}", soft_wrap=True, highlight=False)
    elif job.output_dir:
        # one unbroken line, so the path copies whole however narrow the terminal
        done = job.state.is_terminal and not job.resumable  # a resumable job keeps its chunks
        path = f"{job.output_dir}/predictions.jsonl" if done else job.output_dir
        out.print(f"output  {path}", soft_wrap=True, highlight=False)
    if (interrupted or job.resumable) and resume_command:
        out.print(f"resume  {resume_command}", soft_wrap=True, highlight=False)


def print_job(job: Job) -> None:
    table = Table(show_header=False, box=None)
    rows: list[tuple[str, str]] = [
        ("name", job.name),
        ("display name", job.display_name),
        ("model", job.model),
        ("face", job.face.value),
        ("state", state_text(job.state)),
        ("input", ", ".join(job.input_uris)),
        ("output", job.output_table or job.output_dir or ""),
        ("rows", f"{_rows_text(job)} (of {job.total_rows if job.total_rows is not None else '?'})"),
        ("tokens", str(job.counts.total_tokens)),
        ("created", format_time(job.create_time) or ""),
        ("started", format_time(job.start_time) or ""),
        ("ended", format_time(job.end_time) or ""),
    ]
    if job.error:
        rows.append(("error", job.error.get("message", "")))
    if job.waiting_text:
        rows.append(("waiting", f"{job.waiting_text}: {job.waiting_reason or ''}"))
    for k, v in rows:
        table.add_row(k, v)
    out.print(table, highlight=False)


def print_jobs_table(jobs: list[Job]) -> None:
    """A table of jobs, one per line."""
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("display name", overflow="fold")
    table.add_column("model", overflow="fold")  # whole, however narrow: never "gemini-2.…"
    table.add_column("face", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for col in ("succeeded", "failed"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("created", overflow="fold")
    for j in jobs:
        pending = j.state == JobState.JOB_STATE_PENDING
        table.add_row(
            str(j.id),
            j.display_name,
            j.model,
            j.face.value,
            state_text(j.state),
            "-" if pending else str(j.counts.succeeded),
            "-" if pending else str(j.counts.failed),
            format_time(j.create_time) or "",
        )
    out.print(table)
