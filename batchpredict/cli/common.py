"""What every command shares: the two consoles, the one-line error, and the local service."""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console

from batchpredict.config import Settings
from batchpredict.service import JobService

__all__ = ["err", "fail", "local_service", "out"]

err = Console(stderr=True)
out = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)  # one line
    sys.exit(code)


def local_service(settings: Settings) -> JobService:
    """The job service on this machine's store (its scheduler loop is not started: commands
    run their own job with `run_here`)."""
    return JobService.open(settings)
