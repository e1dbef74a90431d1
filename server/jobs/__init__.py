"""Training jobs: the server trains a tenant's adapter from uploaded recordings and hands the file back.

``JobManager`` (queue, runners, records, events) is what the transports call; ``validation`` checks a
job before it is queued; ``worker`` is the separate training process, running ``splitasr train``'s code.
"""

from .manager import JobManager
from .records import CANCELLED, FAILED, QUEUED, RUNNING, STATUSES, SUCCEEDED, JobParameters, JobRecord
from .validation import JobLimits, JobRequest, unpack_zip

__all__ = [
    "CANCELLED",
    "FAILED",
    "QUEUED",
    "RUNNING",
    "STATUSES",
    "SUCCEEDED",
    "JobLimits",
    "JobManager",
    "JobParameters",
    "JobRecord",
    "JobRequest",
    "unpack_zip",
]
