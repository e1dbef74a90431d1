"""Transcript output formats shared by the CLI and the REST API (text, json, srt, vtt, verbose_json)."""

from __future__ import annotations

from typing import Any

from .decoding import Transcription

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")

# ISO 639-1 -> the English language name OpenAI's verbose_json reports
def language_name(code: str) -> str:
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return LANGUAGES.get(code, code)


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(t: Transcription) -> str:
    blocks = [
        f"{i}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(t: Transcription) -> str:
    cues = [f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text}\n" for s in t.segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_verbose_json(t: Transcription, task: str = "transcribe") -> dict[str, Any]:
    """The shape of OpenAI's ``verbose_json`` response (segments with start/end in seconds)."""
    body: dict[str, Any] = {
        "task": task,
        "language": language_name(t.language),
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [
            {"id": s.id, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens,
             "temperature": 0.0}
            for s in t.segments
        ],
    }
    if len(t.nbest) > 1:
        body["nbest"] = [{"text": h.text, "logprob": h.logprob, "avg_logprob": h.avg_logprob} for h in t.nbest]
    return body


def render(t: Transcription, fmt: str) -> str | dict[str, Any]:
    """Render as a string (text, srt, vtt) or a JSON-able dict (json, verbose_json)."""
    if fmt == "json":
        return {"text": t.text}
    if fmt == "text":
        return t.text + "\n"
    if fmt == "srt":
        return to_srt(t)
    if fmt == "vtt":
        return to_vtt(t)
    if fmt == "verbose_json":
        return to_verbose_json(t)
    raise ValueError(f"unknown format {fmt!r}")
