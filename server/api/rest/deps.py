"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from ...config import Settings
from ...engine.engine import Engine
from ...jobs import JobManager
from ...tenants import ApiKeys


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    keys: ApiKeys = request.app.state.api_keys
    tenant = keys.authenticate(authorization)
    request.app.state.engine.rate_limiter.check(tenant)
    return tenant


EngineDep = Annotated[Engine, Depends(get_engine)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TenantDep = Annotated[str, Depends(get_tenant)]
