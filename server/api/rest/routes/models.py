"""``GET /v1/models``: what ``model`` may name in a transcription request."""

from __future__ import annotations

from fastapi import APIRouter

from ....errors import NotFound
from ..deps import EngineDep, TenantDep

router = APIRouter(tags=["models"])


def _card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "splitasr"}


@router.get("/v1/models", summary="List models")
async def list_models(engine: EngineDep, tenant: TenantDep) -> dict:
    return {"object": "list", "data": [_card(n) for n in engine.model_names(tenant)]}


@router.get("/v1/models/{model_id}", summary="Describe one model")
async def get_model(model_id: str, engine: EngineDep, tenant: TenantDep) -> dict:
    names = engine.model_names(tenant)
    if model_id not in names:
        raise NotFound(f"model {model_id!r} does not exist; available: {', '.join(names)}")
    return _card(model_id)
