"""batchpredict: Vertex AI batch prediction for generative models, self-hosted.

The public API; everything else is internal and may change.
"""

from batchpredict.backends.base import Backend
from batchpredict.config import RunnerSettings, Settings
from batchpredict.errors import BatchPredictError, InvalidArgument, NotFound
from batchpredict.jobs import Job, JobState
from batchpredict.runner import JobRunner
from batchpredict.schema import GenerateContentRequest, parse_request

__all__ = [
    "Backend",
    "BatchPredictError",
    "GenerateContentRequest",
    "InvalidArgument",
    "Job",
    "JobRunner",
    "JobState",
    "NotFound",
    "RunnerSettings",
    "Settings",
    "parse_request",
]
