"""``splitasr.v1.Trainer``: converts messages and delegates to the training job manager."""

from __future__ import annotations

import asyncio

import grpc

from splitasr_device._proto import trainer_pb2 as pb
from splitasr_device._proto import trainer_pb2_grpc

from ...config import Settings
from ...errors import InvalidInput, TooLarge
from ...jobs import JobManager, JobRequest
from . import convert
from .interceptors import current_tenant

DOWNLOAD_CHUNK_BYTES = 256 * 1024
MAX_LIST = 100


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, jobs: JobManager, settings: Settings):
        self.jobs = jobs
        self.settings = settings

    async def _receive(self, requests) -> JobRequest:
        """The config, then recordings (header + chunks); checks order, sizes and the upload limit."""
        limit = self.settings.train_max_upload_bytes
        config: pb.JobConfig | None = None
        parts: dict[str, bytearray] = {}
        current: tuple[str, int] | None = None  # (name, announced size)
        total = 0
        async for request in requests:
            which = request.WhichOneof("payload")
            if config is None:
                if which != "config":
                    raise InvalidInput("the first CreateJob message must be the config (parameters and manifest)")
                config = request.config
                total = len(config.manifest)
            elif which == "recording":
                self._check_complete(current, parts)
                name, size = request.recording.name, request.recording.size
                if not name or name in parts:
                    raise InvalidInput(f"recording name {name[:80]!r} is empty or used twice")
                if len(parts) >= self.settings.train_max_utterances:
                    raise InvalidInput(f"too many recordings: a job takes at most {self.settings.train_max_utterances}")
                current, parts[name] = (name, size), bytearray()
            elif which == "chunk":
                if current is None:
                    raise InvalidInput("a chunk must follow a recording header")
                parts[current[0]] += request.chunk
                if len(parts[current[0]]) > current[1]:
                    raise InvalidInput(f"recording {current[0][:80]!r}: more bytes than the {current[1]} announced")
            else:
                raise InvalidInput("only the first CreateJob message may be the config")
            total += len(request.chunk)
            if total > limit:
                raise TooLarge(f"job upload exceeds the limit of {limit} bytes (SPLITASR_TRAIN_MAX_UPLOAD_BYTES)")
        if config is None:
            raise InvalidInput("empty CreateJob: send the config, then the recordings")
        self._check_complete(current, parts)
        return JobRequest(convert.job_parameters(config.parameters), config.name or None, config.store,
                          config.manifest, {name: bytes(body) for name, body in parts.items()})

    @staticmethod
    def _check_complete(current: tuple[str, int] | None, parts: dict[str, bytearray]) -> None:
        if current is not None and len(parts[current[0]]) != current[1]:
            raise InvalidInput(f"recording {current[0][:80]!r} incomplete: {len(parts[current[0]])} of the "
                               f"announced {current[1]} bytes arrived")

    async def CreateJob(self, request_iterator, context: grpc.aio.ServicerContext) -> pb.TrainingJob:
        tenant = current_tenant()
        job = await self._receive(request_iterator)  # nothing is written before every byte has arrived
        return convert.training_job(await asyncio.to_thread(self.jobs.submit, tenant, job))

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.TrainingJob:
        return convert.training_job(self.jobs.get(current_tenant(), request.job_id))

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        if request.limit > MAX_LIST:
            raise InvalidInput(f"limit must be at most {MAX_LIST}, got {request.limit}")
        views, more = self.jobs.list(current_tenant(), request.limit or 20, request.after or None)
        return pb.ListJobsResponse(jobs=[convert.training_job(v) for v in views], has_more=more)

    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.TrainingJob:
        return convert.training_job(await asyncio.to_thread(self.jobs.cancel, current_tenant(), request.job_id))

    async def Watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext):
        tenant = current_tenant()
        async for event, view in self.jobs.watch(tenant, request.job_id, request.after_event):
            yield pb.WatchResponse(event=convert.job_event(event, view))
        if not request.download or self.jobs.get(tenant, request.job_id)["status"] != "succeeded":
            return
        data, _ = await asyncio.to_thread(self.jobs.result_content, tenant, request.job_id)
        for start in range(0, len(data), DOWNLOAD_CHUNK_BYTES):
            yield pb.WatchResponse(adapter_chunk=data[start:start + DOWNLOAD_CHUNK_BYTES])
        await asyncio.to_thread(self.jobs.downloaded, tenant, request.job_id)
