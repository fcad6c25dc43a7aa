"""What a route says of itself in the OpenAPI document: its body, its errors, its streams.

Several routes read their JSON by hand (`read_json_object`, then a pydantic model), so their
errors, aliases and unknown-field rules stay their own; FastAPI cannot see those models. Each
such route names its model here (`json_body`), the very one it validates with, and the
document (alice/http/openapi.py) carries that model's JSON Schema: what a machine reads about
a route is what the route checks.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

REF = "#/components/schemas/{model}"

# Every schema a route's documentation refers to, by component name (filled as routes are declared).
SCHEMAS: dict[str, dict[str, Any]] = {}

# The error envelopes: OpenAI's on the OpenAI-shaped and admin routes, BentoML's (ALICE's native
# shape) on `/generate` (alice/http/errors.py writes both).
OPENAI_ERROR = "OpenAIError"
NATIVE_ERROR = "NativeError"
SCHEMAS[OPENAI_ERROR] = {
    "type": "object",
    "title": "OpenAIError",
    "description": "OpenAI's error envelope.",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string", "description": "invalid_request_error, authentication_error, not_found_error, "
                                                      "cancelled, server_error, server_overloaded, upstream_error, ..."},
            "param": {"type": ["string", "null"], "description": "The request field at fault, if one is."},
            "code": {"type": ["string", "null"], "description": "A stable code (invalid_value, model_not_found, ...)."},
        },
    }},
}
SCHEMAS[NATIVE_ERROR] = {
    "type": "object",
    "title": "NativeError",
    "description": "`/generate`'s error: the message, and each problem with the field it is in (`loc`).",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "detail": {"type": "array", "items": {
            "type": "object",
            "properties": {"loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                           "msg": {"type": "string"}, "type": {"type": "string"}},
        }},
    },
}

ERROR_WORDS = {
    400: "The request is invalid: the message names the field and the limit.",
    401: "No valid API key (sent as `Authorization: Bearer KEY` or `X-Api-Key: KEY`).",
    403: "An admin key's (ALICE_ADMIN_KEYS): this key is a user key; the message names its role.",
    404: "Not found (the message says what).",
    409: "Conflict: the job was cancelled, or the model is the server's default.",
    413: "The request body is over the server's limit (32 MiB; 21 MiB for an upload).",
    429: "This key's share is used up: its requests per ALICE_RATE_LIMIT, or its waiting jobs "
         "(ALICE_MAX_QUEUED_PER_KEY); `Retry-After` says when to come back.",
    500: "The server failed the drawing (the message says why); a retry fails the same way.",
    502: "The model site (Hugging Face, CivitAI) answered with an error.",
    503: "Overloaded: the queue is full (`Retry-After` says when to come back), or the card ran out of memory.",
    504: "The job passed its deadline.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying (a full queue, a used-up share).",
                               "schema": {"type": "integer"}}}


def register(model: type[BaseModel], mode: str = "validation") -> str:
    """Put `model`'s JSON Schema (and the models it refers to) among the document's schemas; its $ref."""
    schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    SCHEMAS.update(schema.pop("$defs", {}))
    SCHEMAS[model.__name__] = schema
    return REF.format(model=model.__name__)


def json_body(model: type[BaseModel], *, multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    """`openapi_extra` for a route that validates its JSON body with `model` itself; `multipart`:
    the schema of the same request as a form upload, where the route takes one too."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": register(model)}}}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": multipart}
    return {"requestBody": {"required": True, "content": content}}


def upload_schema(model: type[BaseModel], *files: str) -> dict[str, Any]:
    """A multipart form of `model`'s fields with the file parts `files` (the first required)."""
    schema = model.model_json_schema(ref_template=REF)
    SCHEMAS.update(schema.pop("$defs", {}))
    properties = {name: {"type": "string", "format": "binary", "description": f"The {name} file (PNG, JPEG or WebP)."}
                  for name in files}
    # A form has no null: a field left out is the default.
    fields = {name: _without_null(field) for name, field in schema.get("properties", {}).items()}
    schema["properties"] = {**properties, **fields}
    schema["required"] = [files[0], *schema.get("required", [])]
    return schema


def _without_null(field: dict[str, Any]) -> dict[str, Any]:
    choices = [choice for choice in field.get("anyOf", ()) if choice.get("type") != "null"]
    if len(choices) != 1:
        return field
    rest = {key: value for key, value in field.items() if key not in ("anyOf", "default")}
    return {**rest, **choices[0]}


def form_body(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route that takes only a multipart upload."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def errors(*statuses: int, envelope: str = OPENAI_ERROR) -> dict[int | str, dict[str, Any]]:
    """`responses` for the error statuses a route answers, in its envelope."""
    return {status: error_response(status, envelope) for status in statuses}


def error_response(status: int, envelope: str = OPENAI_ERROR) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERROR_WORDS[status],
        "content": {"application/json": {"schema": {"$ref": REF.format(model=envelope)}}},
    }
    if status in (429, 503):
        response["headers"] = RETRY_AFTER
    return response


def answer(model: type[BaseModel], description: str = "Successful Response") -> dict[str, Any]:
    """A JSON answer shaped by `model` (for routes that build their JSONResponse by hand)."""
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": register(model, "serialization")}}}}


def event_stream(description: str) -> dict[str, Any]:
    """The `text/event-stream` form of an answer (with `stream: true`)."""
    return {"text/event-stream": {"schema": {
        "type": "object", "description": description, "required": ["data"],
        "properties": {"data": {"type": "string", "description": "A JSON object (`[DONE]` ends the chat stream)."},
                       "event": {"type": "string"}, "id": {"type": "string"}},
    }}}
