"""``SplitASRClient``: have the server train this device's adapter from its recordings, enroll it once,
then transcribe files or stream audio.

grpcio, protobuf and the health check's stubs: importing this never imports torch (nor numpy,
which reading an audio file loads).
Calls that are safe to repeat are retried with exponential backoff on UNAVAILABLE and
DEADLINE_EXCEEDED; a stream that drops resumes from its last final result, and following a training
job resumes after its last event. Creating a job is not retried (it would queue a second one).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from . import health
from ._proto import (
    adapters_pb2,
    adapters_pb2_grpc,
    recognizer_pb2,
    recognizer_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from .audio import Pcm, chunks, paced, read_pcm
from .errors import DeviceError
from .opus import DEFAULT_BITRATE, OPUS_RATES_HZ
from .results import (
    AdapterInfo,
    EnrollResult,
    ServerStatus,
    StreamUpdate,
    Transcript,
    adapter_info,
    transcript,
)
from .retry import RetryPolicy, call_with_retry, retryable
from .streaming import recognize_stream
from .training import (
    JobInfo,
    TrainedAdapter,
    TrainingEvent,
    check_succeeded,
    event_from,
    job_info,
    keep_adapter,
    read_recordings,
    upload_requests,
)

if TYPE_CHECKING:
    from typing_extensions import Self

UPLOAD_CHUNK_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_TIMEOUT_S = 60.0
KEEPALIVE_MS = 20_000  # a ping every 20 s keeps NAT mappings and detects a dead link
TRAIN_UPLOAD_TIMEOUT_S = 600.0
DEFAULT_RETRY = RetryPolicy()
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def adapter_name_for(path: str | Path) -> str:
    """A valid adapter name from a file name ("my voice.safetensors" -> "my-voice")."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(path).name.removesuffix(".safetensors")).strip("-._")
    return (stem or "adapter")[:64]


def adapter_ref(adapter: str | EnrollResult | None) -> recognizer_pb2.AdapterRef | None:
    """A 64-hex string is a sha256, anything else a name; an EnrollResult refers by its hash."""
    if adapter is None or adapter == "":
        return None
    if isinstance(adapter, EnrollResult):
        return recognizer_pb2.AdapterRef(sha256=adapter.sha256)
    if _SHA256.match(adapter):
        return recognizer_pb2.AdapterRef(sha256=adapter)
    return recognizer_pb2.AdapterRef(name=adapter)


class SplitASRClient:
    """A connection to a SplitASR server's gRPC API (``HOST:PORT``)."""

    def __init__(self, server: str, token: str | None = None, tls: bool = False,
                 root_cert: str | Path | None = None, *, retry: RetryPolicy = DEFAULT_RETRY,
                 timeout: float = DEFAULT_TIMEOUT_S):
        self.server = server
        self.retry = retry
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.keepalive_time_ms", KEEPALIVE_MS), ("grpc.keepalive_timeout_ms", 10_000),
                   ("grpc.keepalive_permit_without_calls", 1)]  # the server accepts pings every 10 s or more
        if tls or root_cert:
            roots = Path(root_cert).read_bytes() if root_cert else None
            self._channel = grpc.secure_channel(server, grpc.ssl_channel_credentials(roots), options)
        else:
            self._channel = grpc.insecure_channel(server, options)
        self._adapters = adapters_pb2_grpc.AdaptersStub(self._channel)
        self._recognizer = recognizer_pb2_grpc.RecognizerStub(self._channel)
        self._trainer = trainer_pb2_grpc.TrainerStub(self._channel)
        self._lock = threading.Lock()
        self.bytes_sent = 0  # protobuf payload bytes of every request so far (audio, adapters, configs)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def _unary(self, method, request, what: str):
        self._count(request.ByteSize())
        return call_with_retry(lambda: method(request, timeout=self.timeout, metadata=self._metadata),
                               self.retry, what)

    # adapters ------------------------------------------------------------------------------------
    def stat(self, *, sha256: str | None = None, name: str | None = None) -> AdapterInfo | None:
        """The server's record of one of this tenant's adapters, or None when it has none."""
        request = adapters_pb2.StatRequest(sha256=sha256) if sha256 else adapters_pb2.StatRequest(name=name)
        try:
            return adapter_info(self._unary(self._adapters.Stat, request, "Stat"))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def list_adapters(self) -> list[AdapterInfo]:
        response = self._unary(self._adapters.List, adapters_pb2.ListAdaptersRequest(), "List")
        return [adapter_info(a) for a in response.adapters]

    def delete_adapter(self, name: str) -> AdapterInfo:
        return adapter_info(self._unary(self._adapters.Delete, adapters_pb2.DeleteAdapterRequest(name=name), "Delete"))

    def upload(self, data: bytes, name: str, sha256: str | None = None, kind: str = "") -> AdapterInfo:
        """Upload an adapter file's bytes (retried whole on UNAVAILABLE: the store is content-addressed)."""
        sha256 = sha256 or hashlib.sha256(data).hexdigest()

        def requests() -> Iterator[adapters_pb2.UploadRequest]:
            header = adapters_pb2.UploadRequest(header=adapters_pb2.UploadHeader(
                name=name, sha256=sha256, size=len(data), kind=kind))
            self._count(header.ByteSize())
            yield header
            for start in range(0, len(data), UPLOAD_CHUNK_BYTES):
                piece = data[start: start + UPLOAD_CHUNK_BYTES]
                self._count(len(piece))
                yield adapters_pb2.UploadRequest(chunk=piece)

        return adapter_info(call_with_retry(
            lambda: self._adapters.Upload(requests(), timeout=self.timeout, metadata=self._metadata),
            self.retry, "Upload"))

    def enroll(self, path: str | Path, name: str | None = None) -> EnrollResult:
        """Make sure the server holds this adapter file: ``Stat`` by sha256, upload only if missing."""
        path = Path(path)
        if not path.is_file():
            raise DeviceError(f"adapter file {path} does not exist")
        sha256 = file_sha256(path)
        known = self.stat(sha256=sha256)
        if known is not None:
            return EnrollResult(sha256, known.name, 0)
        data = path.read_bytes()
        info = self.upload(data, name or adapter_name_for(path), sha256)
        return EnrollResult(info.sha256, info.name, len(data))

    # enrollment: the server trains the adapter -------------------------------------------------------
    def train(self, manifest: str | Path, out: str | Path, *, kind: str = "", rank: int = 0, targets: str = "",
              epochs: int = 0, dev: float | None = None, name: str | None = None,
              learning_rate: float | None = None, seed: int | None = None,
              on_event: Callable[[TrainingEvent], None] | None = None,
              upload_timeout: float = TRAIN_UPLOAD_TIMEOUT_S) -> TrainedAdapter:
        """Upload the recordings a manifest names, have the server train an adapter, write it to ``out``.

        Unset parameters take the server's defaults (LoRA, rank 8, decoder targets, 10 epochs with early
        stopping on a 20 % dev share). ``name``: also store the adapter on the server under that name
        (then ``enroll`` finds it there by sha256); without it the server keeps nothing once the file is
        downloaded. ``on_event`` hears the upload's and the job's progress. Ctrl-C cancels the job.
        Raises TrainingFailed when the job fails; ``out`` is only ever replaced whole.
        """
        data, recordings = read_recordings(Path(manifest))
        params = trainer_pb2.JobParameters(kind=kind, rank=rank, targets=targets, epochs=epochs)
        for field, value in (("dev", dev), ("learning_rate", learning_rate), ("seed", seed)):
            if value is not None:
                setattr(params, field, value)
        config = trainer_pb2.JobConfig(parameters=params, name=name or "", store=name is not None, manifest=data)

        counted = 0

        def uploaded(sent: int, total: int) -> None:
            nonlocal counted
            self._count(sent - counted)
            counted = sent
            if on_event is not None:
                on_event(TrainingEvent("", "upload", f"{sent / 1e6:.1f} of {total / 1e6:.1f} MB", "uploading",
                                       "upload", sent / max(total, 1)))

        job = self._trainer.CreateJob(upload_requests(config, recordings, uploaded), timeout=upload_timeout,
                                      metadata=self._metadata)
        try:
            return self.follow_job(job.id, out, on_event)
        except KeyboardInterrupt:
            self.cancel_job(job.id)
            raise

    def follow_job(self, job_id: str, out: str | Path,
                   on_event: Callable[[TrainingEvent], None] | None = None) -> TrainedAdapter:
        """Follow a job to its end (resuming a dropped stream) and write its adapter to ``out``."""
        after, attempt, payload = 0, 0, b""
        while True:
            parts: list[bytes] = []
            try:
                request = trainer_pb2.WatchRequest(job_id=job_id, after_event=after, download=True)
                for response in self._trainer.Watch(request, metadata=self._metadata):
                    if response.HasField("event"):
                        after = response.event.id
                        if on_event is not None:
                            on_event(event_from(response.event))
                    else:
                        parts.append(response.adapter_chunk)
                payload = b"".join(parts)
                break
            except grpc.RpcError as exc:
                attempt += 1
                if not retryable(exc) or attempt >= self.retry.attempts:
                    raise
                time.sleep(self.retry.delay(attempt))
        job = self._unary(self._trainer.GetJob, trainer_pb2.GetJobRequest(job_id=job_id), "GetJob")
        check_succeeded(job)
        return keep_adapter(Path(out), job, payload)

    def job(self, job_id: str) -> JobInfo:
        """A training job's state on the server."""
        return job_info(self._unary(self._trainer.GetJob, trainer_pb2.GetJobRequest(job_id=job_id), "GetJob"))

    def cancel_job(self, job_id: str) -> JobInfo:
        """Stop a queued or running job (the server deletes its recordings)."""
        request = trainer_pb2.CancelJobRequest(job_id=job_id)
        return job_info(self._unary(self._trainer.CancelJob, request, "CancelJob"))

    # recognition ---------------------------------------------------------------------------------
    def _config(self, adapter: str | EnrollResult | None, language: str | None,
                beam_size: int = 0, prompt: str | None = None) -> recognizer_pb2.RecognitionConfig:
        config = recognizer_pb2.RecognitionConfig(language=language or "", beam_size=beam_size, prompt=prompt or "")
        ref = adapter_ref(adapter)
        if ref is not None:
            config.adapter.CopyFrom(ref)
        return config

    def transcribe(self, path: str | Path, adapter: str | EnrollResult | None = None,
                   language: str | None = None, *, beam_size: int = 0, prompt: str | None = None,
                   vad_filter: bool | None = None) -> Transcript:
        """Transcribe a whole file. Its bytes go as they are (the server decodes wav, flac, mp3 ...).

        ``vad_filter``: drop long silences before decoding (times stay the file's); None = the server's default.
        """
        path = Path(path)
        if not path.is_file():
            raise DeviceError(f"{path}: no such file")
        config = self._config(adapter, language, beam_size, prompt)
        config.encoding = recognizer_pb2.ENCODED_FILE
        if vad_filter is not None:
            config.vad_filter = vad_filter
        request = recognizer_pb2.RecognizeRequest(config=config, audio=path.read_bytes())
        return transcript(self._unary(self._recognizer.Recognize, request, "Recognize"))

    def stream(self, source: str | Path | Pcm | Iterable[bytes], *, realtime: bool = False,
               adapter: str | EnrollResult | None = None, language: str | None = None,
               interim_results: bool = True, sample_rate_hz: int = 16_000,
               chunk_ms: int = 100, endpoint_silence_ms: int | None = None,
               speech_threshold: float | None = None,
               max_utterance_seconds: float | None = None,
               codec: str = "linear16", opus_bitrate: int = DEFAULT_BITRATE) -> Iterator[StreamUpdate]:
        """Stream audio and yield interim and final results as they arrive.

        ``source``: an audio file, a :class:`Pcm`, or an iterable of LINEAR16 mono chunks at
        ``sample_rate_hz`` (e.g. :func:`splitasr_device.audio.microphone`). ``realtime`` paces a file
        as if it were being recorded. ``endpoint_silence_ms`` (silence that ends an utterance),
        ``speech_threshold`` (VAD probability that counts as speech) and ``max_utterance_seconds``:
        the stream's endpointing; None = the server's defaults. ``codec``: "linear16" (raw PCM,
        256 kbit/s at 16 kHz) or "opus" (an Ogg Opus stream at ``opus_bitrate`` bit/s; needs the
        ``splitasr[opus]`` extra; a file at a rate Opus does not take is resampled to 16 kHz first).
        """
        if isinstance(source, (str, Path)):
            source = read_pcm(source)
        if isinstance(source, Pcm):
            if codec == "opus" and source.rate_hz not in OPUS_RATES_HZ:
                source = source.resampled(16_000)
            sample_rate_hz = source.rate_hz
            source = chunks(source, chunk_ms)
        if realtime:
            source = paced(source, sample_rate_hz)

        def open_call(requests):
            return self._recognizer.StreamingRecognize(requests, metadata=self._metadata)

        config = self._config(adapter, language)
        for name, value in (("silence_ms", endpoint_silence_ms), ("speech_threshold", speech_threshold),
                            ("max_utterance_seconds", max_utterance_seconds)):
            if value is not None:
                setattr(config.endpointing, name, value)
        return recognize_stream(open_call, source, sample_rate_hz, config,
                                interim_results=interim_results, policy=self.retry, count=self._count,
                                codec=codec, opus_bitrate=opus_bitrate)

    # status --------------------------------------------------------------------------------------
    def health(self, service: str = "") -> str:
        return call_with_retry(lambda: health.check(self._channel, service, self.timeout, self._metadata),
                               self.retry, "health check")

    def status(self, adapter_path: str | Path | None = None) -> ServerStatus:
        """Server health and, given this device's adapter file, whether the server holds it."""
        state = self.health()
        if adapter_path is None:
            return ServerStatus(self.server, state)
        sha256 = file_sha256(adapter_path)
        enrolled = self.stat(sha256=sha256) if state == "SERVING" else None
        return ServerStatus(self.server, state, sha256, enrolled)
