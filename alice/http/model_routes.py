"""Model-manager admin routes: search, download, status, cancel, load, unload, delete (api-contract.md
section 8). With roles on (ALICE_ADMIN_KEYS) an admin key's only: a user key gets 403 (every key
may list the models and draw with them: `/v1/models`, `/v1/store/models`)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from alice.models import store as model_store
from alice.downloads import huggingface
from alice.downloads.manager import DownloadTask
from alice.http.auth import admin_only
from alice.http.documented import errors, json_body
from alice.http.errors import ApiError
from alice.http.handling import get_runtime, read_json_object
from alice.http.methods import refuse_other_routes_path
from alice.protocol import models as mp
from alice.protocol.generation import strip_model_prefix
from alice.serving.runtime import Runtime

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(admin_only)])



# A stored model's name, `sd/` allowed (documented; the store checks it and answers 400).
MODEL_ID = Path(json_schema_extra={"pattern": mp.BASE_NAME})


@router.post("/search/civitai", openapi_extra=json_body(mp.CivitAISearch), responses=errors(502))
async def search_civitai(request: Request, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    query = mp.CivitAISearch.model_validate(await read_json_object(request))
    items = await run_in_threadpool(
        runtime.downloads.civitai.search, query.query, list(query.types), query.sort, query.nsfw, query.limit, query.page
    )
    return {"object": "list", "data": items}


@router.post("/search/huggingface", openapi_extra=json_body(mp.HuggingFaceSearch), responses=errors(502))
async def search_huggingface(request: Request) -> dict[str, Any]:
    query = mp.HuggingFaceSearch.model_validate(await read_json_object(request))
    return {"object": "list", "data": await run_in_threadpool(huggingface.search, query.query, query.limit, query.sort)}


@router.post("/download/civitai", status_code=202, openapi_extra=json_body(mp.CivitAIDownload))
async def download_civitai(request: Request, runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
    body = mp.CivitAIDownload.model_validate(await read_json_object(request))
    return _accepted(runtime.downloads.civitai_download(body.modelId, body.versionId, body.fileId, body.modelType,
                                                        base=body.base))


@router.post("/download/huggingface", status_code=202, openapi_extra=json_body(mp.HuggingFaceDownload))
async def download_huggingface(request: Request, runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
    body = mp.HuggingFaceDownload.model_validate(await read_json_object(request))
    return _accepted(runtime.downloads.huggingface_download(
        body.modelId, body.filename, body.revision, without_transformer=body.withoutTransformer, base=body.base))


@router.post("/download/url", status_code=202, openapi_extra=json_body(mp.UrlDownload))
async def download_url(request: Request, runtime: Runtime = Depends(get_runtime)) -> JSONResponse:
    body = mp.UrlDownload.model_validate(await read_json_object(request))
    return _accepted(runtime.downloads.url_download(body.url, body.filename, body.isLora))


@router.get("/download/status")
def download_status(runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    return {"object": "list", "data": [task.public() for task in runtime.downloads.list()]}


@router.get("/download/status/{task_id}", responses=errors(404))
def download_task(request: Request, task_id: str, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    refuse_other_routes_path(request)
    return _found(runtime.downloads.get(task_id), task_id).public()


@router.delete("/download/{task_id}", responses=errors(404))
def cancel_download(request: Request, task_id: str, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    refuse_other_routes_path(request)
    return _found(runtime.downloads.cancel(task_id), task_id).public()


@router.post("/refresh")
def refresh() -> dict[str, Any]:
    """The original ALICE's rescan of its model folder. The store is read on every request here,
    so this only counts what `/v1/models` lists now."""
    return {"status": "ok", "models_found": sum(m.kind == model_store.PIPELINE for m in model_store.list_models())}


@router.post("/{model_id:path}/load", responses=errors(400, 404, 500, 503))
async def load_model(request: Request, model_id: str = MODEL_ID, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Load a model into memory in its turn behind the queued generations, so its first request
    is fast. 404 for an unknown model, 503 with Retry-After when the queue is full."""
    name = strip_model_prefix(model_id)
    refuse_other_routes_path(request)
    await asyncio.wrap_future(runtime.load_model(name))
    return {"id": "sd/" + name, "object": "model", "loaded": True, "loaded_models": runtime.pipelines.names()}


@router.post("/{model_id:path}/unload", responses=errors(400, 404, 503))
async def unload_model(request: Request, model_id: str = MODEL_ID, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Free a model's memory in its turn behind the queued generations; it loads again when next
    asked for. 404 for a name neither loaded nor stored, 503 with Retry-After when the queue is full."""
    name = strip_model_prefix(model_id)
    refuse_other_routes_path(request)
    was_loaded = await asyncio.wrap_future(runtime.unload_model(name))
    return {"id": "sd/" + name, "object": "model", "loaded": False, "was_loaded": was_loaded,
            "loaded_models": runtime.pipelines.names()}


@router.delete("/{model_id:path}", responses=errors(400, 404, 409))
def delete_model(request: Request, model_id: str = MODEL_ID, runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    """Remove a model (every version) from the store. A copy already in memory is dropped
    when the cache next needs room; requests for it fail from now on."""
    name = strip_model_prefix(model_id)
    refuse_other_routes_path(request)
    if name == runtime.settings.default_model:
        raise ApiError(409, f"'{name}' is the default model (ALICE_DEFAULT_MODEL); it cannot be deleted",
                       param="model", code="default_model")
    model_store.delete_model(name)
    return {"id": "sd/" + name, "object": "model", "deleted": True}


def _accepted(task: DownloadTask) -> JSONResponse:
    return JSONResponse(task.public(), status_code=202,
                        headers={"Location": f"/v1/models/download/status/{task.id}"})


def _found(task: DownloadTask | None, task_id: str) -> DownloadTask:
    if task is None:
        raise ApiError(404, f"no download '{task_id}'", param="id", code="download_not_found")
    return task
