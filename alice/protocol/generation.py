"""The generation settings every route shares, with their limits.

The drawing settings (steps, guidance_scale, clip_skip...) are declared once, on the engine's
GenerationSpec (alice/engine/spec.py), with their defaults, limits and descriptions; the schema
here is derived from them, so a new one shows in every route without a line here. Declared here
are only what a request says differently from the spec: the model, a size or seed left to the
server (None), the input image, the LoRAs as objects, and the prompt's and scheduler's checks.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator
from pydantic.fields import FieldInfo

from alice.engine.families import FAMILIES, Family
from alice.engine.previews import MAX_PREVIEWS
from alice.engine.prompt_tags import extract_prompt_loras
from alice.engine.scheduler_names import FLOW_EQUIVALENTS, SCHEDULER_NAMES, canonical_scheduler_name
from alice.engine.spec import (
    MAX_SEED, MAX_SIDE, GenerationSpec, drawing_settings, hires_cover, hires_final_size, setting, setting_limit,
)

MODEL_PREFIX = "sd/"
MAX_INPUT_IMAGE_CHARS = 28_000_000  # 20 MB of image as base64
MAX_LORAS = 8  # per request, `loras` and `<lora:...>` tags together: each one loads an adapter
# The drawing settings a request may leave to its model's family (see to_spec).
FAMILY_DEFAULTS = ("steps", "guidance_scale", "scheduler")
# The spec's fields a setting of the same name carries over as it is (see to_spec).
_SPEC_FIELDS = frozenset(field.name for field in dataclasses.fields(GenerationSpec))


# A stored model's name (alice/models/store.py checks it: 400 otherwise), `sd/` allowed.
STORED_NAME = r"^(sd/)?[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$"
MODEL_NAME = r"^$|" + STORED_NAME  # "" = the default model, as none
LORA_NAME = STORED_NAME.replace("(sd/)?", "")  # a LoRA is named without the prefix
# JSON Schema's word for "holds a character that is not white space".
NON_BLANK = r"\S"
# Rules across settings, declared once: the checks that refuse a request breaking one (400
# naming the setting) and the served OpenAPI document (alice/http/request_rules.py) read them.
# Not in the models' own JSON Schema: BentoML builds its document from GenerateRequest's too,
# and its Schema class takes no `if`, `then` or `not` (`bentoml build` fails).
# Settings that edit an input image: sent (not null) without `input_image`, refused.
NEEDS_INPUT_IMAGE = ("mask", "outpaint")
# Settings of text-to-image only (the hires fix, by scale or to a size, is its second pass):
# refused with `input_image`.
NOT_WITH_INPUT_IMAGE = ("hires_scale", "hires_width", "hires_height")


def _any_case(names: list[str]) -> str:
    """An ECMA-262 pattern (JSON Schema's regex: no inline flags) of `names` in any case, with
    the white space around them that canonical_scheduler_name strips."""
    def word(name: str) -> str:
        # Only the regex's own characters escaped: ECMA-262's unicode mode refuses `\\-`.
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else "\\" + c if c in r"\.+*?^$()[]{}|" else c
                       for c in name)
    return r"^\s*(?:" + "|".join(word(name) for name in names) + r")\s*$"


# The scheduler names canonical_scheduler_name accepts, as it reads them: any case. An enum
# would say lowercase only (and refuse, in a generated client, what the server takes).
SCHEDULER_PATTERN = _any_case(SCHEDULER_NAMES)


def _schedulers_words() -> str:
    """Which names a model takes (its family's), told in the description: the schema cannot
    tie `scheduler` to `model`."""
    by_family = "; ".join(
        f"{', '.join(name for name, family in FAMILIES.items() if family.schedulers == names)}: {', '.join(names)}"
        for names in dict.fromkeys(family.schedulers for family in FAMILIES.values()))
    equivalents = "; ".join(
        f"{', '.join(sd for sd, to in FLOW_EQUIVALENTS.items() if to == flow)}: {flow}"
        for flow in dict.fromkeys(FLOW_EQUIVALENTS.values()))
    return (f"Any case, of: {', '.join(SCHEDULER_NAMES)}. A model takes its family's (`GET /v1/models`: each "
            f"model's `schedulers`): {by_family}. An SD name asked of a flow model draws its flow equivalent "
            f"where the family has one ({equivalents}).")


def _annotation_types(annotation: Any) -> tuple[Any, ...]:
    return (annotation, *typing.get_args(annotation))


def strip_model_prefix(model_id: str) -> str:
    """SAM sends `sd/<name>`; the store knows `<name>`. Both spellings are accepted."""
    model_id = model_id.strip()
    return model_id[len(MODEL_PREFIX) :] if model_id.lower().startswith(MODEL_PREFIX) else model_id


class InvalidRequest(ValueError):
    """A request value that passed the schema but not a limit of this server."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class NoBooleanNumbers(BaseModel):
    """Refuses true/false for a number or text: pydantic would read true as 1, which neither the
    schema nor the client who sent it meant."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields \
                and bool not in _annotation_types(cls.model_fields[info.field_name].annotation):
            raise ValueError("true or false is not a value of this field")
        return value


class Outpaint(BaseModel):
    """How far to extend the input image on each side (outpainting)."""

    model_config = ConfigDict(extra="forbid")

    left: int = Field(0, ge=0, le=MAX_SIDE, description="Pixels added on the left.")
    top: int = Field(0, ge=0, le=MAX_SIDE, description="Pixels added at the top.")
    right: int = Field(0, ge=0, le=MAX_SIDE, description="Pixels added on the right.")
    bottom: int = Field(0, ge=0, le=MAX_SIDE, description="Pixels added at the bottom.")

    def borders(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom


class LoraChoice(BaseModel):
    # The store's name rule in the schema only: the store refuses another name (400) when the LoRA is looked up.
    name: str = Field(min_length=1, max_length=63, json_schema_extra={"pattern": LORA_NAME},
                      description="A LoRA stored in ALICE's model store.")
    scale: float = Field(1.0, ge=-5, le=5, allow_inf_nan=False, description="Strength of the LoRA.")


def _or_none(name: str, none_means: str) -> Any:
    """The spec's setting `name` as a request may leave it out: its limits, default None (the
    server chooses), and its description saying what none means."""
    declared = setting(name)
    return FieldInfo.merge_field_infos(declared, default=None, description=f"{declared.description.rstrip('.')}; none = {none_means}.")


# Every drawing setting of the spec, declared there: type, default, limits, description.
DrawingSettings = create_model(
    "DrawingSettings",
    __doc__="The spec's drawing settings as a request sets them (alice/engine/spec.py declares them).",
    **drawing_settings(),
)


class GenerationSettings(NoBooleanNumbers, DrawingSettings):  # type: ignore[misc, valid-type]
    """Prompt and knobs of one text-to-image request, as SD users name them."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        None, max_length=200, description="Stored model name, with or without the `sd/` prefix; none = the default.",
        json_schema_extra={"pattern": MODEL_NAME},
    )
    # None = the model's native size (512 for SD 1.5, 768 for SD 2.x, 1024 for SDXL, 64 for the
    # demo), as diffusers chooses it: a model drawn far from its training size draws badly.
    width: int | None = _or_none("width", "the model's native size")
    height: int | None = _or_none("height", "the model's native size")
    seed: int | None = _or_none("seed", "random")
    # None = the model family's (alice/engine/families.py): FLUX.1 schnell draws 4 steps without
    # guidance, SD 25 steps at 7.5 (the spec's declared defaults).
    steps: int | None = _or_none("steps", "the model family's default (25 for Stable Diffusion)")
    guidance_scale: float | None = _or_none("guidance_scale", "the model family's default (7.5 for Stable Diffusion)")
    scheduler: str | None = _or_none("scheduler", "the model family's default (dpm++_2m_karras for Stable Diffusion)")
    input_image: str | None = Field(
        None,
        max_length=MAX_INPUT_IMAGE_CHARS,
        description="img2img: the starting image as base64, a data URI, or the URL of an image this server made.",
    )
    # Inpainting as OpenAI's Images API says it: the mask's fully transparent pixels are redrawn.
    mask: str | None = Field(
        None,
        max_length=MAX_INPUT_IMAGE_CHARS,
        description="Inpainting: a PNG the size of input_image whose fully transparent pixels (alpha 0) are "
        "redrawn and the rest kept; base64, a data URI, or the URL of an image this server made. Without it, "
        "the fully transparent pixels of input_image are the ones redrawn.",
    )
    outpaint: Outpaint | None = Field(
        None,
        description="Outpainting: pixels to extend input_image by on each side; the new border is drawn, the "
        "image kept. Width and height left out are the extended image's.",
    )
    loras: list[LoraChoice] = Field(
        default_factory=list, max_length=MAX_LORAS,
        description="LoRAs to apply; `<lora:name:scale>` in the prompt works too (both count towards the limit).",
    )
    # Not a drawing setting (the image is the same bits with or without): what the job shows
    # while it runs, so it is no field of the spec and no part of the results or the PNG text.
    previews: int = Field(
        0, ge=0, le=MAX_PREVIEWS,
        description="Live previews of the first image while it is drawn, spread evenly over the steps "
        "(`/v1/jobs/{id}`'s `preview`, the chat stream's progress); 0 = none.",
    )

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must contain text")
        return value

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """The prompt's non-blank rule and the LoRAs' one-entry-per-name rule in the schema too."""
        schema = handler(core_schema)
        schema = handler.resolve_ref_schema(schema)
        properties = schema.get("properties", {})
        if "prompt" in properties and "minLength" in properties["prompt"]:
            properties["prompt"]["pattern"] = NON_BLANK
        if "loras" in properties:
            properties["loras"]["uniqueItems"] = True
            properties["loras"]["description"] += " Each LoRA once."
        if "scheduler" in properties:
            properties["scheduler"]["description"] += " " + _schedulers_words()
            for choice in properties["scheduler"].get("anyOf", ()):
                if choice.get("type") == "string":
                    choice["pattern"] = SCHEDULER_PATTERN
        return schema

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        return canonical_scheduler_name(value) if value is not None else None

    @field_validator("model")
    @classmethod
    def _strip_prefix(cls, value: str | None) -> str | None:
        return strip_model_prefix(value) or None if value is not None else None

    def to_spec(
        self, *, native_size: int, max_pixels: int, max_images: int, text_encoder_layers: int | None = None,
        family: Family | None = None,
    ) -> GenerationSpec:
        """What the engine draws, from any client's settings: the one place they are turned into
        a GenerationSpec. No size = the model's `native_size`, no seed = a random one; the LoRAs
        of the `loras` field and of the prompt's tags together; the server's limits held
        (InvalidRequest names the first problem). With the model's `family`, steps, guidance and
        scheduler left out are that family's defaults, and what the family does not take is
        refused. Every other setting is carried over by its name. The input image is the
        caller's to store, as the spec's `init_image`."""
        values = {name: getattr(self, name) for name in _SPEC_FIELDS & type(self).model_fields.keys()}
        values.update(self._drawing_defaults(family))
        values.update(
            width=self.width or native_size,
            height=self.height or native_size,
            # Below the top by 16: image i of num_images draws from seed + i.
            seed=self.seed if self.seed is not None else secrets.randbelow(MAX_SEED + 1 - 16),
            loras=tuple((choice.name, choice.scale) for choice in self.requested_loras()),
        )
        values["hires_scale"] = self._hires_scale(values["width"], values["height"])
        chosen = self.model_copy(
            update={name: values[name] for name in ("width", "height", "hires_scale", *FAMILY_DEFAULTS)})
        chosen.check_limits(max_pixels=max_pixels, max_images=max_images, text_encoder_layers=text_encoder_layers)
        if family is not None:
            chosen.check_family(family)
        return GenerationSpec(**values)

    def _hires_scale(self, width: int, height: int) -> float | None:
        """The hires fix's scale: as asked, or, for a target size (hires_width x hires_height,
        A1111's "Hires resize"), the scale that covers it, held to hires_scale's limits."""
        if self.hires_width is None and self.hires_height is None:
            return self.hires_scale
        scale, drawable = hires_cover(width, height, self.hires_width, self.hires_height)
        target = f"hires_width x hires_height = {self.hires_width or 'auto'}x{self.hires_height or 'auto'}"
        if not drawable:
            raise InvalidRequest("hires_width", f"{target} upscales {width}x{height} by {scale:g} to cover it; "
                                                f"the hires fix upscales by 1 to {setting_limit('hires_scale', 'le'):g}")
        if self.hires_scale is not None and round(self.hires_scale, 4) != scale:
            raise InvalidRequest("hires_scale", f"{target} sets the hires fix's scale to {scale:g} for {width}x{height}; "
                                                f"leave hires_scale out (or send {scale:g})")
        return scale

    def _hires_field(self) -> str:
        """The field that asked for the hires fix, for a refusal to name."""
        return "hires_width" if self.hires_width or self.hires_height else "hires_scale"

    def _drawing_defaults(self, family: Family | None) -> dict[str, Any]:
        """Steps, guidance and scheduler as asked, else the family's (a FLUX.1 schnell request
        without steps draws 4, not the SD 25), else, without a family, the spec's declared ones."""
        if family is None:
            defaults = {name: setting(name).default for name in FAMILY_DEFAULTS}
        else:
            defaults = {"steps": family.default_steps, "guidance_scale": family.default_guidance,
                        "scheduler": family.default_scheduler}
        chosen = {name: default if getattr(self, name) is None else getattr(self, name)
                  for name, default in defaults.items()}
        if family is not None:  # an SD sampler's name on a flow model: its flow equivalent, if any
            chosen["scheduler"] = family.scheduler_named(chosen["scheduler"]) or chosen["scheduler"]
        return chosen

    def check_family(self, family: Family) -> None:
        """What the model's family does not take, refused by name before the queue: a scheduler
        of another family, a negative prompt, clip_skip, an input image, LoRAs, or a size off its grid."""
        name = family.name
        if self.scheduler not in family.schedulers:
            raise InvalidRequest(
                "scheduler",
                f"scheduler '{self.scheduler}' does not apply to {name} models; use one of: {', '.join(family.schedulers)}",
            )
        if self.negative_prompt.strip() and not family.negative_prompt:
            raise InvalidRequest(
                "negative_prompt",
                f"{name} models take no negative prompt (their guidance is distilled into the model); leave it out",
            )
        if self.clip_skip is not None and not family.clip_skip:
            raise InvalidRequest("clip_skip", f"clip_skip applies to the CLIP-conditioned UNet models (SD 1.x, 2.x, XL), "
                                              f"not to {name} models; leave it out")
        masked = self.mask is not None or self.outpaint is not None  # a masked edit: the inpaint pipeline
        if self.input_image is not None and not masked and family.image_to_image is None:
            raise InvalidRequest("input_image", f"{name} models have no image-to-image pipeline; leave input_image out")
        if masked and family.inpaint is None:
            raise InvalidRequest("mask", f"{name} models have no inpainting pipeline in diffusers; leave mask "
                                         "and outpaint out")
        if self.hires_scale is not None and not family.is_unet:
            # Their latents are packed (FLUX) or video-shaped (Qwen-Image): a second pass over them
            # is not the A1111 hires fix this is, and nobody has checked its images.
            field = self._hires_field()
            raise InvalidRequest(field, f"the hires fix applies to the Stable Diffusion models (SD 1.x, 2.x, "
                                        f"XL), not to {name} models; leave {field} out")
        if self.requested_loras() and not family.loras:
            raise InvalidRequest("loras", f"diffusers has no LoRA loader for {name} models; leave loras and "
                                          "<lora:...> tags out")
        for side in ("width", "height"):
            value = getattr(self, side)
            if value is not None and value % family.size_multiple:
                raise InvalidRequest(side, f"{side} = {value}: {name} models draw sides that are multiples of "
                                           f"{family.size_multiple}")

    def requested_loras(self) -> list[LoraChoice]:
        """The prompt's `<lora:name:scale>` tags, then the `loras` field, held together to the
        limits of `loras` (count, name, scale range) and each LoRA asked for once: a tag is no
        way around them. InvalidRequest names the first problem."""
        _, tags = extract_prompt_loras(self.prompt)
        if len(tags) + len(self.loras) > MAX_LORAS:  # the field alone cannot be: its schema says so
            raise InvalidRequest(
                "prompt",
                f"prompt: {len(tags)} <lora:...> tags and {len(self.loras)} `loras` entries ask for "
                f"{len(tags) + len(self.loras)} LoRAs; at most {MAX_LORAS} per request",
            )
        chosen = []
        for name, scale in tags:
            try:
                chosen.append(LoraChoice(name=name, scale=scale))
            except ValidationError as exc:
                problem = exc.errors()[0]
                raise InvalidRequest(
                    "prompt", f"prompt: <lora:{name[:70]}:{scale:g}>: {problem['loc'][0]}: {problem['msg']}"
                ) from None
        chosen.extend(self.loras)
        seen: set[str] = set()
        for choice in chosen:
            if choice.name in seen:
                raise InvalidRequest(
                    "prompt" if tags else "loras",
                    f"the LoRA '{choice.name}' is asked for twice (in <lora:...> tags or `loras`); "
                    "name each LoRA once, with the scale you want",
                )
            seen.add(choice.name)
        return chosen

    def check_limits(self, *, max_pixels: int, max_images: int, text_encoder_layers: int | None = None) -> None:
        """Limits that come from the operator's configuration and the model, not the schema
        (sizes chosen)."""
        assert self.width is not None and self.height is not None, "choose the size first"
        final_width, final_height = hires_final_size(
            self.width, self.height, self.hires_scale, self.hires_width, self.hires_height)
        if self.hires_scale is not None and self.width * self.height <= max_pixels < final_width * final_height:
            field = self._hires_field()
            asked = (f"hires_width x hires_height = {self.hires_width or 'auto'}x{self.hires_height or 'auto'}"
                     if field == "hires_width" else f"hires_scale = {self.hires_scale:g}")
            raise InvalidRequest(
                field,
                f"{asked} draws {self.width}x{self.height} at {final_width}x{final_height} "
                f"= {final_width * final_height} pixels, over this server's limit of {max_pixels} pixels "
                "(ALICE_MAX_PIXELS)",
            )
        if self.width * self.height > max_pixels:
            raise InvalidRequest(
                "width",
                f"width x height = {self.width}x{self.height} = {self.width * self.height} pixels is over "
                f"this server's limit of {max_pixels} pixels (ALICE_MAX_PIXELS)",
            )
        if self.num_images > max_images:
            raise InvalidRequest(
                "num_images",
                f"num_images = {self.num_images} is over this server's limit of {max_images} "
                "(ALICE_MAX_IMAGES_PER_REQUEST)",
            )
        # diffusers reads hidden state -clip_skip of the encoder's layers + 1: none further back.
        if self.clip_skip is not None and text_encoder_layers and self.clip_skip > text_encoder_layers + 1:
            raise InvalidRequest(
                "clip_skip",
                f"clip_skip = {self.clip_skip} is beyond this model's text encoder, which has "
                f"{text_encoder_layers} layers: at most {text_encoder_layers + 1}",
            )
        if self.input_image is not None and any(getattr(self, name) is not None for name in NOT_WITH_INPUT_IMAGE):
            field = self._hires_field()
            raise InvalidRequest(field, f"the hires fix is a second pass of text-to-image; leave {field} "
                                        "out of a request with input_image")


def sent(name: str) -> dict[str, Any]:
    """JSON Schema for "the object has `name`, not null" (a null setting is one left out)."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


# JSON Schema's words for a limit: what `/v1/settings` serves per setting, as the schema says it.
LIMIT_WORDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength", "maxItems")


@functools.cache
def setting_limits() -> dict[str, dict[str, Any]]:
    """Each setting's limits as the request schema states them (the spec's declarations):
    {"steps": {"minimum": 1, "maximum": 150}, "strength": {"exclusiveMinimum": 0, "maximum": 1}, ...}.
    A setting that may be none (width) has the limits of its value."""
    limits = {}
    for name, schema in GenerationSettings.model_json_schema()["properties"].items():
        found = {word: part[word] for part in (schema, *schema.get("anyOf", ())) for word in LIMIT_WORDS if word in part}
        if found:
            limits[name] = found
    return limits
