"""How a job's images were made, in one model every answer is cut from: `/generate`'s answer,
chat `metadata`, a job's `parameters` on `/v1/jobs` and the A1111 `parameters` text in each PNG.

Its settings are the spec's fields, taken from GenerationSpec itself (typed and described as the
schema describes them): a setting added to the schema and the spec shows in every answer.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, create_model

from alice.engine.hires import A1111_UPSCALERS
from alice.engine.masks import FEATHER_PX
from alice.engine.scheduler_names import a1111_sampler_name
from alice.engine.spec import GenerationSpec
from alice.protocol.a1111 import a1111_labels, a1111_parameters
from alice.protocol.generation import GenerationSettings

if TYPE_CHECKING:
    from alice.jobs.queue import Job


class Timings(BaseModel):
    queued_s: float
    generation_s: float
    total_s: float


class _Parameters(BaseModel):
    @classmethod
    def of(cls, spec: GenerationSpec, **extra: Any) -> Any:
        return cls(**dataclasses.asdict(spec), **extra)

    def a1111_text(self, model: str, index: int) -> str:
        """The A1111 `parameters` text of image `index` (seed + index)."""
        values: Any = self
        extra = {"Denoising strength": str(values.strength)} if values.init_image else {}
        if values.mask_image:
            extra["Mask blur"] = str(FEATHER_PX)  # A1111's name for the soft edge of the blend-back
        if values.loras:
            extra["LoRAs"] = " ".join(f"{name}:{scale:g}" for name, scale in values.loras)
        for name, label in a1111_labels().items():
            if getattr(values, name) is not None:
                extra[label] = str(getattr(values, name))
        if values.hires_width or values.hires_height:  # a target size: A1111 writes it, not the scale
            extra["Hires resize"] = f"{values.hires_width or 0}x{values.hires_height or 0}"
        elif values.hires_scale is not None:  # as A1111 writes it; Size stays the first pass's
            extra["Hires upscale"] = f"{values.hires_scale:g}"
        if values.hires_scale is not None:
            if values.hires_steps:  # A1111 leaves it out when the second pass runs `steps`
                extra["Hires steps"] = str(values.hires_steps)
            extra["Hires upscaler"] = A1111_UPSCALERS[values.hires_upscaler]
            extra["Denoising strength"] = str(values.hires_strength)
        return a1111_parameters(
            prompt=values.prompt,
            negative_prompt=values.negative_prompt,
            steps=values.steps,
            sampler=a1111_sampler_name(values.scheduler),
            guidance_scale=values.guidance_scale,
            seed=values.seed + index,
            width=values.width,
            height=values.height,
            model=model,
            extra=extra,
        )


# The spec's own fields that no request sets, described for the answers.
_OWN_FIELDS = {
    "prompt_notes": "What the model read differently from the prompts as written: weight syntax a "
                    "transformer model reads as plain words, tokens its CLIP encoder cut. Empty: all of it, as written.",
}


def _spec_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(GenerationSpec)
    described = GenerationSettings.model_fields
    return {
        field.name: (hints[field.name], Field(description=described[field.name].description)
                     if field.name in described
                     else Field(field.default, description=_OWN_FIELDS[field.name]) if field.name in _OWN_FIELDS
                     else ...)
        for field in dataclasses.fields(GenerationSpec)
    }


GenerationParameters = create_model(
    "GenerationParameters",
    __base__=_Parameters,
    __doc__="A job's settings as drawn: the spec's fields (`init_image` = the stored input's name).",
    **_spec_fields(),
)


class GenerationResult(GenerationParameters):  # type: ignore[misc, valid-type]
    """How a finished job's images were made."""

    job_id: str
    model: str = Field(description="The stored model that drew them.")
    seeds: list[int] = Field(description="Image i's seed: seed + i.")
    img2img: bool = Field(description="Drawn from an input image (`strength` applies).")
    inpaint: bool = Field(False, description="A masked edit: only the masked area of the input image was redrawn.")
    init_image: str | None = Field(None, exclude=True)  # the stored input's name: the server's business
    mask_image: str | None = Field(None, exclude=True)  # the stored mask's name: the server's business
    timings: Timings

    @classmethod
    def from_job(cls, job: Job, **extra: Any) -> Any:
        """The result of a finished job; `extra` fills a subclass's own fields (the images)."""
        started, finished = job.started or job.created, job.finished or job.created
        timings = Timings(
            queued_s=round(started - job.created, 4),
            generation_s=round(finished - started, 4),
            total_s=round(finished - job.created, 4),
        )
        spec = job.spec
        return cls.of(
            spec,
            job_id=job.id,
            model=job.model,
            seeds=[spec.seed + index for index in range(spec.num_images)],
            img2img=spec.init_image is not None,
            inpaint=spec.mask_image is not None,
            timings=timings,
            **extra,
        )


def job_parameters(spec: GenerationSpec) -> dict[str, Any]:
    """A job's `parameters` as `/v1/jobs` shows them."""
    return GenerationParameters.of(spec).model_dump(mode="json")


def public_job(job: Job) -> dict[str, Any]:
    """A job as the API shows it (`/v1/jobs`, the metrics summary's running job). Behind the API
    key, so its parameters are included. Here, not on `Job`: the queue knows nothing of the API."""
    return {
        "id": job.id,
        "object": "job",
        "state": job.state.value,
        "progress": round(job.progress, 4),
        "step": job.step,
        "total_steps": job.total_steps,
        "created": job.created,
        "started": job.started,
        "generated": job.generated,
        "finished": job.finished,
        "error": job.error,
        "error_code": job.error_code,
        "images": list(job.images),
        "batch": job.batch,
        "model": job.model,
        "source": job.source,
        "replica": job.replica,
        "parameters": job_parameters(job.spec),
    }
