"""Transcript output formats shared by the CLI and the REST API (text, json, srt, vtt, verbose_json)."""

from __future__ import annotations

from typing import Any

from . import Transcription

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


def usage(t: Transcription) -> dict[str, Any]:
    """OpenAI's duration usage object."""
    return {"type": "duration", "seconds": round(t.duration, 3)}


def words(t: Transcription) -> list[dict[str, Any]]:
    """Every word with its times, OpenAI's ``words`` (needs ``word_timestamps``)."""
    return [{"word": w.word.strip(), "start": w.start, "end": w.end} for s in t.segments for w in s.words or []]


def to_verbose_json(t: Transcription, task: str = "transcribe", *, segments: bool = True,
                    with_words: bool = False) -> dict[str, Any]:
    """The shape of OpenAI's ``verbose_json`` response (``TranscriptionVerbose``)."""
    body: dict[str, Any] = {
        "task": task,
        "language": language_name(t.language),
        "duration": round(t.duration, 3),
        "text": t.text,
    }
    if segments:
        body["segments"] = [
            {"id": s.id, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text, "tokens": s.tokens,
             "temperature": s.temperature, "avg_logprob": round(s.avg_logprob, 6),
             "compression_ratio": round(s.compression_ratio, 6), "no_speech_prob": round(s.no_speech_prob, 6)}
            for s in t.segments
        ]
    if with_words:
        body["words"] = words(t)
    body["usage"] = usage(t)
    if len(t.nbest) > 1:
        body["nbest"] = [{"text": h.text, "logprob": h.logprob, "avg_logprob": h.avg_logprob} for h in t.nbest]
    return body


def render(t: Transcription, fmt: str, *, task: str = "transcribe", segments: bool = True,
           with_words: bool = False) -> str | dict[str, Any]:
    """Render as a string (text, srt, vtt) or a JSON-able dict (json, verbose_json).

    ``segments`` / ``with_words``: what ``verbose_json`` lists (OpenAI's timestamp granularities).
    Token log-probabilities appear in ``json`` when the transcription carries them.
    """
    if fmt == "json":
        body: dict[str, Any] = {"text": t.text, "usage": usage(t)}
        if t.logprobs is not None:
            body["logprobs"] = [{"token": p.token, "logprob": p.logprob, "bytes": p.bytes} for p in t.logprobs]
        return body
    if fmt == "text":
        return t.text + "\n"
    if fmt == "srt":
        return to_srt(t)
    if fmt == "vtt":
        return to_vtt(t)
    if fmt == "verbose_json":
        return to_verbose_json(t, task, segments=segments, with_words=with_words)
    raise ValueError(f"unknown format {fmt!r}")
