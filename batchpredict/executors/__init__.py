"""Executors: where the row ranges of a job run. One interface (`base.Executor`), chosen per
server (`BATCHPREDICT_EXECUTOR`, `BATCHPREDICT_WORKERS`, `BATCHPREDICT_RAY_ADDRESS`) or per
`batchpredict run` (`--executor`, `--workers`, `--ray-address`):

    local      in the driver's process, sharing the registry's backend (the default)
    processes  N worker processes on this machine, each loading the backend once
    ray        N Ray actors on a cluster (`ray.init(address=...)`, or a local one started for
               the first job), each loading the backend once, `num_gpus` from the model's entry

The scheduler makes an executor for each job it runs and hands it, with the claimed job, to
the job's runner (the driver), which starts the workers and commits what they write.
"""

from __future__ import annotations

from batchpredict.errors import InvalidArgument
from batchpredict.executors.base import Executor

__all__ = ["EXECUTORS", "Executor", "make_executor"]

EXECUTORS = ("local", "processes", "ray")


def make_executor(name: str, workers: int = 0, start_seconds: float = 300.0,
                  ray_address: str = "") -> Executor:
    """The executor called `name` (not started)."""
    if name == "local":
        from batchpredict.executors.local import LocalExecutor

        return LocalExecutor(workers, start_seconds, ray_address)
    if name == "processes":
        from batchpredict.executors.processes import ProcessExecutor

        return ProcessExecutor(workers, start_seconds, ray_address)
    if name == "ray":
        from batchpredict.executors.ray_actors import RayExecutor

        return RayExecutor(workers, start_seconds, ray_address)
    raise InvalidArgument(
        f"Executor {name!r} does not exist. Available: {', '.join(EXECUTORS)} "
        "(BATCHPREDICT_EXECUTOR or --executor)."
    )
