"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import EngineDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the backbone is loaded and warmed up")
async def readyz(engine: EngineDep) -> JSONResponse:
    if engine.ready:
        return JSONResponse({"status": "ready", "backbone": engine.backbone_name})
    if engine.load_error:
        return JSONResponse({"status": "failed", "error": engine.load_error}, status_code=503)
    return JSONResponse({"status": "loading", "backbone": engine.backbone_name}, status_code=503)
