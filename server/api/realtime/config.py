"""A transcription session's effective configuration and how ``session.update`` changes it.

An update is all or nothing: every field it names is checked first, and one bad field leaves the
session as it was. Fields SplitASR does not implement are refused by name when set, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ...config import Settings
from ...engine.engine import Engine
from ...errors import SplitASRError
from .errors import EventError

PCM = "audio/pcm"
RATES_HZ = (24_000, 16_000)  # OpenAI's PCM rate, and the backbone's own
DEFAULT_RATE_HZ = 24_000
INPUT = "session.audio.input"
THRESHOLD_RANGE = (0.0, 1.0)
PREFIX_PADDING_MS_RANGE = (0, 5_000)
SILENCE_MS_RANGE = (100, 10_000)


@dataclass(frozen=True)
class SessionConfig:
    rate_hz: int
    model: str  # as the client named it (the backbone by default)
    adapter: str | None  # its sha256; None = the backbone
    language: str | None
    prompt: str | None
    vad: bool  # server_vad; False: the client commits (turn_detection null)
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int

    @classmethod
    def defaults(cls, engine: Engine, settings: Settings) -> SessionConfig:
        return cls(rate_hz=DEFAULT_RATE_HZ, model=engine.backbone_name, adapter=None, language=None, prompt=None,
                   vad=True, threshold=0.5, prefix_padding_ms=300,
                   silence_duration_ms=round(settings.stream_endpoint_silence_ms))

    def session_object(self, session_id: str) -> dict:
        """The session as ``session.created`` / ``session.updated`` carry it."""
        turn = {"type": "server_vad", "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms} if self.vad else None
        return {"type": "transcription", "object": "realtime.transcription_session", "id": session_id,
                "audio": {"input": {
                    "format": {"type": PCM, "rate": self.rate_hz},
                    "noise_reduction": None,
                    "transcription": {"model": self.model, "language": self.language, "prompt": self.prompt},
                    "turn_detection": turn}},
                "include": None}


def _refuse_set(fields: dict, names: tuple[str, ...], where: str, why: str) -> None:
    for name in names:
        if fields.get(name) not in (None, False, []):
            raise EventError(f"{where}.{name} is not supported: {why}", "unsupported_field", f"{where}.{name}")


def _in_range(value: float, bounds: tuple[float, float], param: str) -> None:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise EventError(f"{param} must be between {lo:g} and {hi:g}, got {value:g}", "invalid_value", param)


def _format(config: SessionConfig, fmt: dict | None) -> SessionConfig:
    if fmt is None:
        raise EventError(f"{INPUT}.format cannot be null: send {{'type': '{PCM}', 'rate': 24000}}",
                         "invalid_value", f"{INPUT}.format")
    kind = fmt.get("type") or PCM
    if kind != PCM:
        raise EventError(f"audio format {kind!r} is not supported: send 16-bit little-endian mono PCM "
                         f"({PCM}) at 24000 or 16000 Hz", "invalid_value", f"{INPUT}.format.type")
    rate = fmt.get("rate") or DEFAULT_RATE_HZ
    if rate not in RATES_HZ:
        raise EventError(f"{PCM} at {rate} Hz is not supported: use 24000 or 16000", "invalid_value",
                         f"{INPUT}.format.rate")
    return replace(config, rate_hz=rate)


def _transcription(config: SessionConfig, fields: dict | None, engine: Engine, tenant: str) -> SessionConfig:
    where = f"{INPUT}.transcription"
    if fields is None:
        raise EventError(f"{where} cannot be null: a transcription session always transcribes",
                         "invalid_value", where)
    _refuse_set(fields, ("delay", "keywords", "languages"), where, "SplitASR takes one language and a prompt")
    if "model" in fields:
        model = fields["model"] or engine.backbone_name
        try:
            adapter = engine.resolve_model(tenant, model)
        except SplitASRError as exc:  # unknown model, or a rescorer named as one
            raise EventError.from_error(exc, f"{where}.model") from None
        config = replace(config, model=model, adapter=adapter)
    if "language" in fields:
        config = replace(config, language=_language(engine, fields["language"], f"{where}.language"))
    if "prompt" in fields:
        config = replace(config, prompt=fields["prompt"] or None)
    return config


def _language(engine: Engine, language: str | None, param: str) -> str | None:
    if not language:
        return None
    backbone = engine.backbone
    code = language.lower().strip()
    known = ("en", "english") if not getattr(backbone, "multilingual", False) else getattr(backbone, "languages", ())
    if known and code not in known:
        from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

        if TO_LANGUAGE_CODE.get(code) not in known:
            raise EventError(f"language {language!r} is not available on backbone {engine.backbone_name!r}"
                             + ("" if getattr(backbone, "multilingual", False) else " (English only)"),
                             "invalid_value", param)
    return code


def _turn_detection(config: SessionConfig, fields: dict | None) -> SessionConfig:
    where = f"{INPUT}.turn_detection"
    if fields is None:
        return replace(config, vad=False)
    if fields.get("type") != "server_vad":
        raise EventError(f"turn detection {fields.get('type')!r} is not supported: use 'server_vad', or null "
                         "for commits by the client", "invalid_value", f"{where}.type")
    _refuse_set(fields, ("create_response", "interrupt_response", "idle_timeout_ms", "eagerness"), where,
                "a transcription session creates no responses")
    config = replace(config, vad=True)
    if fields.get("threshold") is not None:
        _in_range(fields["threshold"], THRESHOLD_RANGE, f"{where}.threshold")
        config = replace(config, threshold=float(fields["threshold"]))
    if fields.get("prefix_padding_ms") is not None:
        _in_range(fields["prefix_padding_ms"], PREFIX_PADDING_MS_RANGE, f"{where}.prefix_padding_ms")
        config = replace(config, prefix_padding_ms=int(fields["prefix_padding_ms"]))
    if fields.get("silence_duration_ms") is not None:
        _in_range(fields["silence_duration_ms"], SILENCE_MS_RANGE, f"{where}.silence_duration_ms")
        config = replace(config, silence_duration_ms=int(fields["silence_duration_ms"]))
    return config


def apply_update(config: SessionConfig, session: dict[str, Any], engine: Engine, tenant: str) -> SessionConfig:
    """The configuration after ``session.update`` (``session``: only the fields the client sent)."""
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise EventError(f"session.type {kind!r} is not available: SplitASR serves transcription sessions",
                         "invalid_value", "session.type")
    _refuse_set(session, ("include",), "session", "no logprobs are produced")
    audio = session.get("audio") or {}
    fields = audio.get("input") or {}
    _refuse_set(fields, ("noise_reduction",), INPUT, "audio reaches the VAD and the model as sent")
    if "format" in fields:
        config = _format(config, fields["format"])
    if "transcription" in fields:
        config = _transcription(config, fields["transcription"], engine, tenant)
    if "turn_detection" in fields:
        config = _turn_detection(config, fields["turn_detection"])
    return config
