"""``/v1/adapters/jobs``: training jobs (enrollment), shaped like OpenAI's fine-tuning jobs.

``POST`` takes a multipart form: the recordings (``file``, repeated) and a NeMo JSONL ``manifest``
whose ``audio_filepath`` names them, or one ``archive`` (zip) holding both; plus the parameters as
form fields. The route only converts the form; :class:`~splitasr.jobs.JobManager` does the rest.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ....errors import InvalidInput
from ....jobs import JobManager, JobParameters, JobRequest, unpack_zip
from ..deps import JobsDep, SettingsDep, TenantDep

router = APIRouter(tags=["training jobs"])

INT_FIELDS = ("rank", "experts", "epochs", "batch_size", "seed")
FLOAT_FIELDS = ("alpha", "learning_rate", "dev")
TEXT_FIELDS = ("kind", "targets", "gate", "name")
FILE_FIELDS = ("file", "manifest", "archive")
KNOWN_FIELDS = (*FILE_FIELDS, *TEXT_FIELDS, *INT_FIELDS, *FLOAT_FIELDS, "store")
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}
MAX_FORM_FIELDS = 32
HEARTBEAT_S = 15.0  # an idle event stream sends a comment this often, so proxies keep it open


def _number(field: str, raw: str, kind: type) -> int | float:
    try:
        value = kind(raw.strip())
    except ValueError:
        raise InvalidInput(f"{field} must be {'an integer' if kind is int else 'a number'}, got {raw[:40]!r}") from None
    if kind is float and not math.isfinite(value):
        raise InvalidInput(f"{field} must be a finite number, got {raw[:40]!r}")
    return value


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise InvalidInput(f"store must be true or false, got {raw[:40]!r}")
    return value in _TRUE


def _parameters(values: dict[str, str]) -> JobParameters:
    given: dict = {}
    for field, raw in values.items():
        if field in INT_FIELDS:
            given[field] = _number(field, raw, int)
        elif field in FLOAT_FIELDS:
            given[field] = _number(field, raw, float)
        elif field in ("kind", "targets", "gate"):
            given[field] = raw.strip()
    return JobParameters(**given)


async def _read_form(request: Request, max_files: int) -> tuple[dict[str, str], dict[str, list[UploadFile]]]:
    try:
        form = await request.form(max_files=max_files, max_fields=MAX_FORM_FIELDS, max_part_size=4 * 1024 * 1024)
    except HTTPException as exc:
        raise InvalidInput(f"unreadable multipart form: {exc.detail}") from None
    values: dict[str, str] = {}
    files: dict[str, list[UploadFile]] = {}
    for field, value in form.multi_items():
        if field not in KNOWN_FIELDS:
            raise InvalidInput(f"unknown field {field[:40]!r}; a job takes {', '.join(KNOWN_FIELDS)}")
        if isinstance(value, UploadFile):
            if field not in FILE_FIELDS:
                raise InvalidInput(f"{field} must be a plain form field, not a file")
            files.setdefault(field, []).append(value)
        elif field == "manifest":
            values[field] = value
        elif field in FILE_FIELDS:
            raise InvalidInput(f"{field} must be a file part")
        elif field in values:
            raise InvalidInput(f"{field} is given twice")
        else:
            values[field] = value
    return values, files


async def _job_request(request: Request, max_files: int, max_bytes: int) -> JobRequest:
    values, files = await _read_form(request, max_files)
    manifest_text = values.pop("manifest", None)
    name = values.pop("name", None) or None
    store = _flag(values.pop("store")) if "store" in values else True
    parameters = _parameters(values)
    if "archive" in files:
        if len(files["archive"]) > 1 or "file" in files or "manifest" in files or manifest_text is not None:
            raise InvalidInput("send either one archive (a zip with manifest.jsonl and the recordings) or a "
                               "manifest and its recordings as file parts, not both")
        manifest, parts = unpack_zip(await files["archive"][0].read(), max_bytes)
    else:
        if len(files.get("manifest", [])) + (manifest_text is not None) != 1:
            raise InvalidInput("manifest is required (once): NeMo JSONL, one line per recording with "
                               "audio_filepath and text; or send an archive")
        manifest = manifest_text.encode() if manifest_text is not None else await files["manifest"][0].read()
        parts = {}
        for upload in files.get("file", []):
            if not upload.filename:
                raise InvalidInput("every file part needs a file name (the manifest's audio_filepath names it)")
            if upload.filename in parts:
                raise InvalidInput(f"two recordings are named {upload.filename[:80]!r}")
            parts[upload.filename] = await upload.read()
    return JobRequest(parameters, name, store, manifest, parts)


def _form_schema() -> dict:
    """The multipart body in the OpenAPI docs (the route reads the form itself: part names vary)."""
    text = {"type": "string"}
    fields: dict = {"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "the recordings (repeat the field); each at most 30 s"},
                    "manifest": {"type": "string", "format": "binary",
                                 "description": "NeMo JSONL: audio_filepath (a recording's file name) and text"},
                    "archive": {"type": "string", "format": "binary",
                                "description": "instead of file + manifest: a zip with manifest.jsonl"},
                    "name": {**text, "description": "store the adapter under this name"},
                    "store": {"type": "boolean", "default": True}}
    fields.update({f: text for f in ("kind", "targets", "gate")})
    fields.update({f: {"type": "integer"} for f in INT_FIELDS})
    fields.update({f: {"type": "number"} for f in FLOAT_FIELDS})
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": fields}}}}}


@router.post("/v1/adapters/jobs", summary="Create a training job", status_code=201, openapi_extra=_form_schema(),
             responses={400: {"description": "invalid recordings, manifest or parameters"},
                        413: {"description": "upload too large"}, 429: {"description": "too many jobs"}})
async def create_job(request: Request, jobs: JobsDep, settings: SettingsDep, tenant: TenantDep) -> dict:
    job = await _job_request(request, settings.train_max_utterances + 2, settings.train_max_upload_bytes)
    return await asyncio.to_thread(jobs.submit, tenant, job)


@router.get("/v1/adapters/jobs", summary="List your training jobs (newest first)")
async def list_jobs(jobs: JobsDep, tenant: TenantDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                    after: Annotated[str | None, Query(description="the last id of the previous page")] = None) -> dict:
    data, more = jobs.list(tenant, limit, after)
    return {"object": "list", "data": data, "has_more": more}


@router.get("/v1/adapters/jobs/{job_id}", summary="Describe a training job")
async def get_job(job_id: str, jobs: JobsDep, tenant: TenantDep) -> dict:
    return jobs.get(tenant, job_id)


@router.post("/v1/adapters/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
async def cancel_job(job_id: str, jobs: JobsDep, tenant: TenantDep) -> dict:
    return await asyncio.to_thread(jobs.cancel, tenant, job_id)


async def _events(jobs: JobManager, tenant: str, job_id: str, after: int) -> AsyncIterator[bytes]:
    async for event, job in jobs.watch(tenant, job_id, after, heartbeat=HEARTBEAT_S):
        if event is None:
            yield KEEPALIVE_COMMENT
            continue
        data = {**event, "job": {"status": job["status"], "progress": job["progress"]}}
        yield format_sse_event(data_str=json.dumps(data), event=event["type"], id=str(event["id"]))


@router.get("/v1/adapters/jobs/{job_id}/events", summary="The job's events as server-sent events",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "one event per status change, epoch and step; ends after the last"}})
async def job_events(job_id: str, jobs: JobsDep, tenant: TenantDep,
                     last_event_id: Annotated[str | None, Header(description="resume after this event id")] = None,
                     after: Annotated[int, Query(ge=0, description="start after this event id")] = 0
                     ) -> StreamingResponse:
    if last_event_id is not None:
        if not last_event_id.strip().isdigit():
            raise InvalidInput("Last-Event-ID must be an event id (a number)")
        after = max(after, int(last_event_id))
    jobs.events_after(tenant, job_id, after)  # 404 now, before the stream starts
    return StreamingResponse(_events(jobs, tenant, job_id, after), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def adapter_download(data: bytes, filename: str, sha256: str, background: BackgroundTask | None = None) -> Response:
    return Response(data, media_type="application/octet-stream", background=background,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"', "X-Adapter-SHA256": sha256})


@router.get("/v1/adapters/jobs/{job_id}/content", summary="Download the adapter a job trained",
            response_class=Response)
async def job_content(job_id: str, jobs: JobsDep, tenant: TenantDep) -> Response:
    data, job = await asyncio.to_thread(jobs.result_content, tenant, job_id)
    result = job["result"]
    # store=false: deleted from the server once the whole file has been sent
    done = BackgroundTask(jobs.downloaded, tenant, job_id)
    return adapter_download(data, f"{result['name'] or job_id}.safetensors", result["sha256"], done)
