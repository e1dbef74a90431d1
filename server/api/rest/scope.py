"""What the middlewares read from an ASGI scope before the router runs: the client and the route."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute, Match
from starlette.types import Scope


def client_host(scope: Scope) -> str:
    """The client's address (the peer's, or a trusted proxy's ``X-Forwarded-For`` client)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def find_route(scope: Scope, routes: Iterable[BaseRoute] | None = None) -> tuple[Match, BaseRoute | None]:
    """The route that takes this request (FULL), else one that takes its path with another method
    (PARTIAL), else (NONE, None). Descends into included routers, whose routes carry the paths."""
    if routes is None:
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
    partial = None
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            match, found = find_route(scope, included.routes)
        else:
            match, found = route.matches(scope)[0], route
        if match == Match.FULL:
            return match, found
        if match == Match.PARTIAL and partial is None:
            partial = found
    return (Match.PARTIAL, partial) if partial is not None else (Match.NONE, None)
