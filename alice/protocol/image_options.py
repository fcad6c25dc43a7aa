"""What OpenAI's Images API asks for beyond ALICE's drawing settings, and how each maps onto them.

The `openai` SDK sends `quality`, `background`, `moderation` and `input_fidelity` (the GPT image
models' words); here they become steps and strength, or a clear refusal, before the queue.
`output_format` and `output_compression` need nothing here: they are drawing settings of every
route (alice/engine/spec.py), so they pass through as any setting does. docs/api.md has the table.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo

from alice.engine.spec import MAX_PROMPT_CHARS, setting, setting_limit
from alice.protocol.generation import GenerationSettings, InvalidRequest, NoBooleanNumbers

# Steps per quality, as a multiple of the model family's default steps (`default_steps` on
# /v1/models): the same words work on FLUX.1 schnell's 4 steps (low = 2, high = 6) as on Stable
# Diffusion's 25 (low = 13, high = 38). Medium is the family's default, what a request without
# quality draws.
QUALITY_STEPS = {"low": 0.5, "medium": 1.0, "high": 1.5, "xhigh": 2.0, "max": 3.0}
# OpenAI's other words: auto is the model's own choice (its default), and DALL-E 3's standard and hd.
QUALITY_ALIASES = {"auto": "medium", "standard": "medium", "hd": "high"}
Quality = Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"]

# img2img strength per input_fidelity on /v1/images/edits: how much of the input is redrawn.
# low is the img2img default; high keeps the input's composition and colours and changes detail.
FIDELITY_STRENGTH = {"low": setting("strength").default, "high": 0.4}
# A variation redraws a little more than half of its image: the same scene, other details.
VARIATION_STRENGTH = 0.6

# Every model ALICE serves draws opaque images; the answer says so.
BACKGROUND = "opaque"
# Options of an edit only, refused on /v1/images/generations: apply_image_options and the served
# document's rule for ImagesRequest (alice/http/request_rules.py) read it.
EDIT_OPTIONS = ("input_fidelity",)


def _drawable_backgrounds(schema: dict[str, Any]) -> None:
    for choice in schema.get("anyOf", ()):
        if "enum" in choice:
            choice["enum"] = [word for word in choice["enum"] if word != "transparent"]


class ImageOptions(BaseModel):
    """The Images API's fields that are not drawing settings; null = the default, as OpenAI reads it."""

    quality: Quality | None = None
    # OpenAI's three words are read, "transparent" to refuse it by name (apply_image_options);
    # the schema offers the two that draw.
    background: Literal["transparent", "opaque", "auto"] | None = Field(
        None, json_schema_extra=lambda schema: _drawable_backgrounds(schema),
        description="opaque or auto: ALICE's models draw opaque images (transparent is refused).")
    moderation: Literal["low", "auto"] | None = None  # accepted and ignored: ALICE moderates nothing
    input_fidelity: Literal["low", "high"] | None = None


def quality_level(quality: str | None) -> str:
    """The level a quality word names (auto, none = medium; standard = medium; hd = high)."""
    quality = quality or "auto"
    return QUALITY_ALIASES.get(quality, quality)


def quality_steps(quality: str | None, default_steps: int) -> int:
    """Denoising steps for `quality` on a model family whose default is `default_steps`: the
    table's multiple, rounded half up, within 1 and the steps' limit."""
    factor = QUALITY_STEPS[quality_level(quality)]
    return min(max(int(default_steps * factor + 0.5), 1), setting_limit("steps", "le"))


def apply_image_options(
    options: ImageOptions, values: dict[str, Any], *, default_steps: int | None, editing: bool
) -> dict[str, Any]:
    """The settings of an Images API request with its options turned into ALICE's: quality into
    steps (with the model family's `default_steps`), input_fidelity into strength. A setting the
    client gave itself (`steps`, `strength` in extra_body) wins over the option that maps onto it.
    InvalidRequest for what cannot be drawn: a transparent background, input_fidelity without an image."""
    if options.background == "transparent":
        raise InvalidRequest(
            "background",
            "background 'transparent' is not possible: ALICE's models draw opaque images and cannot make a "
            "transparent background; use 'opaque' or 'auto'",
        )
    for name in EDIT_OPTIONS:
        if getattr(options, name) is not None and not editing:
            raise InvalidRequest(name, f"{name} applies to /v1/images/edits (how closely the edit "
                                       "keeps the input image); leave it out here")
    out = {name: value for name, value in values.items()
           # OpenAI reads null as the default; for ALICE's own settings null means something else
           if not (value is None and name in ("output_format", "output_compression"))}
    if options.quality is not None and out.get("steps") is None and default_steps is not None:
        out["steps"] = quality_steps(options.quality, default_steps)
    if options.input_fidelity is not None and out.get("strength") is None:
        out["strength"] = FIDELITY_STRENGTH[options.input_fidelity]
    return out


def answered_quality(options: ImageOptions, values: dict[str, Any]) -> str | None:
    """The quality the answer reports: the level that chose the steps, or none where the client
    chose them itself."""
    return None if values.get("steps") is not None else quality_level(options.quality)


def usage() -> dict[str, Any]:
    """OpenAI's token usage: ALICE counts and bills no tokens, so every count is 0 (cost
    calculators see nothing charged), in the shape the SDK's `Usage` declares."""
    details = {"image_tokens": 0, "text_tokens": 0}
    return {"input_tokens": 0, "input_tokens_details": details, "output_tokens": 0, "total_tokens": 0,
            "output_tokens_details": dict(details)}


def images_response(
    created: int, data: list[dict[str, Any]], *, width: int, height: int, output_format: str, quality: str | None
) -> dict[str, Any]:
    """The body of an Images API answer, with the fields the SDK's `ImagesResponse` declares."""
    return {
        "created": created,
        "data": data,
        "background": BACKGROUND,
        "output_format": output_format,
        "quality": quality,
        "size": f"{width}x{height}",
        "usage": usage(),
    }


# `size` as openai.parse_size reads it, in JSON Schema (ECMA-262's regex): WxH, `auto` (the
# model's native size) in any case, or empty (the same).
SIZE_SCHEMA_PATTERN = r"^$|^\s*([Aa][Uu][Tt][Oo]|\d{1,5}\s*[xX×]\s*\d{1,5})\s*$"
SIZE_FIELD: Any = Field(None, max_length=20, json_schema_extra={"pattern": SIZE_SCHEMA_PATTERN},
                        description="WIDTHxHEIGHT (e.g. 512x512; each side a width or height as `/generate` "
                                    "takes it), or auto: the model's native size.")


class VariationsRequest(NoBooleanNumbers):
    """`client.images.create_variation(image=..., n=..., size=...)`: no prompt. Other names
    (ALICE's settings, through extra_body) pass on as on the other routes."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: int = Field(1, ge=1)
    size: str | None = SIZE_FIELD
    response_format: Literal["url", "b64_json"] = "url"


class VariationSettings(GenerationSettings):  # type: ignore[misc, valid-type]
    """The settings of a variation: the input image drawn again, with no prompt unless one is given."""

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="Optional: what to steer the variation towards.")
    strength: float = FieldInfo.merge_field_infos(setting("strength"), default=VARIATION_STRENGTH)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:  # replaces GenerationSettings' check: no prompt is the point
        return value
