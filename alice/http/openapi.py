"""The OpenAPI 3.1 document served at `/docs.json`: BentoML's `/generate` and probes and the
mounted FastAPI routes, as one API.

BentoML 1.4 writes its document as OpenAPI 3.0.2 while carrying pydantic v2's JSON Schema
2020-12 (`prefixItems`, numeric `exclusiveMinimum`), which 3.0 tools refuse; it also drops the
errors, the event streams and the links. Pydantic v2 and FastAPI speak 3.1's JSON Schema
natively, so the document is 3.1 throughout, built here from the same models the routes
validate with (alice/http/documented.py), and served in place of BentoML's (`ApiDocs`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from alice import __version__
from alice.config import Settings
from alice.http import documented
from alice.http.request_rules import add_cross_field_rules
from alice.http.auth import is_open
from alice.http.web_routes import STATIC_HEADERS
from alice.protocol.native import GenerateRequest, GenerateResponse

TAGS = [
    {"name": "generation", "description": "Drawing: the native `/generate` and the job queue."},
    {"name": "openai", "description": "OpenAI's shapes: chat completions (SAM), the Images API, models."},
    {"name": "images", "description": "Stored images and the gallery."},
    {"name": "models", "description": "The model manager: search, download, load, delete."},
    {"name": "server", "description": "Health, settings, metrics and the probes."},
]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PLAIN_TEXT = {"text/plain": {"schema": {"type": "string"}}}

# Links for a client (or Schemathesis' stateful phase) to follow one answer to the next request.
LINKS: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {
    ("/v1/jobs", "post", "202"): {
        "GetJob": {"operationId": "get_job", "parameters": {"job_id": "$response.body#/id"}},
        "CancelJob": {"operationId": "cancel_job", "parameters": {"job_id": "$response.body#/id"}},
    },
    ("/generate", "post", "200"): {
        "GetImage": {"operationId": "image", "parameters": {"name": "$response.body#/images/0/name"}},
    },
    ("/v1/gallery", "get", "200"): {
        "GetImage": {"operationId": "image", "parameters": {"name": "$response.body#/data/0/name"}},
        "DeleteImage": {"operationId": "delete_image", "parameters": {"name": "$response.body#/data/0/name"}},
    },
    **{(f"/v1/models/download/{source}", "post", "202"): {
        "GetDownload": {"operationId": "download_task", "parameters": {"task_id": "$response.body#/id"}},
        "CancelDownload": {"operationId": "cancel_download", "parameters": {"task_id": "$response.body#/id"}},
    } for source in ("civitai", "huggingface", "url")},
}


def _generate_path() -> dict[str, Any]:
    """BentoML's `/generate` (service.py), from the models its input and output specs are."""
    errors = documented.errors(404, 409, 500, 503, 504, envelope=documented.NATIVE_ERROR)
    bad = documented.error_response(400, documented.NATIVE_ERROR)
    # A form body is refused before BentoML reads it (request_bodies.py), in OpenAI's envelope.
    bad["content"]["application/json"]["schema"] = {"anyOf": [
        {"$ref": documented.REF.format(model=documented.NATIVE_ERROR)},
        {"$ref": documented.REF.format(model=documented.OPENAI_ERROR)}]}
    return {"post": {
        "tags": ["generation"],
        "operationId": "generate",
        "summary": "Generate",
        "description": "Text to image (img2img with `input_image`, inpainting with `mask`): waits for the "
                       "images and answers them inline (base64) and by URL. Unknown fields are refused.",
        "x-bentoml-name": "generate",
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": documented.register(GenerateRequest)}}}},
        "responses": {"200": documented.answer(GenerateResponse), "400": bad, **_str_keys(errors)},
    }}


def _probe(summary: str, description: str, *, not_ready: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": PLAIN_TEXT}}
    if not_ready:
        responses["503"] = {"description": "Not ready: the default model is not loaded yet.", "content": PLAIN_TEXT}
    return {"get": {"tags": ["server"], "operationId": summary.lower().replace(" ", "_"), "summary": summary,
                    "description": description, "responses": responses}}


def _infra_paths() -> dict[str, Any]:
    return {
        "/livez": _probe("Livez", "Liveness probe (BentoML's)."),
        "/healthz": _probe("Healthz", "Liveness probe (BentoML's, as `/livez`)."),
        "/readyz": _probe("Readyz", "Readiness: 200 once the default model is loaded.", not_ready=True),
        "/metrics": {"get": {
            "tags": ["server"], "operationId": "prometheus_metrics", "summary": "Prometheus metrics",
            "description": "Prometheus' text format; open, labelled by route.",
            "responses": {"200": {"description": "OK", "content": PLAIN_TEXT}},
        }},
    }


def _str_keys(responses: dict[Any, Any]) -> dict[str, Any]:
    return {str(status): response for status, response in responses.items()}


def build_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The whole API as this server (its settings: keys, limits) answers it."""
    document = get_openapi(
        title="ALICE", version=__version__, openapi_version="3.1.0", routes=app.routes, tags=TAGS,
        description="Self-hosted Stable Diffusion: the native API, OpenAI's chat completions and Images API, "
                    "the job queue and the model manager. Reference: docs/api.md.",
    )
    # A copy: the routes' openapi_extra (their forms) is shared by every build, and this one's limits are its own.
    paths = copy.deepcopy({**_infra_paths(), "/generate": _generate_path(), **document["paths"]})
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(copy.deepcopy(documented.SCHEMAS))
    add_cross_field_rules(schemas)
    forms = [media["schema"] for item in paths.values() for operation in item.values() if isinstance(operation, dict)
             for media in operation.get("requestBody", {}).get("content", {}).values() if "$ref" not in media["schema"]]
    _describe_server_limits([*schemas.values(), *forms], settings)
    keys = settings.keyring()
    keyed = bool(keys)
    roles = any(key.admin for key in keys)  # ALICE_ADMIN_KEYS: model management is an admin's
    fair_share = keyed and bool(settings.rate_limit or settings.max_queued_per_key)
    if keyed:
        document["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        }
    for path, item in paths.items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if "422" in responses:  # FastAPI's default; ALICE answers bad input with 400
                del responses["422"]
                responses.setdefault("400", documented.error_response(400))
            if "requestBody" in operation:
                responses.setdefault("400", documented.error_response(400))
                responses.setdefault("413", documented.error_response(413))
            if keyed and not is_open(path):
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                responses.setdefault("401", documented.error_response(401))
            if roles and path.startswith("/v1/models/"):
                responses.setdefault("403", documented.error_response(403))
            if fair_share and method in ("post", "put", "delete") and not is_open(path):
                responses.setdefault("429", documented.error_response(429))
            if "{" in path and "404" in responses:
                # A value no route's path takes (a control character: %0A) is BentoML's plain 404.
                responses["404"] = {**responses["404"], "content": {**responses["404"].get("content", {}),
                                                                     **PLAIN_TEXT}}
            for status, links in ((s, l) for (p, m, s), l in LINKS.items() if p == path and m == method):
                responses[status]["links"] = links
    document["paths"] = paths
    document["servers"] = [{"url": "/"}]
    return document


def _describe_server_limits(schemas: list[dict[str, Any]], settings: Settings) -> None:
    """Limits of this server's configuration in the request schemas (`schemas`: the components
    and the forms written in place): the number of images as a maximum, the pixels of width x
    height (a product, which JSON Schema cannot state) and the models in the descriptions."""
    words = {
        "width": f" This server draws at most {settings.max_pixels} pixels (width x height, ALICE_MAX_PIXELS).",
        "height": f" This server draws at most {settings.max_pixels} pixels (width x height, ALICE_MAX_PIXELS).",
        "num_images": f" This server draws at most {settings.max_images_per_request} per request "
                      "(ALICE_MAX_IMAGES_PER_REQUEST).",
        "model": " The models this server has: `GET /v1/models`.",
    }
    for schema in schemas:
        for name, field in schema.get("properties", {}).items():
            if name in words and isinstance(field, dict):
                field["description"] = (field.get("description", "") + words[name]).strip()
            if name in ("num_images", "n") and isinstance(field, dict):  # a plain limit: the schema states it
                field["maximum"] = min(field.get("maximum", settings.max_images_per_request),
                                       settings.max_images_per_request)


REDOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ALICE API (ReDoc)</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><redoc spec-url="/docs.json"></redoc><script src="/redoc/redoc.standalone.js"></script></body></html>
"""
REDOC_SCRIPT = Path(__file__).resolve().parent / "redoc" / "redoc.standalone.js"
# ReDoc (vendored: alice/http/redoc/) renders with styled-components, which writes <style>
# elements, and searches in a worker it starts from a blob: the page's policy, those two allowed.
REDOC_HEADERS = {
    **STATIC_HEADERS,
    "Content-Security-Policy": STATIC_HEADERS["Content-Security-Policy"].replace(
        "style-src 'self'", "style-src 'self' 'unsafe-inline'") + "; worker-src blob:",
}


def redoc_page() -> HTMLResponse:
    return HTMLResponse(REDOC_PAGE, headers=REDOC_HEADERS)


def redoc_script() -> FileResponse:
    return FileResponse(REDOC_SCRIPT, media_type="text/javascript; charset=utf-8",
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


class ApiDocs:
    """Serves `/docs.json` in place of BentoML's 3.0 one (BentoML's route would answer first);
    everything else passes."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, settings: Callable[[], Settings]) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.settings = settings
        self._built: tuple[Settings, bytes] | None = None

    def document_bytes(self) -> bytes:
        # Built once per settings: fixed for a served process; a process that serves one app after
        # another (the in-process tests) hands each its own settings.
        settings = self.settings()
        if self._built is None or self._built[0] is not settings:
            self._built = (settings, json.dumps(build_document(self.fastapi_app, settings)).encode())
        return self._built[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path != "/docs.json":
            await self.app(scope, receive, send)
            return
        response: Response
        if scope["method"] not in ("GET", "HEAD"):
            response = Response("Method Not Allowed", status_code=405, headers={"Allow": "GET, HEAD"},
                                media_type="text/plain")
        else:
            response = Response(self.document_bytes(), media_type="application/json")
        await response(scope, receive, send)
