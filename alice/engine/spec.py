"""What the engine draws: one request's settings, resolved and checked (no torch in here).

Each drawing setting is declared once, here: a field of GenerationSpec with its default, and
in its annotation a pydantic `Field` with its limits and description. The protocol derives the
request schema every route shares from these declarations (alice/protocol/generation.py), the
answers and the job record follow the spec's fields, and `/v1/settings`, the web page and the
CLI read defaults and limits from them. So a new setting is a field here (its default, limit
and description) and an argument of the pipeline call (alice/engine/generate.py).

A field without a `Field` in its annotation (init_image, mask_image, loras) is the engine's own: the
request carries it in another shape (`input_image`, `loras` as a list of objects).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic.fields import FieldInfo

from alice.engine.scheduler_names import DEFAULT_SCHEDULER

MAX_PROMPT_CHARS = 4000
MAX_SIDE = 2048
MAX_SEED = 2**32 - 1
# The file formats images are saved in (alice/images/formats.py writes each of them).
OutputFormat = Literal["png", "jpeg", "webp"]


@dataclass(frozen=True)
class GenerationSpec:
    """What to draw. Validated before it gets here (against the limits declared on its fields);
    the seed is already chosen and the scheduler name is canonical."""

    # As the client wrote it: <lora:...> tags are taken out before the text encoder.
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")]
    seed: Annotated[int, Field(ge=0, le=MAX_SEED, description="Seed for repeatable images")]
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS, description="What not to draw.")] = ""
    width: Annotated[
        int, Field(ge=64, le=MAX_SIDE, multiple_of=8, description="Image width in pixels, a multiple of 8")
    ] = 512
    height: Annotated[
        int, Field(ge=64, le=MAX_SIDE, multiple_of=8, description="Image height in pixels, a multiple of 8")
    ] = 512
    steps: Annotated[int, Field(ge=1, le=150, description="Denoising steps.")] = 25
    guidance_scale: Annotated[
        float, Field(ge=0, le=30, allow_inf_nan=False, description="Classifier-free guidance (CFG).")
    ] = 7.5
    scheduler: Annotated[
        str, Field(max_length=40, description="Sampler name, e.g. ddim, euler_a, dpm++_2m_karras.")
    ] = DEFAULT_SCHEDULER
    num_images: Annotated[int, Field(ge=1, le=16, description="How many images to draw (seeds seed, seed+1, ...).")] = 1
    init_image: str | None = None  # name of the stored input image for img2img
    # Name of the stored mask of an inpainting (or outpainting) edit of init_image: an "L" PNG the
    # size of the input, 255 where it is redrawn (alice/engine/masks.py).
    mask_image: str | None = None
    strength: Annotated[
        float,
        Field(gt=0, le=1, allow_inf_nan=False, description="img2img: how much of the input image is redrawn (1 = all)."),
    ] = 0.75
    loras: tuple[tuple[str, float], ...] = ()  # (name, scale), from settings and <lora:...> tags
    # What the model reads differently from the prompts as written (weights a transformer family
    # ignores, tokens its CLIP encoder cuts): told before the queue (alice/engine/prompt_reading.py).
    prompt_notes: tuple[str, ...] = ()
    # "a1111": its label in the A1111 parameters text of each PNG (alice/protocol/a1111.py).
    clip_skip: Annotated[
        int | None,
        Field(
            ge=1, le=12, json_schema_extra={"a1111": "Clip skip"},
            description="Counted as A1111 does: 1 = the text encoder's last layer, 2 = the one before; "
            "none = the model's default.",
        ),
    ] = None
    # How the drawn images are saved, not how they are drawn: jobs that differ only here share
    # a pipeline call (PER_IMAGE). The engine never reads them; the worker's saving does.
    output_format: Annotated[
        OutputFormat,
        Field(description="File format of the images: png (lossless, the default), jpeg or webp. Each carries "
                          "the A1111 parameters text (PNG text chunk; JPEG/WebP EXIF UserComment)."),
    ] = "png"
    output_compression: Annotated[
        int,
        Field(ge=0, le=100, description="jpeg/webp quality, 0-100 (100 = best; webp at 100 is lossless); "
                                        "png ignores it."),
    ] = 100
    # Hires fix (A1111's "Hires. fix"): draw at width x height, upscale, then redraw the upscaled
    # image with img2img from the same loaded components, `hires_strength` of it. A1111 writes
    # these itself (alice/protocol/results.py): only when hires_scale is set, and the upscaler by
    # its own name.
    hires_scale: Annotated[
        float | None,
        Field(
            ge=1, le=4, allow_inf_nan=False,
            description="Hires fix: the second pass draws at width x height times this (rounded down to a "
            "multiple of 8); none = no hires fix.",
        ),
    ] = None
    hires_steps: Annotated[
        int | None,
        Field(ge=1, le=150, description="Hires fix: denoising steps of the second pass; none = steps."),
    ] = None
    hires_strength: Annotated[
        float,
        Field(gt=0, le=1, allow_inf_nan=False,
              description="Hires fix: how much of the upscaled image the second pass redraws (denoising strength)."),
    ] = 0.7
    hires_upscaler: Annotated[
        Literal["latent", "lanczos"],
        Field(description="Hires fix: how the first pass is upscaled: `latent` (its latents, bilinear, as "
                          "A1111's \"Latent\") or `lanczos` (the decoded image, as A1111's \"Lanczos\")."),
    ] = "latent"
    # A1111's "Hires resize" (its hr_resize_x/hr_resize_y): a target size instead of a scale. The
    # request's hires_scale is derived from it (the cover scale, alice/protocol/generation.py), so
    # hires_scale stays the hires fix's switch everywhere; these two say where the second pass crops.
    hires_width: Annotated[
        int | None,
        Field(
            ge=64, le=MAX_SIDE, multiple_of=8,
            description="Hires fix to a size instead of a scale (A1111's \"Hires resize\"): the final width. The "
            "first pass is upscaled to cover hires_width x hires_height and the middle is kept; given alone, "
            "the height follows the aspect of width x height. Sets hires_scale.",
        ),
    ] = None
    hires_height: Annotated[
        int | None,
        Field(
            ge=64, le=MAX_SIDE, multiple_of=8,
            description="Hires fix to a size instead of a scale: the final height (see hires_width).",
        ),
    ] = None

    @property
    def final_size(self) -> tuple[int, int]:
        """The size of the images drawn: the hires fix's second pass's, else width x height."""
        return hires_final_size(self.width, self.height, self.hires_scale, self.hires_width, self.hires_height)

    @property
    def upscaled_size(self) -> tuple[int, int]:
        """The size the hires fix upscales the first pass to, before any crop (= final_size
        unless hires_width x hires_height has another aspect than width x height)."""
        if self.hires_width or self.hires_height:
            return hires_resize(self.width, self.height, self.hires_width, self.hires_height)[0]
        return self.final_size


def hires_size(width: int, height: int, scale: float | None) -> tuple[int, int]:
    """The hires fix's final size: each side times `scale` rounded down to a multiple of 8 (the
    latents' grid; A1111 takes int(side x scale) and its latents round the same way)."""
    if not scale:
        return width, height
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


def drawn_strength(steps: int, strength: float) -> float:
    """The img2img strength handed to diffusers, which runs int(steps x strength) of `steps` and
    refuses to run none: `strength`, or where that leaves no step, the least strength that runs
    one, the schedule's last (least noisy) step. So a low strength draws one step, as A1111 and
    ComfyUI do, rather than being refused."""
    drawn = strength
    if int(steps * drawn) < 1:
        drawn = 1 / steps
        while int(steps * drawn) < 1:  # 49 x (1/49) is 0.999...: the next float up
            drawn = math.nextafter(drawn, 2.0)
    return drawn


def hires_final_size(
    width: int, height: int, scale: float | None, target_width: int | None, target_height: int | None,
) -> tuple[int, int]:
    """The hires fix's final size: to a size (hires_width x hires_height) what is kept of it, else by
    `scale` (width x height without a hires fix)."""
    if target_width or target_height:
        return hires_resize(width, height, target_width, target_height)[1]
    return hires_size(width, height, scale)


def hires_resize(
    width: int, height: int, target_width: int | None, target_height: int | None,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """A1111's "Hires resize" to target_width x target_height (None: from the other side, keeping
    the aspect), as its StableDiffusionProcessingTxt2Img computes it: (the size the first pass is
    upscaled to, covering the target; the size kept of it, its middle). A1111 crops whole latent
    pixels, so a kept side is a multiple of 8."""
    if not target_height:
        upscaled = (target_width or width, (target_width or width) * height // width)
    elif not target_width:
        upscaled = (target_height * width // height, target_height)
    else:
        # A1111 compares width / height < target_width / target_height; multiplied out, exactly.
        upscaled = ((target_width, target_width * height // width) if width * target_height < target_width * height
                    else (target_height * width // height, target_height))
    box = hires_crop_box(upscaled, (target_width or upscaled[0], target_height or upscaled[1]))
    return upscaled, ((box[2] - box[0]) * 8, (box[3] - box[1]) * 8)


def hires_cover(width: int, height: int, target_width: int | None, target_height: int | None) -> tuple[float, bool]:
    """The hires fix to a size (A1111's "Hires resize"): the scale that covers the target, to 4
    places, and whether the hires fix draws it (no side shrinks; within hires_scale's maximum)."""
    (up_width, up_height), _ = hires_resize(width, height, target_width, target_height)
    scale = round(max(up_width / width, up_height / height), 4)
    return scale, width <= up_width and height <= up_height and scale <= setting_limit("hires_scale", "le")


def hires_crop_box(upscaled: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """The latents kept of an upscaled first pass (left, top, right, bottom, in latent pixels of 8):
    A1111's truncate_x/truncate_y, the odd one off the right and bottom."""
    cut_x, cut_y = (upscaled[0] - target[0]) // 8, (upscaled[1] - target[1]) // 8
    return cut_x // 2, cut_y // 2, upscaled[0] // 8 - (cut_x + 1) // 2, upscaled[1] // 8 - (cut_y + 1) // 2


def drawing_settings() -> dict[str, tuple[Any, Any]]:
    """The settings a client chooses, as declared on GenerationSpec, in its order: name ->
    (its type annotated with its pydantic `Field`, its default; `...` when required). The shape
    pydantic's `create_model` takes."""
    hints = typing.get_type_hints(GenerationSpec, include_extras=True)
    return {
        field.name: (hints[field.name], ... if field.default is dataclasses.MISSING else field.default)
        for field in dataclasses.fields(GenerationSpec)
        if any(isinstance(extra, FieldInfo) for extra in getattr(hints[field.name], "__metadata__", ()))
    }


def setting(name: str) -> FieldInfo:
    """One drawing setting's declaration: `.default`, `.description`, its limits in `.metadata`."""
    annotation, default = drawing_settings()[name]
    return FieldInfo.from_annotated_attribute(annotation, default)


def setting_limit(name: str, kind: str) -> Any:
    """A limit of a drawing setting as declared (`ge`, `gt`, `le`, `multiple_of`, `max_length`...),
    or None."""
    for constraint in setting(name).metadata:
        value = getattr(constraint, kind, None)
        if value is not None:
            return value
    return None


# What may differ between the requests of one pipeline call: each image has its own prompt,
# seed and input image. Every other setting (a new one too) must be the same to share a call.
# The output format is how each job's images are saved, after the call.
PER_IMAGE = frozenset({
    "prompt", "negative_prompt", "seed", "num_images", "init_image", "mask_image", "prompt_notes", "output_format",
    "output_compression",
})


def batch_key(spec: GenerationSpec) -> tuple:
    """What two requests (of the same model) must have in common to share one pipeline call."""
    img2img = spec.init_image is not None
    masked = spec.mask_image is not None  # another pipeline: the family's inpaint class
    shared = {
        field.name: getattr(spec, field.name) for field in dataclasses.fields(spec) if field.name not in PER_IMAGE
    }
    shared["strength"] = spec.strength if img2img else None  # text-to-image ignores it
    shared["loras"] = tuple(sorted(spec.loras))
    if spec.hires_scale is None:  # without a hires fix its other settings do nothing
        shared.update(hires_steps=None, hires_strength=None, hires_upscaler=None, hires_width=None, hires_height=None)
    return (img2img, masked, *sorted(shared.items()))
