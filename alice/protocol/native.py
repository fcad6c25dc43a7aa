"""The typed native API: `POST /generate` (flat JSON body, BentoML client keyword arguments)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from alice.protocol.generation import GenerationSettings
from alice.protocol.results import GenerationResult


class GenerateRequest(GenerationSettings):
    """`/generate` refuses unknown fields: a typo such as `step` must not silently use the default."""

    model_config = ConfigDict(extra="forbid")


class GeneratedImage(BaseModel):
    name: str = Field(description="File name in the image store.")
    url: str = Field(description="Absolute URL of the image (no key needed).")
    seed: int = Field(description="Seed of this image alone.")
    b64_json: str = Field(description="The image file (PNG, JPEG or WebP: output_format), base64-encoded; the same bytes as the URL serves.")


class GenerateResponse(GenerationResult):  # type: ignore[misc, valid-type]
    """How the images were made, and the images."""

    images: list[GeneratedImage]


class FromParametersResponse(GenerateResponse):  # type: ignore[misc, valid-type]
    """`/v1/images/from-parameters`' answer: `/generate`'s, with what of the text was not honoured."""

    not_honoured: list[str] = Field(
        description="The settings of the text ALICE drew differently or not at all, each as `Key: value (why)`: "
                    "a model hash, a sampler or upscaler it lacks, ADetailer, ControlNet, a LoRA not stored."
    )
