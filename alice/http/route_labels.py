"""BentoML's request metrics and access log, labelled by route instead of by raw path.

BentoML 1.4 labels `bentoml_service_request_*` on the open `/metrics` and writes its access
log with `scope["path"]`, the raw path a client sent (`RunnerTrafficMetricsMiddleware` in
bentoml/_internal/server/http/instruments.py, `AccessLogMiddleware` in .../http/access.py).
Both run outside any middleware a service adds, and BentoML has no setting for the label
(`metrics.enabled: false` removes `/metrics` too). So every image fetched published its
name, the only protection an image has, and every distinct path a stranger sent added about
20 series to `/metrics`, kept until restart.

`install()` has BentoML build its app with subclasses of those two that see the template of
the route the path matches (`/images/{name}`, `/v1/jobs/{job_id}`, `/web/{path}`) or
`unmatched`; everything inside them still gets the real path. Call it before BentoML builds
the app (service.py does, at import). tests/unit/test_route_labels.py fails if an upgrade
moves or changes what is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

UNMATCHED = "unmatched"  # routes that do not exist: one label, whatever the path
_ORIGINAL_SCOPE = "alice.original_scope"
_LABEL = "alice.route_label"


def route_template(routes: Iterable[Any], path: str, method: str | None) -> str | None:
    """The path template of the route Starlette would pick for `method path`, or None.

    As Starlette's router: the first route whose path and method match, else the first whose
    path matches (that request gets a 405, but the route exists). Routes are read by their
    compiled `path_regex` and `path_format`, which Starlette's routes and mounts and FastAPI's
    routes all have; FastAPI 0.165 keeps an included router's routes behind
    `effective_route_contexts()`.
    """
    partial: str | None = None
    for route in flattened(routes):
        match = route.path_regex.match(path)
        if match is None:
            continue
        methods = getattr(route, "methods", None)
        if isinstance(route, Mount):
            if route.routes:  # a mounted app: the route inside it, if any (BentoML mounts ALICE's at /)
                inner = route_template(route.routes, "/" + match["path"], method)
                if inner is None:
                    continue
                template = route.path + inner
            else:  # an app without routes (static files): the mount is the route
                template = route.path_format
        else:
            template = route.path_format
        if methods is None or method in methods:
            return template
        partial = partial or template
    return partial


def flattened(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route, those of included routers too."""
    for route in routes:
        if hasattr(route, "effective_route_contexts"):
            yield from route.effective_route_contexts()
        elif hasattr(route, "path_regex") and hasattr(route, "path_format"):
            yield route


def route_label(scope: Scope) -> str:
    """The bounded label for a request to the Starlette app in `scope["app"]`."""
    if _LABEL not in scope:
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", [])
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root):]
        scope[_LABEL] = route_template(routes, path, scope.get("method")) or UNMATCHED
    return scope[_LABEL]


def _labelled(middleware: type[Any]) -> type[Any]:
    """`middleware`, seeing the route label as the path; the app it wraps gets the real scope."""

    class Labelled(middleware):  # type: ignore[misc, valid-type]
        def __init__(self, app: ASGIApp, **options: Any) -> None:
            super().__init__(_real_scope(app), **options)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] not in ("http", "websocket"):
                await self.app(scope, receive, send)
                return
            labelled = {**scope, "path": route_label(scope), _ORIGINAL_SCOPE: scope}
            await super().__call__(labelled, receive, send)

    Labelled.__name__ = Labelled.__qualname__ = f"RouteLabelled{middleware.__name__}"
    return Labelled


def _real_scope(app: ASGIApp) -> ASGIApp:
    async def with_real_scope(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope.get(_ORIGINAL_SCOPE, scope), receive, send)

    return with_real_scope


def install() -> None:
    """Replace BentoML's two middlewares where its service app imports them (at build time)."""
    from bentoml._internal.server.http import access, instruments

    if not getattr(instruments.RunnerTrafficMetricsMiddleware, "alice_route_labelled", False):
        instruments.RunnerTrafficMetricsMiddleware = _labelled(instruments.RunnerTrafficMetricsMiddleware)
        instruments.RunnerTrafficMetricsMiddleware.alice_route_labelled = True
    if not getattr(access.AccessLogMiddleware, "alice_route_labelled", False):
        access.AccessLogMiddleware = _labelled(access.AccessLogMiddleware)
        access.AccessLogMiddleware.alice_route_labelled = True
