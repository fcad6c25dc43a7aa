"""The Images API's streamed answer as OpenAI sends it and the `openai` SDK parses it
(its types `ImageGenPartialImageEvent`, `ImageGenCompletedEvent` and the `ImageEdit*` pair):
Server-Sent Events named by their `type`, partial images first, then each image completed;
an `error` event when the job fails, whose `error` object the SDK raises as an APIError.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from alice.engine.spec import GenerationSpec

EventKind = Literal["image_generation", "image_edit"]  # /v1/images/generations, /v1/images/edits


def sse(data: dict[str, Any]) -> str:
    """One Server-Sent Event, named by its type as OpenAI names them (`event:` then `data:`)."""
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n"


def _image_fields(spec: GenerationSpec, output_format: str) -> dict[str, Any]:
    """What both events say about the image: ALICE draws opaque images of the size asked for;
    previews are PNGs, the completed image is in the request's `output_format`."""
    return {
        "background": "opaque",
        "created_at": int(time.time()),
        "output_format": output_format,
        "quality": "auto",
        "size": f"{spec.width}x{spec.height}",
    }


def partial_image_event(kind: EventKind, spec: GenerationSpec, index: int, b64_png: str) -> dict[str, Any]:
    return {"type": f"{kind}.partial_image", "b64_json": b64_png, "partial_image_index": index, **_image_fields(spec, "png")}


def completed_event(kind: EventKind, spec: GenerationSpec, b64_png: str) -> dict[str, Any]:
    # Tokens mean nothing to a diffusion model: zeros, in the shape the SDK requires.
    usage = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
             "output_tokens": 0, "total_tokens": 0}
    return {"type": f"{kind}.completed", "b64_json": b64_png, **_image_fields(spec, spec.output_format), "usage": usage}


def error_event(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """The job failed after the stream began (its status is already 200): OpenAI's error event."""
    return {"type": "error", "error": {"message": message, "type": type_, "param": param, "code": code}}
