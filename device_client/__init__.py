"""SplitASR device client: have the server train this device's adapter from a few recordings, enroll
it once, then transcribe or stream audio over gRPC.

Depends only on grpcio, protobuf, grpcio-health-checking and numpy (for audio samples, imported when
a file is read), never torch. The generated gRPC code lives in ``splitasr_device._proto`` and is
shared with the server.
"""

from .audio import Pcm, microphone, read_pcm
from .client import SplitASRClient, adapter_name_for, file_sha256
from .config import DeviceConfig, load_config
from .errors import DeviceError
from .results import AdapterInfo, EnrollResult, Segment, ServerStatus, StreamUpdate, Transcript, Word
from .retry import RetryPolicy
from .training import JobInfo, TrainedAdapter, TrainingEvent, TrainingFailed

__all__ = [
    "AdapterInfo",
    "DeviceConfig",
    "DeviceError",
    "EnrollResult",
    "JobInfo",
    "Pcm",
    "RetryPolicy",
    "Segment",
    "ServerStatus",
    "SplitASRClient",
    "StreamUpdate",
    "TrainedAdapter",
    "TrainingEvent",
    "TrainingFailed",
    "Transcript",
    "Word",
    "adapter_name_for",
    "file_sha256",
    "load_config",
    "microphone",
    "read_pcm",
]
