"""The FastAPI application: routes, error handlers, limits and the backbone's lifecycle."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ... import __version__
from ...config import Settings
from ...engine.engine import Engine
from ...jobs import JobManager
from ...tenants import ApiKeys
from ...ui import STATIC_DIR
from ..realtime import route as realtime
from .auth import AuthGuard
from .errors import install_error_handlers
from .limits import BodySizeLimit
from .middleware import RequestObserver
from .routes import adapters, health, metrics, models, status, transcriptions, translations
from .routes import jobs as jobs_routes

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None, engine: Engine | None = None, api_keys: ApiKeys | None = None,
    jobs: JobManager | None = None,
) -> FastAPI:
    """Build the app. The backbone loads in the background so ``/healthz`` answers at once and
    ``/readyz`` turns ready when loading and warm-up are done. ``jobs``: the training job manager to
    share with the gRPC server (default: a new one, started and closed with the app)."""
    settings = settings or Settings()
    engine = engine or Engine(settings)
    jobs = jobs or JobManager(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = None
        if not engine.ready:
            loader = asyncio.get_running_loop().run_in_executor(None, _load_quietly, engine)
        await asyncio.to_thread(jobs.start)  # deletes recordings an earlier crash left behind
        yield
        if loader is not None and not loader.done():
            await asyncio.wait_for(asyncio.shield(loader), timeout=None)
        await asyncio.to_thread(jobs.close)
        engine.close()

    app = FastAPI(
        title="SplitASR",
        version=__version__,
        summary="Personalized speech recognition: one frozen backbone, one small adapter per user.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    # what the routes and the auth guard use of the engine's, shared with the other transports
    app.state.store = engine.store
    app.state.auth_limiter, app.state.rate_limiter = engine.auth_limiter, engine.rate_limiter
    app.state.jobs = jobs
    app.state.api_keys = api_keys or ApiKeys.load(settings.api_keys_file, settings.api_keys)
    install_error_handlers(app)
    # jobs before adapters: /v1/adapters/jobs is the job list, not an adapter named "jobs"
    for module in (health, metrics, status, models, transcriptions, translations, jobs_routes, adapters, realtime):
        app.include_router(module.router)
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")  # /ui redirects to /ui/
    multipart_overhead = 64 * 1024
    # added first = innermost. From the outside in: the client address (trusted proxies only), the
    # request id + access log + metrics (every status, 401/413 included), the key (before the body),
    # the body size
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes,
                       per_path={"/v1/adapters/jobs": settings.train_max_upload_bytes + multipart_overhead,
                                 "/v1/adapters": settings.max_adapter_bytes + multipart_overhead})
    app.add_middleware(AuthGuard, state=app.state)
    origins = [o.strip() for o in (settings.cors_origins or "").split(",") if o.strip()]
    if origins:  # bearer tokens, no cookies: credentials stay off; outside the key check, so preflights pass
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    app.add_middleware(RequestObserver)
    if settings.trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app


def _load_quietly(engine: Engine) -> None:
    try:
        engine.load()
    except Exception:  # noqa: BLE001, S110 - reported through /readyz and the log
        pass
