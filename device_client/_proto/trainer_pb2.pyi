from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    QUEUED: _ClassVar[JobStatus]
    RUNNING: _ClassVar[JobStatus]
    SUCCEEDED: _ClassVar[JobStatus]
    FAILED: _ClassVar[JobStatus]
    CANCELLED: _ClassVar[JobStatus]
JOB_STATUS_UNSPECIFIED: JobStatus
QUEUED: JobStatus
RUNNING: JobStatus
SUCCEEDED: JobStatus
FAILED: JobStatus
CANCELLED: JobStatus

class JobParameters(_message.Message):
    __slots__ = ("kind", "rank", "alpha", "targets", "gate", "experts", "epochs", "batch_size", "learning_rate", "seed", "dev")
    KIND_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEV_FIELD_NUMBER: _ClassVar[int]
    kind: str
    rank: int
    alpha: float
    targets: str
    gate: str
    experts: int
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    dev: float
    def __init__(self, kind: _Optional[str] = ..., rank: _Optional[int] = ..., alpha: _Optional[float] = ..., targets: _Optional[str] = ..., gate: _Optional[str] = ..., experts: _Optional[int] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., seed: _Optional[int] = ..., dev: _Optional[float] = ...) -> None: ...

class JobConfig(_message.Message):
    __slots__ = ("parameters", "name", "store", "manifest")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    parameters: JobParameters
    name: str
    store: bool
    manifest: bytes
    def __init__(self, parameters: _Optional[_Union[JobParameters, _Mapping]] = ..., name: _Optional[str] = ..., store: _Optional[bool] = ..., manifest: _Optional[bytes] = ...) -> None: ...

class RecordingHeader(_message.Message):
    __slots__ = ("name", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("config", "recording", "chunk")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    RECORDING_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    config: JobConfig
    recording: RecordingHeader
    chunk: bytes
    def __init__(self, config: _Optional[_Union[JobConfig, _Mapping]] = ..., recording: _Optional[_Union[RecordingHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("stage", "epoch", "epochs", "step", "steps", "fraction")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    stage: str
    epoch: int
    epochs: int
    step: int
    steps: int
    fraction: float
    def __init__(self, stage: _Optional[str] = ..., epoch: _Optional[int] = ..., epochs: _Optional[int] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., fraction: _Optional[float] = ...) -> None: ...

class JobMetrics(_message.Message):
    __slots__ = ("dev_metric", "dev_before", "dev_after", "best_epoch", "epochs_run", "wall_seconds", "peak_rss_bytes")
    DEV_METRIC_FIELD_NUMBER: _ClassVar[int]
    DEV_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DEV_AFTER_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_RUN_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    dev_metric: str
    dev_before: float
    dev_after: float
    best_epoch: int
    epochs_run: int
    wall_seconds: float
    peak_rss_bytes: int
    def __init__(self, dev_metric: _Optional[str] = ..., dev_before: _Optional[float] = ..., dev_after: _Optional[float] = ..., best_epoch: _Optional[int] = ..., epochs_run: _Optional[int] = ..., wall_seconds: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("name", "sha256", "size", "kind", "stored")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size: int
    kind: str
    stored: bool
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., kind: _Optional[str] = ..., stored: _Optional[bool] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TrainingJob(_message.Message):
    __slots__ = ("id", "status", "created_at", "started_at", "finished_at", "name", "store", "parameters", "utterances", "audio_seconds", "train_utterances", "dev_utterances", "progress", "metrics", "result", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    DEV_UTTERANCES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: JobStatus
    created_at: float
    started_at: float
    finished_at: float
    name: str
    store: bool
    parameters: JobParameters
    utterances: int
    audio_seconds: float
    train_utterances: int
    dev_utterances: int
    progress: JobProgress
    metrics: JobMetrics
    result: JobResult
    error: JobError
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[JobStatus, str]] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., name: _Optional[str] = ..., store: _Optional[bool] = ..., parameters: _Optional[_Union[JobParameters, _Mapping]] = ..., utterances: _Optional[int] = ..., audio_seconds: _Optional[float] = ..., train_utterances: _Optional[int] = ..., dev_utterances: _Optional[int] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., metrics: _Optional[_Union[JobMetrics, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("limit", "after")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    after: str
    def __init__(self, limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "has_more")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[TrainingJob]
    has_more: bool
    def __init__(self, jobs: _Optional[_Iterable[_Union[TrainingJob, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id", "after_event", "download")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_event: int
    download: bool
    def __init__(self, job_id: _Optional[str] = ..., after_event: _Optional[int] = ..., download: _Optional[bool] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("id", "created_at", "type", "level", "message", "job", "status", "fraction")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    id: int
    created_at: float
    type: str
    level: str
    message: str
    job: TrainingJob
    status: JobStatus
    fraction: float
    def __init__(self, id: _Optional[int] = ..., created_at: _Optional[float] = ..., type: _Optional[str] = ..., level: _Optional[str] = ..., message: _Optional[str] = ..., job: _Optional[_Union[TrainingJob, _Mapping]] = ..., status: _Optional[_Union[JobStatus, str]] = ..., fraction: _Optional[float] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("event", "adapter_chunk")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    adapter_chunk: bytes
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ..., adapter_chunk: _Optional[bytes] = ...) -> None: ...
