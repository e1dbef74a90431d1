"""The serving engine: one frozen backbone behind a batching scheduler. Transports call only this."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import numpy as np

from ..audio import SAMPLE_RATE_HZ, decode_audio
from ..backbones.whisper import WhisperBackbone
from ..config import Settings
from ..errors import NotFound, NotReady
from .decoding import DecodingOptions, Transcription, transcribe
from .scheduler import Scheduler

log = logging.getLogger(__name__)

# OpenAI clients default to this model name; it means "the base backbone" here.
OPENAI_DEFAULT_MODEL = "whisper-1"


class Engine:
    """Loads the backbone (possibly in the background) and serves transcriptions through a scheduler."""

    def __init__(self, settings: Settings, backbone: WhisperBackbone | None = None):
        """``backbone``: an already loaded one to serve (tests, notebooks); else ``settings.backbone``."""
        self.settings = settings
        self._preloaded = backbone
        self.backbone: WhisperBackbone | None = None
        self.scheduler: Scheduler | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()

    # lifecycle -----------------------------------------------------------------------------------
    def load(self) -> None:
        """Load and warm the backbone, then start accepting requests. Safe to run in a thread."""
        try:
            backbone = self._preloaded or WhisperBackbone.load(
                self.settings.backbone, cache_dir=self.settings.backbone_cache_dir, device=self.settings.device
            )
            start = time.perf_counter()
            transcribe(backbone, [np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)])  # warm-up: first call is slow
            log.info("backbone warmed up in %.2f s", time.perf_counter() - start)
        except Exception as exc:
            self.load_error = str(exc)
            log.error("backbone %r failed to load: %s", self.settings.backbone, exc)
            raise
        self.backbone = backbone
        self.scheduler = Scheduler(
            self._run_batch,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_batch_wait_ms,
            max_queue=self.settings.max_queued_requests,
        )
        self.scheduler.start()
        self._ready.set()

    def close(self, timeout: float | None = None) -> None:
        if self.scheduler:
            self.scheduler.stop(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    # requests ------------------------------------------------------------------------------------
    @property
    def backbone_name(self) -> str:
        return self.backbone.name if self.backbone else self.settings.backbone

    def model_names(self) -> list[str]:
        return [self.backbone_name, OPENAI_DEFAULT_MODEL]

    def check_model(self, model: str | None) -> None:
        """Raise NotFound unless ``model`` names something this server serves."""
        if model in (None, "", *self.model_names()):
            return
        raise NotFound(f"model {model!r} does not exist; available: {', '.join(self.model_names())}")

    async def transcribe(self, data: bytes, options: DecodingOptions, model: str | None = None) -> Transcription:
        if not self.ready or self.scheduler is None:
            raise NotReady(self.load_error or "the backbone is still loading; retry shortly")
        self.check_model(model)
        audio = await asyncio.to_thread(decode_audio, data, max_seconds=self.settings.max_audio_seconds)
        return await self.scheduler.run(audio, options)

    def _run_batch(self, audios: list[np.ndarray], options: DecodingOptions) -> list[Transcription]:
        assert self.backbone is not None
        return transcribe(self.backbone, audios, options)
