"""The FastAPI app BentoML mounts at `/`: every GET route and the OpenAI and admin routes.

BentoML's own routes (`/generate`, `/livez`, `/readyz`, `/metrics`, ...) are matched first;
only paths this app has a route for reach it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from alice.http import jobs_routes, model_routes, openai_routes, parameters_routes, web_routes
from alice.http.documented import errors
from alice.http.errors import ApiError, from_exception
from alice.http.handling import get_runtime
from alice.http.methods import allowed_methods
from alice.http.openapi import redoc_page, redoc_script
from alice.downloads.civitai import CivitAIError
from alice.downloads.huggingface import HubError
from alice.images.formats import content_type
from alice.jobs.queue import JobFailure, QueueFull
from alice.models.store import InvalidModelName, ModelNotFound
from alice.protocol.generation import InvalidRequest
from alice.serving.runtime import Runtime

logger = logging.getLogger("alice.http")

# Operation ids are the handlers' names (an alias route names its own): stable for generated clients.
http_app = FastAPI(title="ALICE", docs_url=None, redoc_url=None, openapi_url=None,
                   generate_unique_id_function=lambda route: route.name)
# Before the OpenAI routes: GET /v1/models/{id:path} would otherwise swallow /v1/models/download/status.
http_app.include_router(model_routes.router)
http_app.include_router(openai_routes.router)
http_app.include_router(parameters_routes.router)
http_app.include_router(jobs_routes.router)
http_app.include_router(web_routes.router)


@http_app.get("/health", tags=["server"])
def health(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Liveness and facts for SAM; reads memory only, so it answers during a generation."""
    return runtime.health()


# Two routes, not api_route(methods=[GET, HEAD]): FastAPI gives both methods one operation id
# and warns of the duplicate when it builds the OpenAPI document BentoML serves at /docs.json.
IMAGE_ANSWER = {200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, **errors(404)}


@http_app.head("/images/{name}", operation_id="image_head", tags=["images"], responses=IMAGE_ANSWER)
@http_app.get("/images/{name}", operation_id="image", tags=["images"], responses=IMAGE_ANSWER)
def image(name: str, runtime: Runtime = Depends(get_runtime)) -> Response:
    path = runtime.images.path_for(name)
    if path is None:
        raise ApiError(404, "no such image (it may have expired)", param="name", code="image_not_found")
    # A name is never reused for other bytes, so caches may keep it forever.
    return FileResponse(
        path,
        media_type=content_type(path.name),
        headers={"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"},
    )


# For people and tools coming from the original ALICE (a FastAPI app with its own docs pages).
# BentoML serves the Swagger UI at `/`, over its OpenAPI document at `/docs.json`.
@http_app.get("/docs", include_in_schema=False)
def docs_page() -> RedirectResponse:
    return RedirectResponse("/")


@http_app.get("/openapi.json", include_in_schema=False)
def openapi_document() -> RedirectResponse:
    return RedirectResponse("/docs.json")


# ReDoc, as the original's FastAPI served it, over the same document; its script is vendored.
http_app.get("/redoc", include_in_schema=False)(redoc_page)
http_app.get("/redoc/redoc.standalone.js", include_in_schema=False)(redoc_script)


async def _known_error(request: Request, exc: Exception) -> JSONResponse:
    error = from_exception(exc)
    assert error is not None  # registered only for the types from_exception knows
    return error.openai_response()


for _type in (ApiError, ValidationError, InvalidRequest, InvalidModelName, ModelNotFound, QueueFull,
              CivitAIError, HubError, JobFailure):
    http_app.add_exception_handler(_type, _known_error)


@http_app.exception_handler(RequestValidationError)
async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    param = ".".join(str(part) for part in first["loc"] if part != "body") or None
    return ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param).openai_response()


@http_app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # every method the path takes, not only those of the first route matched
        headers["Allow"] = ", ".join(allowed_methods(request.app.routes, request.url.path))
    return ApiError(exc.status_code, str(exc.detail), headers=headers).openai_response()



@http_app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return ApiError(500, "internal server error", code="internal_error").openai_response()
