"""``POST /v1/audio/transcriptions``: compatible with OpenAI's endpoint (the ``openai`` SDK works as is)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ....decoding import DecodingOptions
from ....engine.file_stream import open_file_transcript
from ....errors import BadAudio, InvalidInput
from ....formats import render
from ..deps import EngineDep, SettingsDep, TenantDep
from ..sse import STREAM_FORMATS, event_stream

router = APIRouter(tags=["audio"])

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


@router.post(
    "/v1/audio/transcriptions",
    summary="Transcribe audio",
    responses={400: {"description": "bad audio or parameters"}, 404: {"description": "unknown model"},
               413: {"description": "upload too large"}, 429: {"description": "server at capacity"}},
)
async def create_transcription(
    engine: EngineDep,
    settings: SettingsDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(description="Audio file: wav, flac, mp3, ogg, opus, webm, m4a ...")],
    model: Annotated[str, Form(description="The backbone name, 'whisper-1', or one of your adapters")],
    language: Annotated[str | None, Form(description="ISO-639-1 language code; detected if omitted")] = None,
    prompt: Annotated[str | None, Form(description="Text to guide vocabulary and style")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    timestamp_granularities: Annotated[
        list[Literal["segment", "word"]] | None, Form(
            alias="timestamp_granularities[]",
            description="verbose_json: 'segment' (the default) and/or 'word' (word times by alignment)")
    ] = None,
    include: Annotated[list[Literal["logprobs"]] | None, Form(
        alias="include[]", description="'logprobs': each token's log-probability (response_format json)")
    ] = None,
    beam_size: Annotated[int | None, Form(ge=1, le=16, description="SplitASR extension: beam width")] = None,
    rescore: Annotated[str | None, Form(
        description="SplitASR extension: one of your rescorers (uploaded to /v1/adapters): rescore the N-best "
                    "list. Omitted: your rescorer named 'default', if any; 'none': no rescoring"
    )] = None,
    stream: Annotated[bool, Form(
        description="Send the transcript as server-sent events while it is decoded (response_format json or text)"
    )] = False,
) -> Response:
    data = await file.read()
    if not data:
        raise BadAudio(f"uploaded file {file.filename!r} is empty (0 bytes)")
    granularities = set(timestamp_granularities or ["segment"])
    if timestamp_granularities and response_format != "verbose_json":
        raise InvalidInput("timestamp_granularities[] needs response_format=verbose_json")
    if include and response_format != "json":
        raise InvalidInput("include[]=logprobs needs response_format=json")
    options = DecodingOptions(
        beam_size=beam_size or settings.default_beam_size,
        language=language or None,
        temperature=temperature,
        prompt=prompt or None,
        word_timestamps="word" in granularities,
        logprobs=bool(include),
    )
    if stream:
        if response_format not in STREAM_FORMATS:
            raise InvalidInput(f"stream=true sends plain text events: use response_format json or text, "
                               f"not {response_format!r}")
        return event_stream(await open_file_transcript(engine, data, options, tenant=tenant, model=model,
                                                       rescore=rescore))
    result = await engine.transcribe(data, options, tenant=tenant, model=model, rescore=rescore)
    body = render(result, response_format, segments="segment" in granularities,
                  with_words="word" in granularities)
    if isinstance(body, dict):
        return JSONResponse(body)
    media = {"vtt": "text/vtt", "srt": "application/x-subrip"}.get(response_format, "text/plain")
    return PlainTextResponse(body, media_type=media)
