"""OpenAI-shaped requests and answers, as SAM and the `openai` SDK send and decode them.

Unknown fields are ignored, never an error: clients send more than we use. Each ignored
name is logged once, so a client's typo (`step` for `steps`) does not fall back to a default unseen.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictBool, field_validator
from typing_extensions import TypeAliasType

from alice.engine.spec import MAX_PROMPT_CHARS
from alice.protocol.generation import MODEL_NAME, GenerationSettings, InvalidRequest, NoBooleanNumbers
from alice.protocol.image_options import SIZE_FIELD, ImageOptions

# Lowest priority first: OpenAI's top-level fields (or the SDK's extra_body), then SAM's places.
SETTINGS_SOURCES = ("metadata", "samConfig", "sam_config")

# Other names clients use for our settings.
SETTING_ALIASES = {
    "cfg_scale": "guidance_scale",
    "cfg": "guidance_scale",
    "num_inference_steps": "steps",
    "sampler": "scheduler",
    "sampler_name": "scheduler",
    "n": "num_images",
    "batch_size": "num_images",
    "init_image": "input_image",
    "denoising_strength": "strength",
}
SIZE_PATTERN = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")

logger = logging.getLogger("alice.protocol")


class IgnoredNames:
    """Logs each ignored setting name once per process, at INFO, never its value.

    Names come from strangers: at most `limit` are remembered, and each is cut to a short
    form of safe characters, so neither memory nor the log grows with what clients send.
    """

    UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
    MAX_CHARS = 40

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self.seen: set[str] = set()
        self._full_logged = False
        self._lock = threading.Lock()

    def note(self, name: str, where: str) -> None:
        shown = self.UNSAFE.sub("?", name[: self.MAX_CHARS]) + ("..." if len(name) > self.MAX_CHARS else "")
        with self._lock:
            if shown in self.seen:
                return
            if len(self.seen) >= self.limit:
                if not self._full_logged:
                    self._full_logged = True
                    logger.info("more than %d distinct unknown settings ignored; no longer logging new ones",
                                self.limit)
                return
            self.seen.add(shown)
        logger.info("ignored unknown setting %r in %s (not a generation setting; logged once per name)",
                    shown, where)


IGNORED = IgnoredNames()


class OpenAIModel(NoBooleanNumbers):
    model_config = ConfigDict(extra="allow")


class ChatMessage(OpenAIModel):
    role: str = Field(max_length=50)
    content: str | list[dict[str, Any]] | None = None


# The prompt is a user message holding text (prompt_from_messages): what the schema says of `messages`.
USER_PROMPT = {"type": "object", "required": ["role", "content"],
               "properties": {"role": {"const": "user"}, "content": {"type": "string", "pattern": r"\S"}}}


# ALICE's settings in a chat request (SETTINGS_SOURCES): one named schema, a dict as before, so
# that a client generator makes one class of it, not one per field (samConfig's and sam_config's
# inline classes would share a name, and openapi-python-client drops the whole request over it).
ChatSettings = TypeAliasType("ChatSettings", dict[str, Any])


class ChatCompletionRequest(OpenAIModel):
    model: str | None = Field(None, max_length=200, json_schema_extra={"pattern": MODEL_NAME})
    messages: list[ChatMessage] = Field(
        min_length=1, max_length=1000, json_schema_extra={"contains": USER_PROMPT},
        description="The prompt is the last user message's text (a string, or OpenAI's text parts); not blank.")
    stream: StrictBool = False
    metadata: ChatSettings | None = None
    samConfig: ChatSettings | None = None
    sam_config: ChatSettings | None = None


class ImagesRequest(ImageOptions, OpenAIModel):  # quality, background...: image_options.py
    # Checked as a drawing setting (GenerationSettings): not blank, at most MAX_PROMPT_CHARS.
    prompt: str = Field(json_schema_extra={"pattern": r"\S", "maxLength": MAX_PROMPT_CHARS})
    model: str | None = Field(None, json_schema_extra={"pattern": MODEL_NAME})
    n: int = Field(1, ge=1)
    size: str | None = SIZE_FIELD
    response_format: Literal["url", "b64_json"] = "url"
    # Streaming (alice/protocol/image_events.py): `partial_images` live previews, then the image.
    stream: bool = False
    partial_images: int | None = Field(None, ge=0, le=3)

    @field_validator("stream", mode="before")
    @classmethod
    def _form_or_json_boolean(cls, value: Any) -> Any:
        """true/false in JSON; "true"/"false" as an upload's form text (`/v1/images/edits`). Not 0/1."""
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise ValueError("stream is true or false")
        return value


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def normalise_settings(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Map camelCase, aliases and `size: "WxH"` onto GenerationSettings' field names;
    other names are dropped (and logged once: see IgnoredNames)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = _snake(str(key))
        name = SETTING_ALIASES.get(name, name)
        if name == "size" and isinstance(value, str):
            width, height = parse_size(value)
            out["width"], out["height"] = width, height
        elif name == "input_images" and isinstance(value, list):
            if value:  # SAM's list form; img2img takes the first
                out["input_image"] = value[0]
        elif name in GenerationSettings.model_fields:
            out[name] = value
        else:
            IGNORED.note(str(key), where)
    return out


def parse_size(size: str) -> tuple[int, int]:
    match = SIZE_PATTERN.match(size)
    if not match:
        raise InvalidRequest("size", f"size must look like '512x512' (width x height), not {size!r}")
    return int(match.group(1)), int(match.group(2))


def prompt_from_messages(messages: list[ChatMessage]) -> str:
    """The last user message's text; `content` may be a string or OpenAI's list of parts."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        if isinstance(message.content, list):
            texts = [str(part.get("text", "")) for part in message.content if part.get("type") == "text"]
            return " ".join(text for text in texts if text)
        return ""
    raise InvalidRequest("messages", "messages must contain a message with role 'user' holding the prompt")


def chat_settings(request: ChatCompletionRequest) -> dict[str, Any]:
    """The generation settings of a chat request, merged from every place clients put them."""
    merged = normalise_settings(dict(request.model_extra or {}), "the request body")
    for source in SETTINGS_SOURCES:
        values = getattr(request, source)
        if values:
            merged.update(normalise_settings(values, source))
    merged["prompt"] = prompt_from_messages(request.messages)
    if request.model is not None:
        merged["model"] = request.model
    return merged


def images_settings(request: ImagesRequest) -> dict[str, Any]:
    merged = normalise_settings(dict(request.model_extra or {}), "the request body")
    if request.size and request.size.strip().lower() != "auto":  # auto: the model's native size
        merged["width"], merged["height"] = parse_size(request.size)
    merged.update(prompt=request.prompt, num_images=request.n)
    if request.model is not None:
        merged["model"] = request.model
    return merged


def model_id(name: str) -> str:
    return "sd/" + name


def _markdown(urls: list[str]) -> str:
    count = f"{len(urls)} image{'s' if len(urls) != 1 else ''} generated."
    return " ".join([count, *(f"![image]({url})" for url in urls)])


def _usage() -> dict[str, int]:
    # SAM requires the camelCase keys, the openai SDK reads the snake_case ones.
    return {
        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
        "promptTokens": 0, "completionTokens": 0, "totalTokens": 0,
    }


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def chat_completion(
    completion_id: str, model: str, urls: list[str], metadata: dict[str, Any]
) -> dict[str, Any]:
    """The non-streamed answer, in the exact shape SAM decodes."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": _markdown(urls),
                    "image_urls": urls,
                    "metadata": metadata,
                },
                "finish_reason": "stop",
                "finishReason": "stop",
            }
        ],
        "usage": _usage(),
    }


def chat_chunk(
    completion_id: str,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One streamed `chat.completion.chunk`; extra keys (progress) ride beside `choices`."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "finishReason": finish_reason}],
        **extra,
    }


def final_chunk_delta(urls: list[str], metadata: dict[str, Any]) -> dict[str, Any]:
    return {"content": _markdown(urls), "image_urls": urls, "metadata": metadata}


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def model_card(
    name: str, family: str, created: int, loaded: bool, drawing: dict[str, Any] | None = None
) -> dict[str, Any]:
    """OpenAI's model object, with ALICE's `type` (the family) and, in `drawing`, how its family
    draws (Family.facts(): native size, default steps, guidance and scheduler, the schedulers
    that apply...)."""
    return {
        "id": model_id(name),
        "object": "model",
        "created": created,
        "owned_by": "alice",
        "ownedBy": "alice",
        "type": family,
        "loaded": loaded,
        **(drawing or {}),
    }
