"""What the audio routes (transcriptions, translations) share: fields, decoding options, responses."""

from __future__ import annotations

from typing import Literal

from fastapi import UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ...audio.vad_filter import VadFilterOptions
from ...config import Settings
from ...decoding import DecodingOptions, Transcription
from ...decoding.formats import render
from ...engine.applicability import check_options
from ...engine.engine import Engine
from ...errors import BadAudio

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
MEDIA_TYPES = {"vtt": "text/vtt", "srt": "application/x-subrip"}

FILE_HELP = "Audio file: wav, flac, mp3, ogg, opus, webm, m4a ..."
BEAM_HELP = "SplitASR extension: beam width"
VAD_HELP = ("SplitASR extension: drop long silences before decoding (Silero VAD; times stay those of the "
            "original audio). Omitted: the server's SPLITASR_VAD_FILTER")


async def read_upload(file: UploadFile) -> bytes:
    data = await file.read()
    if not data:
        raise BadAudio(f"uploaded file {file.filename!r} is empty (0 bytes)")
    return data


def decoding_options(engine: Engine, settings: Settings, *, beam_size: int | None, temperature: float,
                     prompt: str | None, language: str | None = None, task: str = "transcribe",
                     word_timestamps: bool = False, logprobs: bool = False) -> DecodingOptions:
    """The request's options, checked against what the served backbone can do."""
    options = DecodingOptions(beam_size=beam_size or settings.default_beam_size, language=language or None,
                              temperature=temperature, prompt=prompt or None, task=task,
                              word_timestamps=word_timestamps, logprobs=logprobs)
    check_options(engine.backbone, options)
    return options


def vad_options(settings: Settings, vad_filter: bool | None) -> VadFilterOptions | None:
    """The VAD filter a request asked for (``None`` = the server's default), or None for none."""
    wanted = settings.vad_filter if vad_filter is None else vad_filter
    return VadFilterOptions(min_silence_duration_ms=settings.vad_min_silence_ms) if wanted else None


def respond(result: Transcription, response_format: str, task: str = "transcribe", *, segments: bool = True,
            with_words: bool = False) -> Response:
    """The response body in ``response_format``, as OpenAI shapes it for ``task``.

    A translation's verbose_json names its output language, which is always English.
    """
    body = render(result, response_format, task=task, segments=segments, with_words=with_words)
    if not isinstance(body, dict):
        return PlainTextResponse(body, media_type=MEDIA_TYPES.get(response_format, "text/plain"))
    if task == "translate" and response_format == "verbose_json":
        body["language"] = "english"
    return JSONResponse(body)
