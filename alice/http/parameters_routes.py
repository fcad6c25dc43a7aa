"""`POST /v1/images/from-parameters`: draw what an A1111 `parameters` text (or a PNG carrying it)
describes, and say what of it was not honoured (alice/protocol/a1111_reading.py reads it).

A route of its own rather than a field of `/generate`: `/generate` refuses unknown fields and
answers exactly what it was asked; this one takes a text whose settings it honours only in part,
and its answer names the rest (`not_honoured`). Its settings are `/generate`'s; `model` overrides
the text's."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from alice.engine.prompt_tags import PROMPT_LORA_TAG, extract_prompt_loras
from alice.http.documented import errors, json_body
from alice.http.errors import ApiError
from alice.http.handling import get_runtime, image_b64, image_urls, read_json_object, submit, wait_for
from alice.models import store as model_store
from alice.engine.spec import MAX_PROMPT_CHARS
from alice.protocol.a1111_reading import (
    FromParametersRequest, Reading, decode_image_field, png_parameters, read_parameters,
)
from alice.protocol.generation import GenerationSettings, InvalidRequest
from alice.protocol.input_images import MAX_INPUT_BYTES
from alice.protocol.native import FromParametersResponse, GeneratedImage
from alice.serving.runtime import Runtime

logger = logging.getLogger("alice.http")
PARAMETERS_UPLOAD = {"type": "object", "properties": {
    "image": {"type": "string", "format": "binary", "description": "A PNG carrying A1111's `parameters` text."},
    "parameters": {"type": "string", "maxLength": MAX_PROMPT_CHARS * 3, "description": "A1111's `parameters` text."},
    "model": {"type": "string", "maxLength": 200, "description": "Draw with this stored model."},
}, "additionalProperties": False}
# The same words as the JSON body's (FromParametersRequest): the pattern of each text, one of the two parts.
_JSON_BODY = FromParametersRequest.model_json_schema()
for _name in ("parameters", "model"):
    PARAMETERS_UPLOAD["properties"][_name]["pattern"] = _JSON_BODY["properties"][_name]["pattern"]
PARAMETERS_UPLOAD["anyOf"] = [{"required": ["image"]}, {"required": ["parameters"]}]
router = APIRouter(tags=["images"])


@router.post("/v1/images/from-parameters", openapi_extra=json_body(FromParametersRequest, multipart=PARAMETERS_UPLOAD),
             responses=errors(404, 409, 500, 503, 504))
async def from_parameters(request: Request, runtime: Runtime = Depends(get_runtime)) -> Any:
    """Draw an A1111 `parameters` text: JSON `{"parameters": ...}` or `{"image": <PNG base64>}`, or a
    multipart upload (file part `image`, or field `parameters`); `model` optional."""
    body, reading = await _reading(request)
    job = await submit(runtime, GenerationSettings.model_validate(reading.settings), "from-parameters")
    await wait_for(job, request, runtime)
    images = [
        GeneratedImage(name=name, url=url, seed=job.spec.seed + index, b64_json=image_b64(runtime, name))
        for index, (name, url) in enumerate(zip(job.images, image_urls(request, runtime, job)))
    ]
    answer = FromParametersResponse.from_job(job, images=images, not_honoured=reading.not_honoured)
    return JSONResponse(answer.model_dump(mode="json"))


@router.post("/v1/images/read-parameters", openapi_extra=json_body(FromParametersRequest, multipart=PARAMETERS_UPLOAD),
             responses=errors(404))
async def read_only(request: Request, runtime: Runtime = Depends(get_runtime)) -> Any:
    """What `/v1/images/from-parameters` would draw, without drawing: the settings (as `/generate`
    takes them) and what is not honoured. The web page fills its form from a dropped PNG with it."""
    _, reading = await _reading(request, runtime)
    return {"settings": reading.settings, "not_honoured": reading.not_honoured}


async def _reading(request: Request, runtime: Runtime | None = None) -> tuple[FromParametersRequest, Reading]:
    runtime = runtime or get_runtime(request)
    body = await _read_body(request)
    if body.parameters is not None:
        text = body.parameters
    elif body.image is not None:
        text = png_parameters(decode_image_field(body.image))
    else:
        raise InvalidRequest("parameters", "parameters: send A1111's `parameters` text, or a PNG carrying it as `image`")
    reading = read_parameters(text)
    if "prompt" not in reading.settings:
        raise InvalidRequest("parameters", "parameters: the text holds no prompt")
    _honour_stored(reading, runtime, body.model)
    return body, reading


async def _read_body(request: Request) -> FromParametersRequest:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return FromParametersRequest.model_validate(await read_json_object(request))
    # Starlette spools file parts to disk without a bound: refuse oversized bodies up front.
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > MAX_INPUT_BYTES + (1 << 20):
        raise ApiError(413, f"the upload must state its Content-Length and be at most "
                            f"{MAX_INPUT_BYTES // (1024 * 1024)} MB", param="image", code="body_too_large")
    async with request.form(max_files=1, max_fields=10, max_part_size=MAX_INPUT_BYTES) as form:
        upload = form.get("image")
        data = await upload.read(MAX_INPUT_BYTES + 1) if isinstance(upload, UploadFile) else None
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
    if data is not None:
        if len(data) > MAX_INPUT_BYTES:
            raise ApiError(400, f"image is over {MAX_INPUT_BYTES // (1024 * 1024)} MB", param="image")
        return FromParametersRequest.model_validate({**fields, "image": None, "parameters": png_parameters(data)})
    return FromParametersRequest.model_validate(fields)


def _honour_stored(reading: Reading, runtime: Runtime, model: str | None) -> None:
    """The model and LoRAs the text names, where this server has them; the others are left out
    (the default model draws) and reported. A model the client names itself must exist (404)."""
    settings = reading.settings
    if model is not None:
        settings["model"] = model
    elif "model" in settings:
        try:
            runtime.resolve_model(settings["model"])
        except (model_store.ModelNotFound, model_store.InvalidModelName):
            reading.not_honoured.append(f"Model: {settings.pop('model')} (not in this server's store; "
                                        "the default model drew)"[:200])
    _, tags = extract_prompt_loras(settings["prompt"])
    missing = {name for name, _ in tags if not _stored_lora(name)}
    if missing:
        settings["prompt"] = PROMPT_LORA_TAG.sub(
            lambda tag: "" if tag.group(1).strip() in missing else tag.group(0), settings["prompt"])
        reading.not_honoured.extend(f"<lora:{name}> (not in this server's store)"[:200] for name in sorted(missing))
    kept = [choice for choice in settings.get("loras", []) if _stored_lora(choice["name"])]
    reading.not_honoured.extend(f"LoRAs: {choice['name']} (not in this server's store)"[:200]
                                for choice in settings.get("loras", []) if choice not in kept)
    if "loras" in settings:
        settings["loras"] = kept


def _stored_lora(name: str) -> bool:
    try:
        model_store.get_lora(name)
    except (model_store.ModelNotFound, model_store.InvalidModelName):
        return False
    return True
