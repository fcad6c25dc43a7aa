"""Every route the server exposes, read from the app itself, refuses a missing or wrong key,
except the documented open ones."""

from __future__ import annotations

import re

import pytest
from starlette.routing import Mount

from alice.http.app import http_app
from alice.http.auth import is_open

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

DUMMY = {"name": "0" * 32 + ".png", "model_id": "sd/alice-demo", "job_id": "job-x", "task_id": "dl-x", "path": "x"}


def app_routes(routes, prefix=""):
    """(method, path) of every route of a FastAPI app, through included routers and mounts."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's included router
            yield from app_routes(route.original_router.routes, prefix + (route.include_context.prefix or ""))
        elif isinstance(route, Mount):
            yield "GET", prefix + route.path + "/"
        else:
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                if method != "HEAD":
                    yield method, prefix + route.path


def exposed_routes():
    from service import Alice

    routes = [("POST", api.route) for api in Alice.apis.values()] + list(app_routes(http_app.routes))
    routes += [("GET", "/"), ("GET", "/schema.json"), ("GET", "/docs.json")]
    return [(m, re.sub(r"\{(\w+)(:\w+)?\}", lambda g: DUMMY.get(g.group(1), "x"), p)) for m, p in routes]


def test_the_route_list_is_complete():
    paths = {path for _, path in exposed_routes()}
    assert {"/generate", "/v1/chat/completions", "/chat/completions", "/v1/models", "/v1/jobs",
            "/v1/models/download/status", "/v1/images/edits"} <= paths


@pytest.mark.parametrize(("method", "path"), exposed_routes())
def test_route_refuses_without_a_key(keyed_client, method, path):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-Api-Key": "nope"}):
        response = keyed_client.request(method, path, headers=headers)
        if is_open(path):
            assert response.status_code != 401, path
        else:
            assert response.status_code == 401, (method, path, response.status_code)
