"""Rescoring in the server: rescorer files in the tenants' adapter store, a slot pool on one encoder.

Rescorer files are stored like ASR adapters (content-addressed, per-tenant names) with kind ``lorb``.
The text encoder loads on first use. Its LoRA bank holds ``slots`` rescorers at once (least recently
used evicted, the same :class:`~splitasr.adapters.pool.SlotPool` as the backbone's), so the N-best lists
of every request in a batch are scored in one forward pass, each row with its own rescorer.
Everything here runs on the scheduler's worker thread except :meth:`validate` (uploads).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from .. import observability
from ..adapters import AdapterLimits
from ..adapters.pool import SlotPool
from ..decoding import Transcription
from .encoder import DEFAULT_ENCODER, TextEncoder, load_encoder
from .fileformat import KIND, is_rescorer_file, load_rescorer
from .model import TARGET_PRESETS, Rescorer, ScoringModel, encoder_targets
from .second_pass import rescore

__all__ = ["KIND", "RescoringService", "is_rescorer_file"]


class RescoringService:
    def __init__(self, read: Callable[[str], bytes], *, slots: int = 8, limits: AdapterLimits | None = None,
                 encoder_name: str = DEFAULT_ENCODER) -> None:
        """``read(sha256)`` returns a stored file's bytes."""
        self._read = read
        self.capacity = slots
        self.limits = limits or AdapterLimits()
        self.encoder_name = encoder_name
        self._lock = threading.Lock()
        self._encoder: TextEncoder | None = None
        self._model: ScoringModel | None = None
        self._pool: SlotPool | None = None
        self._loaded: dict[str, Rescorer] = {}  # sha256 -> rescorer, for the heads of resident slots
        self._head_of_slot: dict[int, str] = {}

    @property
    def encoder(self) -> TextEncoder:
        with self._lock:
            if self._encoder is None:
                self._encoder = load_encoder(self.encoder_name)
            return self._encoder

    @property
    def occupancy(self) -> int:
        """Rescorers resident in the encoder's slots."""
        return self._pool.occupancy if self._pool is not None else 0

    def validate(self, data: bytes) -> Rescorer:
        """Parse and check a rescorer file against the text encoder (raises InvalidAdapter)."""
        return load_rescorer(data, encoder=self.encoder.spec, limits=self.limits)

    def _ensure_model(self) -> tuple[ScoringModel, SlotPool]:
        if self._model is None or self._pool is None:
            targets = encoder_targets(self.encoder, ",".join(TARGET_PRESETS))
            self._model = ScoringModel(self.encoder, targets, self.capacity, self.limits.max_rank)
            self._pool = SlotPool(self.encoder.model, self.capacity, self._load)
            self._pool.on_event = observability.observe_rescorer_pool_event
        return self._model, self._pool

    def _load(self, sha256: str):
        rescorer = load_rescorer(self._read(sha256), encoder=self.encoder.spec, limits=self.limits)
        self._loaded[sha256] = rescorer
        return rescorer.lora

    def apply(self, rescorers: Sequence[str | None], results: list[Transcription]) -> list[Transcription]:
        """Rescore ``results[i]`` with the rescorer whose sha256 is ``rescorers[i]`` (None: unchanged)."""
        model, pool = self._ensure_model()
        rows = [i for i, sha in enumerate(rescorers) if sha and len(results[i].nbest) > 1]
        for start in range(0, len(rows), self.capacity):  # at most `capacity` distinct rescorers per pass
            chunk = rows[start : start + self.capacity]
            shas = [rescorers[i] for i in chunk]
            slots = pool.acquire(shas)
            for sha, slot in zip(shas, slots):
                if self._head_of_slot.get(slot) != sha:
                    model.load(slot, self._loaded[sha])
                    self._head_of_slot[slot] = sha
            self._loaded = {s: r for s, r in self._loaded.items() if pool.resident(s)}
            rescore(model, [(results[i], slot, self._loaded[sha].fusion) for i, sha, slot in zip(chunk, shas, slots)])
        return results
