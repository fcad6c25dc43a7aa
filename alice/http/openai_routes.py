"""The OpenAI-shaped routes SAM and the openai SDK call: chat completions, images, models."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response, StreamingResponse

from alice.models import store as model_store
from alice.http.errors import ApiError, job_error
from alice.http.handling import get_runtime, image_b64, image_urls, read_json_object, result_metadata, submit, wait_for
from alice.http.image_streams import image_event_stream
from alice.protocol.input_images import MAX_INPUT_BYTES
from alice.jobs.queue import Job
from alice.protocol import openai as oa
from alice.protocol.generation import GenerationSettings, strip_model_prefix
from alice.protocol.previews import preview_view
from alice.serving.runtime import Runtime

logger = logging.getLogger("alice.http")
router = APIRouter()


@router.post("/v1/chat/completions")
@router.post("/chat/completions")  # SAM users often leave /v1 out of the base URL
async def chat_completions(request: Request, runtime: Runtime = Depends(get_runtime)) -> Any:
    chat = oa.ChatCompletionRequest.model_validate(await read_json_object(request))
    settings = GenerationSettings.model_validate(oa.chat_settings(chat))
    job = await submit(runtime, settings, "chat")
    model = chat.model or oa.model_id(job.model)
    completion_id = oa.new_completion_id()
    if chat.stream:
        return StreamingResponse(
            _stream(job, request, runtime, completion_id, model),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    await wait_for(job, request, runtime)
    urls = image_urls(request, runtime, job)
    return JSONResponse(oa.chat_completion(completion_id, model, urls, result_metadata(job)))


async def _stream(job: Job, request: Request, runtime: Runtime, completion_id: str, model: str) -> AsyncIterator[str]:
    """Server-Sent Events: the role, progress while queued and denoising, the images, [DONE]."""

    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data)}\n\n"

    try:
        yield event(oa.chat_chunk(completion_id, model, {"role": "assistant", "content": ""}))
        last: tuple[str, int] | None = None
        frames, shown = job.preview_frames, 0  # none unless the request asked for `previews`
        async for current in job.watch():
            if current.state.finished or ((current.state.value, current.step) == last and shown == len(frames)):
                continue
            last = (current.state.value, current.step)
            progress = {
                "job_id": current.id,
                "state": current.state.value,
                "step": current.step,
                "total_steps": current.total_steps,
                "progress": round(current.progress, 4),
            }
            if shown == len(frames):
                yield event(oa.chat_chunk(completion_id, model, {}, progress=progress))
            while shown < len(frames):  # opt-in: each preview rides on a progress chunk of its own
                spec = current.spec
                preview = await run_in_threadpool(preview_view, frames[shown], spec.width, spec.height)
                shown += 1
                yield event(oa.chat_chunk(completion_id, model, {}, progress={**progress, "preview": preview}))
        error = job_error(job)
        if error:
            yield event({"error": {"message": error.message, "type": error.type, "param": None, "code": error.code}})
        else:
            delta = oa.final_chunk_delta(image_urls(request, runtime, job), result_metadata(job))
            yield event(oa.chat_chunk(completion_id, model, delta, finish_reason="stop"))
        yield "data: [DONE]\n\n"
    finally:
        # The client hung up mid-stream (Starlette cancels the generator): stop its job.
        if not job.state.finished:
            runtime.jobs.cancel(job.id)


@router.post("/v1/images/generations")
async def images_generations(request: Request, runtime: Runtime = Depends(get_runtime)) -> Any:
    images_request = oa.ImagesRequest.model_validate(await read_json_object(request))
    return await _images_answer(images_request, oa.images_settings(images_request), request, runtime)


@router.post("/v1/images/edits")
async def images_edits(request: Request, runtime: Runtime = Depends(get_runtime)) -> Any:
    """img2img as the openai SDK's `client.images.edit(image=..., prompt=...)` sends it (multipart)."""
    # Starlette spools file parts to disk without a bound: refuse oversized bodies up front.
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_INPUT_BYTES + (1 << 20):
        raise ApiError(413, f"the upload must state its Content-Length and be at most "
                            f"{MAX_INPUT_BYTES // (1024 * 1024)} MB", param="image", code="body_too_large")
    async with request.form(max_files=2, max_fields=100, max_part_size=MAX_INPUT_BYTES) as form:
        upload = form.get("image") or form.get("image[]")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "image: a file part named 'image' is required", param="image", code="missing_image")
        data = await upload.read(MAX_INPUT_BYTES + 1)
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
    if len(data) > MAX_INPUT_BYTES:
        raise ApiError(400, f"image is over {MAX_INPUT_BYTES // (1024 * 1024)} MB", param="image")
    images_request = oa.ImagesRequest.model_validate(fields)
    settings = oa.images_settings(images_request)
    settings["input_image"] = base64.b64encode(data).decode()
    return await _images_answer(images_request, settings, request, runtime, "image_edit")


async def _images_answer(
    images_request: oa.ImagesRequest, values: dict[str, Any], request: Request, runtime: Runtime,
    kind: str = "image_generation",
) -> Response:
    if images_request.stream:  # OpenAI's partial images are ALICE's live previews
        values = {**values, "previews": images_request.partial_images or 0}
    settings = GenerationSettings.model_validate(values)
    job = await submit(runtime, settings, "images")
    if images_request.stream:
        return image_event_stream(job, runtime, "image_edit" if kind == "image_edit" else "image_generation")
    await wait_for(job, request, runtime)
    if images_request.response_format == "b64_json":
        data = [
            {"b64_json": image_b64(runtime, name),
             "revised_prompt": settings.prompt}
            for name in job.images
        ]
    else:
        data = [{"url": url, "revised_prompt": settings.prompt} for url in image_urls(request, runtime, job)]
    return JSONResponse({"created": int(job.finished or job.created), "data": data})


@router.get("/v1/models")
@router.get("/models")
def list_models(runtime: Runtime = Depends(get_runtime)) -> Any:
    loaded = set(runtime.pipelines.names())
    data = [
        oa.model_card(m.name, m.family, int(m.created.timestamp()), m.name in loaded, drawing_facts(m))
        for m in model_store.list_models()
        if m.kind == "pipeline"
    ]
    return {"object": "list", "data": data}


def drawing_facts(model: model_store.StoredModel) -> dict[str, Any]:
    """How a stored model draws: its family's facts, with the native size its own configs give."""
    return {**model.family_facts.facts(), "native_size": model.native_size}


@router.get("/v1/models/{model_id:path}")
def get_model(model_id: str, runtime: Runtime = Depends(get_runtime)) -> Any:
    name = strip_model_prefix(model_id)
    try:
        stored = model_store.get_model(name)
    except (model_store.ModelNotFound, model_store.InvalidModelName):
        raise ApiError(404, f"model '{model_id}' not found", param="model", code="model_not_found") from None
    return oa.model_card(stored.name, stored.family, int(stored.created.timestamp()), name in runtime.pipelines.names(),
                         drawing_facts(stored))
