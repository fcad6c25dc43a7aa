"""Reading A1111's `parameters` text (or a PNG that carries it) as a request to draw it again:
what ALICE can honour becomes settings, the rest is named in `not_honoured`, never an error.

The text is what people copy from CivitAI pages and from PNGs made by A1111, Forge and ALICE
(alice/protocol/a1111.py writes it, and parses its lines). Whatever the text holds, reading it
never raises: a value out of ALICE's limits or a sampler it lacks is left to the server's
default and reported, so the client sees what was drawn differently from what the text says.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from alice.engine.scheduler_names import scheduler_for_sampler
from alice.engine.spec import MAX_PROMPT_CHARS, hires_cover
from alice.protocol.a1111 import a1111_labels, parse_a1111_parameters, settings_from_a1111
from alice.protocol.generation import (
    MAX_INPUT_IMAGE_CHARS,
    MODEL_NAME,
    NON_BLANK,
    GenerationSettings,
    InvalidRequest,
    sent,
)

logger = logging.getLogger("alice.protocol")

# What the text says that changes nothing in the drawing: nothing to honour.
_INFORMATIONAL = frozenset({"Version", "Lora hashes", "TI hashes", "Emphasis", "Hashes"})
# A1111's "Schedule type" (1.9 on, and Forge) beside the sampler; "Automatic" is the sampler's own.
_KARRAS = "Karras"
# The labels read into settings (the rest of the text's keys are reported or informational).
_READ = frozenset({"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model", "LoRAs",
                   "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Denoising strength", *a1111_labels().values()})
# A1111's "Latent" upscalers and plain resizes, as ALICE's two (the others are models: ESRGAN...).
_LATENT_PREFIX = "Latent"
_PIXEL_RESIZES = {"Lanczos": "lanczos"}


class FromParametersRequest(BaseModel):
    """`POST /v1/images/from-parameters` as JSON (multipart: a file part `image` and form fields)."""

    model_config = ConfigDict(extra="forbid")

    parameters: str | None = Field(None, max_length=MAX_PROMPT_CHARS * 3, json_schema_extra={"pattern": NON_BLANK},
                                   description="A1111's `parameters` text, as its PNG Info tab or CivitAI shows it.")
    image: str | None = Field(None, max_length=MAX_INPUT_IMAGE_CHARS,
                              description="A PNG carrying that text (base64 or a data URI), instead of `parameters`.")
    model: str | None = Field(None, max_length=200, json_schema_extra={"pattern": MODEL_NAME},
                              description="Draw with this stored model rather than the one the text names.")

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """One of `parameters` and `image` is required (read_parameters refuses neither)."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema["anyOf"] = [sent(name) for name in ("parameters", "image")]
        return schema


@dataclass
class Reading:
    """What a `parameters` text asks for, as settings of `/generate`, and what ALICE cannot honour."""

    settings: dict[str, Any]
    not_honoured: list[str] = field(default_factory=list)


def png_parameters(data: bytes) -> str:
    """The `parameters` text of a PNG (A1111's tEXt chunk; JPEG/WebP from A1111 keep it in EXIF,
    which a PNG-only reader does not: InvalidRequest names what is missing)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            text = image.info.get("parameters")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest("image", "image: not a PNG this server can read") from None
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest("image", "image: the PNG carries no A1111 `parameters` text")
    return text


def decode_image_field(value: str) -> bytes:
    """The bytes of a base64 image field (a data URI's too)."""
    _, comma, payload = value.partition(",") if value.startswith("data:") else ("", "", value)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("image", "image: not valid base64 (or a data URI)") from None


def read_parameters(text: str) -> Reading:
    """The settings a `parameters` text asks for, and what of it ALICE does not honour. Never raises."""
    parsed = parse_a1111_parameters(text)
    found = parsed["settings"]
    settings = settings_from_a1111(parsed)
    notes: list[str] = []
    _checked(settings, found, notes)
    settings.pop("strength", None)  # "Denoising strength" is the hires fix's (below) or an img2img's
    _sampler(settings, found, notes)
    _hires(settings, found, notes)
    if "Denoising strength" in found and "Hires upscale" not in found and "Hires resize" not in found:
        notes.append(f"Denoising strength: {found['Denoising strength']} (an img2img setting; this draws text to image)")
    for key, value in found.items():
        if key not in _READ and key not in _INFORMATIONAL:
            notes.append(f"{key}: {value}"[:200])
    if not settings.get("prompt", "").strip():
        settings.pop("prompt", None)
    return Reading(settings, notes)


def _checked(settings: dict[str, Any], found: dict[str, str], notes: list[str]) -> None:
    """Drop the read values that ALICE's limits refuse (Steps: 200), each reported."""
    labels = {"steps": "Steps", "guidance_scale": "CFG scale", "seed": "Seed", **a1111_labels()}
    for name, label in labels.items():
        if name == "seed" and found.get(label, "").strip() == "-1":  # A1111's "random": so it is here
            settings.pop(name, None)
            continue
        if label in found and not (name in settings and _valid(name, settings[name])):
            settings.pop(name, None)
            notes.append(f"{label}: {found[label]} (out of this server's range; its default used)"[:200])
    if "Size" in found and not ("width" in settings and _valid("width", settings["width"])
                                and _valid("height", settings["height"])):
        settings.pop("width", None), settings.pop("height", None)
        notes.append(f"Size: {found['Size']} (out of this server's range; the model's native size used)"[:200])


def _valid(name: str, value: Any) -> bool:
    """Whether the request schema takes this value of a setting (its declared limits)."""
    try:
        GenerationSettings.model_validate({"prompt": "x", name: value})
    except ValidationError:
        return False
    return True


def _sampler(settings: dict[str, Any], found: dict[str, str], notes: list[str]) -> None:
    """A1111's sampler with its schedule type (1.9 on writes "DPM++ 2M" + "Schedule type: Karras")."""
    sampler, schedule = found.get("Sampler"), found.get("Schedule type", "Automatic")
    if sampler is None:
        return
    named = scheduler_for_sampler(f"{sampler} {schedule}") if schedule == _KARRAS else None
    if named:
        settings["scheduler"] = named
    elif "scheduler" in settings and schedule not in ("Automatic", "") and not sampler.endswith(schedule):
        notes.append(f"Schedule type: {schedule} (not with {sampler} here; its own schedule used)")
    elif "scheduler" not in settings:
        notes.append(f"Sampler: {sampler} (no such sampler here; the model's default used)")


def _hires(settings: dict[str, Any], found: dict[str, str], notes: list[str]) -> None:
    """A1111's hires fix lines as the hires_* settings."""
    resize = _resize(settings, found, notes)
    if resize is None and "Hires upscale" not in found:
        for key in ("Hires steps", "Hires upscaler"):
            if key in found:
                notes.append(f"{key}: {found[key]} (without Hires upscale or Hires resize, no hires fix)")
        return
    values: dict[str, Any] = {"hires_steps": found.get("Hires steps"), "hires_strength": found.get("Denoising strength")}
    if resize is None:
        values["hires_scale"] = found["Hires upscale"]
    else:  # A1111 writes one of the two; were both there, its resize wins over the scale
        settings.update({name: side for name, side in zip(("hires_width", "hires_height"), resize) if side})
        if "Hires upscale" in found:
            notes.append(f"Hires upscale: {found['Hires upscale']} (Hires resize sets the size)")
    for name, value in values.items():
        if value is None:
            continue
        if name == "hires_steps" and value.strip() == "0":  # A1111's 0: as many as the first pass
            continue
        try:
            settings[name] = TypeAdapter(float if name != "hires_steps" else int).validate_python(value.strip())
        except ValidationError:
            settings[name] = None
        if settings[name] is None or not _valid(name, settings[name]):
            settings.pop(name, None)
            notes.append(f"{_HIRES_LABELS[name]}: {value} (out of this server's range)")
    if "hires_scale" not in settings and resize is None:
        return
    upscaler = found.get("Hires upscaler", "Latent")
    if upscaler == _LATENT_PREFIX:
        settings["hires_upscaler"] = "latent"
    elif upscaler in _PIXEL_RESIZES:
        settings["hires_upscaler"] = _PIXEL_RESIZES[upscaler]
    elif upscaler.startswith(_LATENT_PREFIX):  # "Latent (bicubic antialiased)": another interpolation
        settings["hires_upscaler"] = "latent"
        notes.append(f"Hires upscaler: {upscaler} (bilinear Latent used)")
    else:  # an upscaler model (ESRGAN, 4x-UltraSharp...): ALICE's store has none yet
        settings["hires_upscaler"] = "lanczos"
        notes.append(f"Hires upscaler: {upscaler} (no upscaler models here; Lanczos used)")


def _resize(settings: dict[str, Any], found: dict[str, str], notes: list[str]) -> tuple[int, int] | None:
    """A1111's "Hires resize: WxH" (its hr_resize_x x hr_resize_y, 0 = from the other side), when
    ALICE can draw it: the sides within hires_width's limits, the cover scale within hires_scale's
    (when the text's Size says it). "0x0" is no resize."""
    text = found.get("Hires resize")
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d{1,5})\s*x\s*(\d{1,5})\s*", text)
    if match is None:
        notes.append(f"Hires resize: {text} (not a size WxH)"[:200])
        return None
    sides = int(match[1]), int(match[2])
    if sides == (0, 0):
        return None
    if not all(side == 0 or _valid("hires_width", side) for side in sides):
        notes.append(f"Hires resize: {text} (out of this server's range)"[:200])
        return None
    if "width" in settings and "height" in settings:
        _, drawable = hires_cover(settings["width"], settings["height"], *(side or None for side in sides))
        if not drawable:
            notes.append(f"Hires resize: {text} (not 1 to 4 times the Size; no hires fix)"[:200])
            return None
    return sides


_HIRES_LABELS = {"hires_scale": "Hires upscale", "hires_steps": "Hires steps", "hires_strength": "Denoising strength"}
