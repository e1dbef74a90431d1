"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from ...config import Settings
from ...engine.engine import Engine
from ...jobs import JobManager
from ...storage import BaseStore
from .auth import TENANT_STATE


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_store(request: Request) -> BaseStore:
    return request.app.state.store


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The tenant the :class:`~.auth.AuthGuard` found for this request (``authorization`` is listed
    for the API docs; the guard has checked it before the body was read)."""
    tenant = getattr(request.state, TENANT_STATE, None)
    if tenant is None:  # an app assembled without the guard: authenticate here
        tenant = request.app.state.api_keys.authenticate(authorization)
    return tenant


EngineDep = Annotated[Engine, Depends(get_engine)]
StoreDep = Annotated[BaseStore, Depends(get_store)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TenantDep = Annotated[str, Depends(get_tenant)]
