"""``/v1/adapters``: a tenant's own adapter files (upload, list, describe, delete).

An upload is an adapter ``.safetensors`` file, a rescorer file, or a zipped PEFT LoRA folder
(``adapter_config.json`` + ``adapter_model.safetensors``), converted on arrival.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from ....adapters.peft_zip import adapter_file
from ....errors import InvalidAdapter
from ....storage import AdapterRecord
from ..deps import EngineDep, StoreDep, TenantDep
from ..fields import FieldsChecked
from .jobs import adapter_download

router = APIRouter(tags=["adapters"])


def _card(r: AdapterRecord) -> dict:
    return {"object": "adapter", "id": r.name, "sha256": r.sha256, "kind": r.kind, "bytes": r.size,
            "created_at": int(r.created_at)}


@router.post("/v1/adapters", summary="Upload (or replace) an adapter", status_code=201)
async def upload_adapter(
    engine: EngineDep,
    tenant: TenantDep,
    _fields: FieldsChecked,
    file: Annotated[UploadFile, File(
        description="An adapter or rescorer .safetensors file, or a zipped PEFT LoRA folder "
                    "(adapter_config.json + adapter_model.safetensors)")],
    name: Annotated[str, Form(description="Name to use as `model` in transcription requests")],
    sha256: Annotated[str | None, Form(description="Optional: the uploaded file's sha256, checked on arrival")] = None,
) -> dict:
    data = await file.read()
    if not data:
        raise InvalidAdapter("adapter file is empty (0 bytes)")
    data, expected, converted = await asyncio.to_thread(adapter_file, data, engine.spec, engine.limits, sha256)
    record = await asyncio.to_thread(engine.put_adapter, tenant, name, data, expected)
    return {**_card(record), "converted_from": converted} if converted else _card(record)


@router.get("/v1/adapters", summary="List your adapters")
async def list_adapters(store: StoreDep, tenant: TenantDep) -> dict:
    return {"object": "list", "data": [_card(r) for r in store.list(tenant)]}


@router.get("/v1/adapters/{name}", summary="Describe one adapter")
async def get_adapter(name: str, store: StoreDep, tenant: TenantDep) -> dict:
    return _card(store.get(tenant, name))


@router.get("/v1/adapters/{name}/content", summary="Download an adapter file", response_class=Response)
async def get_adapter_content(name: str, store: StoreDep, tenant: TenantDep) -> Response:
    record = store.get(tenant, name)
    data = await asyncio.to_thread(store.read, record.sha256)
    return adapter_download(data, f"{record.name}.safetensors", record.sha256)


@router.delete("/v1/adapters/{name}", summary="Delete an adapter")
async def delete_adapter(name: str, store: StoreDep, tenant: TenantDep) -> dict:
    record = store.delete(tenant, name)
    return {**_card(record), "deleted": True}
