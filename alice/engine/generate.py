"""One text-to-image run on a loaded pipeline, with progress and cancellation."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from alice.engine.loras import extract_prompt_loras
from alice.engine.schedulers import DEFAULT_SCHEDULER, build_scheduler

StepCallback = Callable[[int, int], None]
"""Called after every denoising step with (steps done, total steps)."""

StopCheck = Callable[[], "str | None"]
"""Asked after every step; a non-empty reason stops the run at that step."""


@dataclass(frozen=True)
class GenerationSpec:
    """What to draw. Validated before it gets here; the seed is already chosen."""

    prompt: str
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


@dataclass(frozen=True)
class GenerationOutput:
    images: list[Image.Image]
    seconds: float


class GenerationStopped(Exception):
    """The run was stopped between steps (cancelled or past its deadline)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def run_generation(
    pipe: DiffusionPipeline,
    base_scheduler_config: Any,
    spec: GenerationSpec,
    *,
    init_image: Image.Image | None = None,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> GenerationOutput:
    """Draw `spec.num_images` images, one after another: image i uses seed `spec.seed + i` for
    its noise and sampler, so a request for that seed alone gives the same image again
    (a batch would not: batched arithmetic and shared sampler noise differ in the last bits).
    With `init_image`, `pipe` must be an img2img pipeline; the input is scaled to the size asked.

    The caller must own the pipeline for the duration (ALICE runs one generation at a time):
    the scheduler is replaced for every image.
    """
    started = time.perf_counter()
    stop_reason: str | None = should_stop() if should_stop else None
    if stop_reason:
        raise GenerationStopped(stop_reason)
    prompt, _ = extract_prompt_loras(spec.prompt)  # the tags select adapters; CLIP never sees them
    images: list[Image.Image] = []
    done_before = 0  # steps of the images already drawn
    image_args: dict[str, Any] = {"width": spec.width, "height": spec.height}
    if init_image is not None:
        # img2img pipelines take their size from the input image.
        image_args = {"image": init_image.convert("RGB").resize((spec.width, spec.height), Image.Resampling.LANCZOS),
                "strength": spec.strength}

    def step_end(pipeline: DiffusionPipeline, step: int, timestep: Any, kwargs: dict) -> dict:
        nonlocal stop_reason
        if on_step:
            total = pipeline.num_timesteps
            on_step(done_before + step + 1, total * spec.num_images)
        if should_stop and (reason := should_stop()):
            stop_reason = reason
            # Skips the remaining steps; the pipeline still decodes, so the result is dropped below.
            pipeline._interrupt = True
        return kwargs

    for index in range(spec.num_images):
        seed = spec.seed + index
        pipe.scheduler = build_scheduler(spec.scheduler, base_scheduler_config, seed)
        # A CPU generator gives the same starting noise on every device for a given seed.
        generator = torch.Generator("cpu").manual_seed(seed)
        with torch.inference_mode():
            result = pipe(
                prompt=prompt,
                negative_prompt=spec.negative_prompt or None,
                **image_args,
                num_inference_steps=spec.steps,
                guidance_scale=spec.guidance_scale,
                generator=generator,
                callback_on_step_end=step_end,
                output_type="pil",
            )
        if stop_reason:
            raise GenerationStopped(stop_reason)
        images.extend(result.images)
        done_before += pipe.num_timesteps
    return GenerationOutput(images=images, seconds=time.perf_counter() - started)
