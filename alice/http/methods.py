"""Which methods a path takes, for a 405's `Allow` (RFC 9110 requires it).

Starlette names the methods of the first route whose path matches; ALICE has several routes
on one path (`GET` and `DELETE /v1/models/{id}` in two routers), and routes whose parameters
also match another route's literal path (`DELETE /v1/models/download/{task_id}` matches
`/v1/models/download/status`, `/v1/models/{model_id:path}` nearly everything below it).
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from alice.http.route_labels import flattened


def _parameters(route: Any) -> int:
    """How much of a path the route leaves to parameters: one ending in a catch-all (`:path}`) the most."""
    path = getattr(route, "path", "")
    return path.count("{") + (100 if path.endswith(":path}") else 0)


def _matching(routes: Any, path: str) -> list[Any]:
    return [route for route in flattened(routes)
            if getattr(route, "path_regex", None) is not None and route.path_regex.match(path)]


def allowed_methods(routes: list[Any], path: str) -> list[str]:
    """The methods of the most specific routes matching `path` (fewest parameters)."""
    matching = _matching(routes, path)
    if not matching:
        return []
    fewest = min(_parameters(route) for route in matching)
    methods: set[str] = set()
    for route in matching:
        if _parameters(route) == fewest:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def refuse_other_routes_path(request: Request) -> None:
    """A route whose parameter took a path that a more specific route owns (`DELETE
    /v1/models/download/status`: no download is called `status`): 405, as that path's own
    route answers the methods it lacks, rather than "no such download"."""
    route = request.scope.get("route")
    own = _parameters(route) if route is not None else 0
    if any(_parameters(other) < own for other in _matching(request.app.routes, request.url.path)):
        raise HTTPException(405)
