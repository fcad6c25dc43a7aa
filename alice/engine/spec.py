"""What the engine draws: one request's settings, resolved and checked (no torch in here).

The protocol builds a GenerationSpec from any client's settings (GenerationSettings.to_spec)
and cuts every answer from one (the protocol's results module), so a new setting is a field here,
a field of the schema and an argument of the pipeline call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from alice.engine.scheduler_names import DEFAULT_SCHEDULER


@dataclass(frozen=True)
class GenerationSpec:
    """What to draw. Validated before it gets here; the seed is already chosen and the
    scheduler name is canonical."""

    prompt: str  # as the client wrote it: <lora:...> tags are taken out before the text encoder
    seed: int
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    scheduler: str = DEFAULT_SCHEDULER
    num_images: int = 1
    init_image: str | None = None  # name of the stored input image for img2img
    strength: float = 0.75  # img2img: how much of the input is redrawn (1 = all)
    loras: tuple[tuple[str, float], ...] = ()  # (name, scale), from settings and <lora:...> tags
    clip_skip: int | None = None  # A1111's count: 1 = the text encoder's last layer; None = the model's default


# What may differ between the requests of one pipeline call: each image has its own prompt,
# seed and input image. Every other setting (a new one too) must be the same to share a call.
PER_IMAGE = frozenset({"prompt", "negative_prompt", "seed", "num_images", "init_image"})


def batch_key(spec: GenerationSpec) -> tuple:
    """What two requests (of the same model) must have in common to share one pipeline call."""
    img2img = spec.init_image is not None
    shared = {
        field.name: getattr(spec, field.name) for field in dataclasses.fields(spec) if field.name not in PER_IMAGE
    }
    shared["strength"] = spec.strength if img2img else None  # text-to-image ignores it
    shared["loras"] = tuple(sorted(spec.loras))
    return (img2img, *sorted(shared.items()))
