"""The typed native API: `POST /generate` (flat JSON body, BentoML client keyword arguments)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from alice.protocol.generation import GenerationSettings


class GenerateRequest(GenerationSettings):
    """`/generate` refuses unknown fields: a typo such as `step` must not silently use the default."""

    model_config = ConfigDict(extra="forbid")


class GeneratedImage(BaseModel):
    name: str = Field(description="File name in the image store.")
    url: str = Field(description="Absolute URL of the PNG (no key needed).")
    seed: int = Field(description="Seed of this image alone.")
    b64_json: str = Field(description="The PNG, base64-encoded; the same bytes as the URL serves.")


class Timings(BaseModel):
    queued_s: float
    generation_s: float
    total_s: float


class GenerateResponse(BaseModel):
    job_id: str
    images: list[GeneratedImage]
    seed: int = Field(description="Seed of the first image; image i used seed + i.")
    model: str
    scheduler: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    prompt: str
    negative_prompt: str
    timings: Timings
