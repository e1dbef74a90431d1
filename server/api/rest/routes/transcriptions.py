"""``POST /v1/audio/transcriptions``: compatible with OpenAI's endpoint (the ``openai`` SDK works as is)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from ....engine.engine import AdapterRef
from ....engine.file_stream import open_file_transcript
from ....errors import InvalidInput
from ..audio import (
    BEAM_HELP,
    FILE_HELP,
    VAD_HELP,
    ResponseFormat,
    decoding_options,
    read_upload,
    respond,
    vad_options,
)
from ..deps import EngineDep, SettingsDep, TenantDep
from ..disconnect import unless_disconnected
from ..fields import FieldsChecked
from ..sse import STREAM_FORMATS, event_stream

router = APIRouter(tags=["audio"])


@router.post(
    "/v1/audio/transcriptions",
    summary="Transcribe audio",
    responses={400: {"description": "bad audio, or a field this server does not implement"},
               404: {"description": "unknown model"}, 413: {"description": "upload too large"},
               429: {"description": "server at capacity"}},
)
async def create_transcription(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    tenant: TenantDep,
    _fields: FieldsChecked,
    file: Annotated[UploadFile, File(description=FILE_HELP)],
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
    beam_size: Annotated[int | None, Form(ge=1, le=16, description=BEAM_HELP)] = None,
    vad_filter: Annotated[bool | None, Form(description=VAD_HELP)] = None,
    rescore: Annotated[str | None, Form(
        description="SplitASR extension: one of your rescorers (uploaded to /v1/adapters): rescore the N-best "
                    "list. Omitted: your rescorer named 'default', if any; 'none': no rescoring"
    )] = None,
    stream: Annotated[bool, Form(
        description="Send the transcript as server-sent events while it is decoded (response_format json or text)"
    )] = False,
) -> Response:
    data = await read_upload(file)
    granularities = set(timestamp_granularities or ["segment"])
    if timestamp_granularities and response_format != "verbose_json":
        raise InvalidInput("timestamp_granularities[] needs response_format=verbose_json",
                           param="timestamp_granularities[]")
    if include and response_format != "json":
        raise InvalidInput("include[]=logprobs needs response_format=json", param="include[]")
    options = decoding_options(engine, settings, beam_size=beam_size, language=language, temperature=temperature,
                               prompt=prompt, word_timestamps="word" in granularities, logprobs=bool(include))
    if stream:
        if response_format not in STREAM_FORMATS:
            raise InvalidInput(f"stream=true sends plain text events: use response_format json or text, "
                               f"not {response_format!r}", param="response_format")
        if vad_filter:  # the server's default (SPLITASR_VAD_FILTER) does not apply to streamed files
            raise InvalidInput("vad_filter is not available with stream=true; leave one of them out",
                               param="vad_filter")
        return event_stream(await open_file_transcript(engine, data, options, tenant=tenant,
                                                       adapter=AdapterRef(model), rescore=rescore))
    vad = vad_options(settings, vad_filter)
    result = await unless_disconnected(
        request, engine.transcribe(data, options, tenant=tenant, adapter=AdapterRef(model), rescore=rescore, vad=vad))
    return respond(result, response_format, segments="segment" in granularities,
                   with_words="word" in granularities)
