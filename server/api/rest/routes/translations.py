"""``POST /v1/audio/translations``: speech in any language to English text, in OpenAI's shape.

Needs a multilingual backbone (e.g. ``base``); an English-only one answers 400.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from ....engine.engine import AdapterRef
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

router = APIRouter(tags=["audio"])


@router.post(
    "/v1/audio/translations",
    summary="Translate audio into English",
    responses={400: {"description": "bad audio, an English-only backbone, or a field this server does not "
                                    "implement"},
               404: {"description": "unknown model"}, 413: {"description": "upload too large"},
               429: {"description": "server at capacity"}},
)
async def create_translation(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    tenant: TenantDep,
    _fields: FieldsChecked,
    file: Annotated[UploadFile, File(description=FILE_HELP)],
    model: Annotated[str, Form(description="The backbone name, 'whisper-1', or one of your adapters")],
    prompt: Annotated[str | None, Form(description="English text to guide vocabulary and style")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float, Form(ge=0.0, le=1.0)] = 0.0,
    beam_size: Annotated[int | None, Form(ge=1, le=16, description=BEAM_HELP)] = None,
    vad_filter: Annotated[bool | None, Form(description=VAD_HELP)] = None,
) -> Response:
    data = await read_upload(file)
    options = decoding_options(engine, settings, beam_size=beam_size, temperature=temperature, prompt=prompt,
                               task="translate")
    work = engine.transcribe(data, options, tenant=tenant, adapter=AdapterRef(model), rescore="none",
                             vad=vad_options(settings, vad_filter))
    result = await unless_disconnected(request, work)
    return respond(result, response_format, task="translate")
