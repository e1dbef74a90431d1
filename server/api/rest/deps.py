"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from ...config import Settings
from ...engine.engine import Engine
from ...tenants import ApiKeys


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def client_address(request: Request) -> str:
    """The client's address, as the access log shows it."""
    return request.client.host if request.client else "unknown"


def get_tenant(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    keys: ApiKeys = request.app.state.api_keys
    engine = request.app.state.engine
    tenant = engine.auth_limiter.authenticate(keys, authorization, client_address(request), "rest")
    engine.rate_limiter.check(tenant)
    return tenant


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TenantDep = Annotated[str, Depends(get_tenant)]
