"""``GET /metrics``: Prometheus text exposition (no API key: scrape it from inside your network)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ....observability import CONTENT_TYPE_LATEST, exposition

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
