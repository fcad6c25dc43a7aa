"""The web page: its static files under `/web/`, and the admin JSON it needs that no other route gives.

The page's own HTML, JS and CSS load without a key (see auth.OPEN_PREFIXES); everything it
shows comes from API routes behind the key, which the page sends as `Authorization: Bearer`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import FileResponse, RedirectResponse, Response

from alice import __version__
from alice.models import store as model_store
from alice.config import Settings, env_name
from alice.engine.scheduler_names import DEFAULT_SCHEDULER, SCHEDULER_NAMES
from alice.engine.spec import setting
from alice.http.auth import admin_only, current_caller
from alice.http.documented import answer, errors
from alice.http.errors import ApiError
from alice.http.handling import get_runtime
from alice.images.store import StoredImage
from alice.protocol.a1111 import parse_a1111_parameters, settings_from_a1111
from alice.protocol.answers import Gallery, SettingsView
from alice.protocol.generation import FAMILY_DEFAULTS, GenerationSettings, setting_limits
from alice.serving.runtime import Runtime

router = APIRouter()

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# Only these kinds of file are served; anything else under alice/web is a 404.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
}

# The page needs nothing from elsewhere and runs no inline script: a strict policy means an
# injected tag could neither run nor load anything even if some text slipped into the DOM as HTML.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidate: a new ALICE version's page shows at once
}

GALLERY_PAGE_MAX = 200


# -- the page's files ------------------------------------------------------------------------

@router.api_route("/web", methods=["GET", "HEAD"], include_in_schema=False)
def web_root() -> Response:
    return RedirectResponse("web/", status_code=308)  # relative: still right behind a path prefix


@router.api_route("/web/", methods=["GET", "HEAD"], include_in_schema=False)
def web_index(request: Request) -> Response:
    return _static("index.html", request)


@router.api_route("/web/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
def web_file(path: str, request: Request) -> Response:
    return _static(path, request)


def _static(path: str, request: Request) -> Response:
    """The file, or 304 when the browser's copy (its ETag, from the file's time and size) is
    current: `no-cache` has it ask on every load, and the page is some twenty modules."""
    file = static_file(path)
    if file is None:
        raise ApiError(404, "no such file", code="not_found")
    response = FileResponse(
        file, media_type=CONTENT_TYPES[file.suffix], headers=STATIC_HEADERS, stat_result=os.stat(file)
    )
    if response.headers["etag"] in _entity_tags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers={**STATIC_HEADERS, "ETag": response.headers["etag"]})
    return response


def _entity_tags(header: str) -> set[str]:
    """The tags of an If-None-Match header, weak ones (W/"...") compared as strong (RFC 9110 13.1.2)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def static_file(path: str) -> Path | None:
    """The file under WEB_DIR a request path names, or None.

    No empty, dot-led (`..`, hidden) or backslashed segment, only known file types, a regular
    file (not a link) that resolves inside the folder.
    """
    parts = path.split("/")
    if not path or any(not part or part.startswith(".") or "\\" in part or "\0" in part for part in parts):
        return None
    candidate = WEB_DIR.joinpath(*parts)
    if candidate.suffix not in CONTENT_TYPES:
        return None
    try:
        if not candidate.resolve().is_relative_to(WEB_DIR) or not stat.S_ISREG(candidate.lstat().st_mode):
            return None
    except (OSError, ValueError):
        return None
    return candidate


# -- gallery ----------------------------------------------------------------------------------

def gallery_item(image: StoredImage) -> dict[str, Any]:
    """One stored image with its A1111 parameters read back, and as `/generate` settings."""
    parsed = parse_a1111_parameters(image.parameters) if image.parameters else None
    return {
        "name": image.name,
        "url": f"/images/{image.name}",
        "size_bytes": image.size_bytes,
        "created": image.created.timestamp(),
        "parameters_text": image.parameters,
        "parameters": parsed,
        "generation": settings_from_a1111(parsed) if parsed else None,
    }


@router.get("/v1/gallery", tags=["images"], response_model=None, responses={200: answer(Gallery)})
def gallery(
    offset: int = Query(0, ge=0),
    limit: int = Query(24, ge=1, le=GALLERY_PAGE_MAX),
    runtime: Runtime = Depends(get_runtime),
) -> dict[str, Any]:
    """Stored images (a user key's own), newest first, with their parameters; `total` for paging."""
    owner = current_caller().owner_filter
    images = runtime.images.list(offset, limit, owner)
    return {
        "object": "list",
        "data": [gallery_item(image) for image in images],
        "total": runtime.images.count(owner),
        "offset": offset,
        "limit": limit,
    }


@router.delete("/v1/gallery/{name}", tags=["images"], responses=errors(404))
def delete_image(name: str, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    if not runtime.images.delete(name, current_caller().owner_filter):  # another key's: as if none
        raise ApiError(404, "no such image (it may have expired)", param="name", code="image_not_found")
    return {"name": name, "object": "image", "deleted": True}


# -- model store (pipelines and LoRAs) ---------------------------------------------------------

@router.get("/v1/store/models", tags=["models"])
def stored_models(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Everything in ALICE's part of the model store, LoRAs too (`/v1/models` lists pipelines only)."""
    loaded = set(runtime.pipelines.names())
    default = runtime.settings.default_model
    data = [
        {
            "id": "sd/" + m.name,
            "name": m.name,
            "kind": m.kind,
            "type": m.family,
            "size_bytes": m.size_bytes,
            "created": m.created.timestamp(),
            "source": m.source,
            "loaded": m.name in loaded,
            "default": m.name == default,
        }
        for m in model_store.list_models()
    ]
    return {"object": "list", "data": data}


# -- settings -----------------------------------------------------------------------------------

@router.get("/v1/settings", tags=["server"], response_model=None, responses={200: answer(SettingsView)})
def settings(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """The effective configuration (secrets masked; an admin's to read when roles are on), and
    what a request may ask for: each setting's default and limits as its declaration states them
    (the page's form takes both); and who asks (`caller`: the page hides what its key cannot do)."""
    current = runtime.settings
    caller = current_caller()
    fields = GenerationSettings.model_fields
    limits = setting_limits()
    return {
        "version": __version__,
        "caller": {"name": caller.name, "role": caller.role, "roles": caller.roles},
        # The operator's configuration is the settings page's: with roles on, an admin's only.
        "settings": current.public_view() if caller.admin else None,
        "descriptions": {
            name: {"env": env_name(name), "description": field.description or ""}
            for name, field in Settings.model_fields.items()
        } if caller.admin else None,
        "schedulers": SCHEDULER_NAMES,
        "default_scheduler": DEFAULT_SCHEDULER,
        "defaults": {
            name: field.get_default(call_default_factory=True) for name, field in fields.items() if not field.is_required()
        } | {name: setting(name).default for name in FAMILY_DEFAULTS}  # SD's: each model's are on /v1/models
        | {"scheduler": DEFAULT_SCHEDULER, "model": current.default_model},
        "setting_limits": limits,
        "limits": {
            "max_pixels": current.max_pixels,
            "max_images_per_request": current.max_images_per_request,
            "max_side": limits["width"]["maximum"],
            "min_side": limits["width"]["minimum"],
            "side_multiple": limits["width"]["multipleOf"],
            "max_steps": limits["steps"]["maximum"],
            "max_guidance_scale": limits["guidance_scale"]["maximum"],
            "max_prompt_chars": limits["prompt"]["maxLength"],
            "max_seed": limits["seed"]["maximum"],
            "max_loras": limits["loras"]["maxItems"],
        },
    }
