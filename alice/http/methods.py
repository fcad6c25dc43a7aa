"""Which methods a path takes, for a 405's `Allow` (RFC 9110 requires it).

Starlette names the methods of the first route whose path matches; ALICE has several routes
on one path (`GET` and `DELETE /v1/models/{id}` in two routers), and catch-alls
(`/v1/models/{model_id:path}`) that match the manager's own paths too.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from alice.http.route_labels import flattened


def _catch_all(route: Any) -> bool:
    """`/v1/models/{model_id:path}`: a route whose last part takes any path."""
    return getattr(route, "path", "").endswith(":path}")


def allowed_methods(routes: list[Any], path: str) -> list[str]:
    """The methods of the routes matching `path`: the specific ones if any match, else the catch-alls."""
    matching = [route for route in flattened(routes)
                if getattr(route, "path_regex", None) is not None and route.path_regex.match(path)]
    specific = [route for route in matching if not _catch_all(route)]
    methods: set[str] = set()
    for route in specific or matching:
        methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def refuse_other_routes_path(request: Request, name: str) -> None:
    """A catch-all model route given a path that is another route's (`DELETE
    /v1/models/download/status/x`): 405, as that route would answer, rather than "no such model"
    (a stored model's name holds no `/`)."""
    if "/" not in name:
        return
    specific = [route for route in flattened(request.app.routes)
                if getattr(route, "path_regex", None) is not None and not _catch_all(route)
                and route.path_regex.match(request.url.path)]
    if specific:
        raise HTTPException(405)
