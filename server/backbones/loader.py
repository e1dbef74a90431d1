"""Pick and load a backbone: Whisper (encoder-decoder) or an encoder-only CTC model.

What the engine, the CLI and training need from a backbone is the small :class:`Backbone` protocol;
decoding is chosen by type in :func:`splitasr.decoding.transcribe`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import InvalidInput
from .ctc import CTCBackbone, is_ctc_location
from .quantize import check_quantization
from .sources import KNOWN_BACKBONES, resolve_backbone
from .whisper import WhisperBackbone


@runtime_checkable
class Backbone(Protocol):
    """A frozen speech model loaded once: its name, torch module, and where it runs."""

    name: str
    model: nn.Module
    load_seconds: float
    quantization: str  # none | int8 | nf4
    languages: tuple[str, ...]

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def multilingual(self) -> bool: ...


def load_backbone(spec: str, *, cache_dir: Path, device: str = "auto", quantize: str = "none",
                  dtype: torch.dtype | str | None = None) -> WhisperBackbone | CTCBackbone:
    """Resolve ``spec`` (known name, directory, hub id) and load it frozen, optionally quantized.

    ``dtype``: a torch dtype, or the ``SPLITASR_DTYPE`` name of one (``auto``/None: the device's default).
    """
    check_quantization(quantize)
    if isinstance(dtype, str):
        dtype = None if dtype == "auto" else getattr(torch, dtype)
    if quantize != "none" and dtype not in (None, torch.float32):
        raise InvalidInput(f"quantize={quantize} and dtype={str(dtype).removeprefix('torch.')} are alternatives: "
                           "quantized layers keep their own weights; leave the dtype at auto")
    resolved = resolve_backbone(spec, cache_dir)
    if spec not in KNOWN_BACKBONES and is_ctc_location(resolved.location):
        return CTCBackbone.load(resolved, device=device, dtype=dtype, quantize=quantize)
    return WhisperBackbone.from_resolved(resolved, device=device, dtype=dtype, quantize=quantize)
