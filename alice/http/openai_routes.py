"""The OpenAI-shaped routes SAM and the openai SDK call: chat completions, images, models."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response, StreamingResponse

from alice.engine.preview_decoders import families_sharing_latents
from alice.models import store as model_store
from alice.http.documented import answer, errors, event_stream, form_body, json_body, upload_schema
from alice.http.errors import ApiError, job_error
from alice.http.handling import get_runtime, image_b64, image_urls, read_json_object, result_metadata, submit, wait_for
from alice.http.image_streams import image_event_stream
from alice.http.methods import refuse_other_routes_path
from alice.protocol.models import BASE_NAME
from alice.protocol.input_images import MAX_INPUT_BYTES
from alice.jobs.queue import Job
from alice.protocol import openai as oa
from alice.protocol.answers import ModelCard, ModelList
from alice.protocol.generation import GenerationSettings, strip_model_prefix
from alice.protocol.image_options import (
    ImageOptions, VariationSettings, VariationsRequest, answered_quality, apply_image_options, images_response,
)
from alice.protocol.previews import preview_view
from alice.serving.runtime import Runtime

logger = logging.getLogger("alice.http")
router = APIRouter(tags=["openai"])


_GENERATION_ERRORS = errors(400, 404, 409, 500, 503, 504)
_CHAT_STREAM = ("With `stream: true`: chat.completion.chunk events (progress while queued and drawing, "
                "then the image links), then `data: [DONE]`.")
_IMAGES_STREAM = ("With `stream: true`: image_generation.partial_image events (`partial_images` previews), "
                  "then image_generation.completed, one per image.")


@router.post("/v1/chat/completions", openapi_extra=json_body(oa.ChatCompletionRequest),
             responses={200: {"content": event_stream(_CHAT_STREAM)}, **_GENERATION_ERRORS})
# SAM users often leave /v1 out of the base URL
@router.post("/chat/completions", operation_id="chat_completions_unversioned",
             openapi_extra=json_body(oa.ChatCompletionRequest),
             responses={200: {"content": event_stream(_CHAT_STREAM)}, **_GENERATION_ERRORS})
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


@router.post("/v1/images/generations", openapi_extra=json_body(oa.ImagesRequest),
             responses={200: {"content": event_stream(_IMAGES_STREAM)}, **_GENERATION_ERRORS})
async def images_generations(request: Request, runtime: Runtime = Depends(get_runtime)) -> Any:
    images_request = oa.ImagesRequest.model_validate(await read_json_object(request))
    return await _images_answer(images_request, oa.images_settings(images_request), request, runtime)


@router.post("/v1/images/edits", openapi_extra=form_body(upload_schema(oa.ImagesRequest, "image", "mask")),
             responses={200: {"content": event_stream(_IMAGES_STREAM)}, **_GENERATION_ERRORS})
async def images_edits(request: Request, runtime: Runtime = Depends(get_runtime)) -> Any:
    """img2img as the openai SDK's `client.images.edit(image=..., prompt=...)` sends it (multipart);
    inpainting with its `mask=...`, a PNG whose fully transparent pixels are redrawn (without one,
    the image's own fully transparent pixels are)."""
    data, mask, fields = await _read_upload(request)
    images_request = oa.ImagesRequest.model_validate(fields)
    settings = oa.images_settings(images_request)
    settings["input_image"] = base64.b64encode(data).decode()
    if mask is not None:
        settings["mask"] = base64.b64encode(mask).decode()
    return await _images_answer(images_request, settings, request, runtime, editing=True)


@router.post("/v1/images/variations", openapi_extra=form_body(upload_schema(VariationsRequest, "image")),
             responses=_GENERATION_ERRORS)
async def images_variations(request: Request, runtime: Runtime = Depends(get_runtime)) -> Any:
    """`client.images.create_variation(image=...)`: img2img of the image with no prompt (multipart)."""
    data, _, fields = await _read_upload(request)  # OpenAI's variations take no mask
    variation = VariationsRequest.model_validate(fields)
    settings = oa.normalise_settings(dict(variation.model_extra or {}), "the request body")
    if variation.size and variation.size.strip().lower() != "auto":
        settings["width"], settings["height"] = oa.parse_size(variation.size)
    settings.update(num_images=variation.n, input_image=base64.b64encode(data).decode())
    if variation.model is not None:
        settings["model"] = variation.model
    return await _images_answer(variation, settings, request, runtime, settings_type=VariationSettings)


async def _read_upload(request: Request) -> tuple[bytes, bytes | None, dict[str, str]]:
    """The `image` file part, the `mask` file part if any, and the text fields of a multipart
    Images API request."""
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
        mask_upload = form.get("mask")
        mask = await mask_upload.read(MAX_INPUT_BYTES + 1) if isinstance(mask_upload, UploadFile) else None
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
    for param, part in (("image", data), ("mask", mask)):
        if part is not None and len(part) > MAX_INPUT_BYTES:
            raise ApiError(400, f"{param} is over {MAX_INPUT_BYTES // (1024 * 1024)} MB", param=param)
    return data, mask, fields


async def _images_answer(
    images_request: oa.ImagesRequest | VariationsRequest, values: dict[str, Any], request: Request, runtime: Runtime,
    *, editing: bool = False, settings_type: type[GenerationSettings] = GenerationSettings,
) -> Response:
    stream = isinstance(images_request, oa.ImagesRequest) and images_request.stream
    if stream:  # OpenAI's partial images are ALICE's live previews
        values = {**values, "previews": images_request.partial_images or 0}
    options = images_request if isinstance(images_request, ImageOptions) else ImageOptions()
    quality = answered_quality(options, values)
    default_steps = await run_in_threadpool(_default_steps, runtime, values.get("model")) if options.quality else None
    settings = settings_type.model_validate(
        apply_image_options(options, values, default_steps=default_steps, editing=editing)
    )
    job = await submit(runtime, settings, "images")
    if stream:
        return image_event_stream(job, runtime, "image_edit" if editing else "image_generation")
    await wait_for(job, request, runtime)
    revised = {"revised_prompt": settings.prompt} if settings.prompt else {}  # a variation has none
    if images_request.response_format == "b64_json":
        data = [{"b64_json": image_b64(runtime, name), **revised} for name in job.images]
    else:
        data = [{"url": url, **revised} for url in image_urls(request, runtime, job)]
    spec = job.spec
    return JSONResponse(images_response(
        int(job.finished or job.created), data, width=spec.width, height=spec.height,
        output_format=spec.output_format, quality=quality,
    ))


def _default_steps(runtime: Runtime, model: str | None) -> int:
    """The default steps of the requested model's family, which `quality` is relative to."""
    return runtime.resolve_model(strip_model_prefix(model) if model else None).family_facts.default_steps


@router.get("/v1/models", response_model=None, responses={200: answer(ModelList)})
@router.get("/models", operation_id="list_models_unversioned", response_model=None,
            responses={200: answer(ModelList)})
def list_models(runtime: Runtime = Depends(get_runtime)) -> Any:
    loaded = set(runtime.pipelines.names())
    data = [
        oa.model_card(m.name, m.family, int(m.created.timestamp()), m.name in loaded, drawing_facts(m))
        for m in model_store.list_models()
        if m.kind == "pipeline"
    ]
    # Embeddings are named in prompts, not drawn with: beside the models, so no client picks one as a model.
    embeddings = [{"name": m.name, "family": m.family} for m in model_store.embeddings()]
    # Tiny autoencoders decode live previews of the families sharing their latents: likewise beside.
    preview_decoders = [{"name": m.name, "family": m.family, "families": families_sharing_latents(m.family)}
                        for m in model_store.preview_decoders()]
    return {"object": "list", "data": data, "embeddings": embeddings, "preview_decoders": preview_decoders}


def drawing_facts(model: model_store.StoredModel) -> dict[str, Any]:
    """How a stored model draws: its family's facts, with the native size its own configs give,
    and whether it is an inpainting checkpoint (masked edits, and text to image all masked)."""
    return {**model.family_facts.facts(), "native_size": model.native_size,
            "inpainting_checkpoint": model.inpainting}


@router.get("/v1/models/{model_id:path}", response_model=None, responses={200: answer(ModelCard), **errors(404)})
def get_model(request: Request, model_id: str = Path(json_schema_extra={"pattern": BASE_NAME}),
              runtime: Runtime = Depends(get_runtime)) -> Any:
    name = strip_model_prefix(model_id)
    refuse_other_routes_path(request)
    try:
        stored = model_store.get_model(name)
    except (model_store.ModelNotFound, model_store.InvalidModelName):
        raise ApiError(404, f"model '{model_id}' not found", param="model", code="model_not_found") from None
    return oa.model_card(stored.name, stored.family, int(stored.created.timestamp()), name in runtime.pipelines.names(),
                         drawing_facts(stored))
