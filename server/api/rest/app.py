"""The FastAPI application: routes, error handlers, limits and the backbone's lifecycle."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from ... import __version__
from ...config import Settings
from ...engine.engine import Engine
from ...tenants import ApiKeys
from ...ui import STATIC_DIR
from ..realtime import route as realtime
from .errors import install_error_handlers
from .limits import BodySizeLimit
from .middleware import RequestObserver
from .routes import adapters, health, metrics, models, status, transcriptions

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, engine: Engine | None = None, api_keys: ApiKeys | None = None
) -> FastAPI:
    """Build the app. The backbone loads in the background so ``/healthz`` answers at once and
    ``/readyz`` turns ready when loading and warm-up are done."""
    settings = settings or Settings()
    engine = engine or Engine(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = None
        if not engine.ready:
            loader = asyncio.get_running_loop().run_in_executor(None, _load_quietly, engine)
        yield
        if loader is not None and not loader.done():
            await asyncio.wait_for(asyncio.shield(loader), timeout=None)
        engine.close()

    app = FastAPI(
        title="SplitASR",
        version=__version__,
        summary="Personalized speech recognition: one frozen backbone, one small adapter per user.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.api_keys = api_keys or ApiKeys.load(settings.api_keys_file, settings.api_keys)
    install_error_handlers(app)
    for module in (health, metrics, status, models, transcriptions, adapters, realtime):
        app.include_router(module.router)
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")  # /ui redirects to /ui/
    multipart_overhead = 64 * 1024
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes,
                       per_path={"/v1/adapters": settings.max_adapter_bytes + multipart_overhead})
    origins = [o.strip() for o in (settings.cors_origins or "").split(",") if o.strip()]
    if origins:  # bearer tokens, no cookies: credentials stay off
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(RequestObserver)  # added last = outermost: it sees every status, 413s included
    return app


def _load_quietly(engine: Engine) -> None:
    try:
        engine.load()
    except Exception:  # noqa: BLE001 - reported through /readyz and the log
        pass
