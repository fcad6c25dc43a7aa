"""What the read routes answer, as models for the OpenAPI document: the jobs, the gallery, the
models, the settings.

Those routes build their answers as dicts (alice/http/jobs_routes.py, web_routes.py,
openai_routes.py) and keep doing so: these models only describe them, so a client generated
from `/docs.json` reads them typed, and Schemathesis' response check holds each route to its
model (tests/http/test_openapi_document.py). Nothing here validates or filters an answer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from alice.protocol.results import GenerationParameters

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]  # alice/jobs/job.py's JobState


class PreviewView(BaseModel):
    """A live preview (alice/protocol/previews.py's preview_view)."""

    index: int
    step: int
    total_steps: int
    b64_json: str = Field(description="The preview as a PNG, base64.")


class JobView(BaseModel):
    """A job as `/v1/jobs` shows it (results.public_job and its image URLs)."""

    id: str
    object: Literal["job"]
    state: JobState
    progress: float = Field(ge=0, le=1)
    step: int
    total_steps: int
    created: float = Field(description="Unix time, seconds.")
    started: float | None
    generated: float | None = Field(description="When the drawing ended (its images were saved after).")
    finished: float | None
    error: str | None
    error_code: str | None
    images: list[str] = Field(description="The stored images' names.")
    batch: int = Field(description="Images drawn in one pipeline call with this job's; 0 = none yet.")
    model: str
    source: str = Field(description="The route that queued it (async, chat, images, ...).")
    replica: str | None = Field(description="The server that ran it (ALICE_REPLICA_NAME).")
    parameters: GenerationParameters  # type: ignore[valid-type]
    image_urls: list[str]
    preview: PreviewView | None = Field(None, description="`GET /v1/jobs/{id}` of a job that asked for `previews`: "
                                                          "its newest one so far, or null.")
    owner: str | None = Field(None, description="The name of the key that queued it; only where roles are on "
                                                "(ALICE_ADMIN_KEYS).")


class JobList(BaseModel):
    object: Literal["list"]
    data: list[JobView] = Field(description="Newest first; a user key's own jobs.")


class A1111Reading(BaseModel):
    """An A1111 `parameters` text read back (a1111.parse_a1111_parameters)."""

    prompt: str
    negative_prompt: str
    settings: dict[str, str] = Field(description="The settings line's `Key: value` pairs.")


class GalleryImage(BaseModel):
    name: str
    url: str
    size_bytes: int
    created: float = Field(description="Unix time, seconds.")
    parameters_text: str | None = Field(description="The A1111 `parameters` text the image carries.")
    parameters: A1111Reading | None
    generation: dict[str, Any] | None = Field(description="What to send to `/generate` to draw it again.")


class Gallery(BaseModel):
    object: Literal["list"]
    data: list[GalleryImage] = Field(description="Newest first; a user key's own images.")
    total: int
    offset: int
    limit: int


class ModelCard(BaseModel):
    """OpenAI's model object, with ALICE's family (`type`) and how it draws (Family.facts)."""

    id: str = Field(description="`sd/<name>`.")
    object: Literal["model"]
    created: int
    owned_by: str
    ownedBy: str  # SAM's spelling  # noqa: N815
    type: str = Field(description="The model family.")
    loaded: bool
    family: str
    native_size: int
    default_steps: int
    default_guidance_scale: float
    default_scheduler: str
    schedulers: list[str] = Field(description="The scheduler names this model takes.")
    guidance: str
    negative_prompt: bool
    clip_skip: bool
    image_to_image: bool
    inpaint: bool
    hires_fix: bool
    loras: bool
    size_multiple: int
    inpainting_checkpoint: bool = Field(description="A dedicated inpainting checkpoint (a 9-channel UNet): everything it draws is drawn through its inpaint pipeline.")


class NamedFamily(BaseModel):
    name: str
    family: str


class PreviewDecoder(NamedFamily):
    families: list[str] = Field(description="The families whose previews it decodes.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]
    embeddings: list[NamedFamily] = Field(description="Textual-inversion embeddings, named in prompts.")
    preview_decoders: list[PreviewDecoder] = Field(description="Tiny autoencoders for live previews.")


class Caller(BaseModel):
    name: str | None
    role: str
    roles: bool = Field(description="Whether this server has roles (ALICE_ADMIN_KEYS).")


class SettingWords(BaseModel):
    env: str
    description: str


class ServerLimits(BaseModel):
    max_pixels: int
    max_images_per_request: int
    max_side: int
    min_side: int
    side_multiple: int
    max_steps: int
    max_guidance_scale: float
    max_prompt_chars: int
    max_seed: int
    max_loras: int


class SettingsView(BaseModel):
    """`GET /v1/settings`: the configuration (an admin's), and what a request may ask for."""

    version: str
    caller: Caller
    settings: dict[str, Any] | None = Field(description="The operator's settings, secrets masked; null but for "
                                                        "an admin where roles are on.")
    descriptions: dict[str, SettingWords] | None
    schedulers: list[str]
    default_scheduler: str
    defaults: dict[str, Any] = Field(description="Each drawing setting's default (Stable Diffusion's).")
    setting_limits: dict[str, dict[str, float]] = Field(description="Each drawing setting's limits, in JSON "
                                                                    "Schema's words (minimum, maximum, ...).")
    limits: ServerLimits
