"""``GET /v1/status``: what the server is doing, for people and the web page (no API key, like /metrics)."""

from __future__ import annotations

from fastapi import APIRouter

from .... import __version__
from ..deps import EngineDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/v1/status", summary="Server status: readiness, backbone, queue, adapter slots, streams")
async def status(engine: EngineDep, settings: SettingsDep) -> dict:
    worker, pool = engine.worker, engine.pool
    state = "ready" if engine.ready else "failed" if engine.load_error else "loading"
    return {
        "status": state,
        "version": __version__,
        "backbone": engine.backbone_name,
        "device": str(engine.backbone.device) if engine.backbone is not None else None,
        "queue": {"depth": worker.pending if worker else 0, "capacity": settings.max_queued_requests},
        "batch_rows": {"live": worker.live_rows if worker else 0, "capacity": settings.max_batch_rows},
        "adapter_slots": {"used": pool.occupancy if pool else 0, "capacity": settings.adapter_slots},
        "streams": {"active": engine.streams.active, "limit": engine.streams.limit},
    }
