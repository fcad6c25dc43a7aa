"""Model-manager requests, in the shapes the original ALICE server's tools send (camelCase)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, StrictBool, field_validator, model_validator

from alice.protocol.generation import STORED_NAME, NoBooleanNumbers


class ManagerRequest(NoBooleanNumbers):
    model_config = ConfigDict(extra="ignore")


class CivitAISearch(ManagerRequest):
    query: str = Field("", max_length=200, description='Words to search for; "" browses.')
    types: list[Literal["Checkpoint", "LORA", "TextualInversion"]] = Field(default_factory=list, max_length=3)
    sort: Literal["Highest Rated", "Most Downloaded", "Newest"] = "Highest Rated"
    nsfw: StrictBool = False
    limit: int = Field(20, ge=1, le=100)
    page: int = Field(1, ge=1, le=1000)


class HuggingFaceSearch(ManagerRequest):
    query: str = Field("", max_length=200)
    limit: int = Field(20, ge=1, le=100)
    sort: Literal["downloads", "likes", "trending_score", "created_at", "last_modified"] = "downloads"


# A stored model's name (alice/models/store.py), `sd/` allowed as /v1/models writes it.
BASE_NAME = STORED_NAME
BASE_HELP = ("For a transformer-only file (a FLUX fine-tune, a GGUF): the stored model of its family whose "
             "text encoders, tokenizers and VAE it uses.")


class _OntoBase(ManagerRequest):
    base: str | None = Field(None, pattern=BASE_NAME, description=BASE_HELP)

    @field_validator("base")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        return value.removeprefix("sd/") if value else value


class CivitAIDownload(_OntoBase):
    modelId: int = Field(ge=1)
    versionId: int | None = Field(None, ge=1)
    fileId: int | None = Field(None, ge=1)
    modelType: Literal["Checkpoint", "LORA", "TextualInversion"] = "Checkpoint"


# A Hugging Face download's options for a whole repo, refused with a `filename`: the validator
# below and the served document's rule (alice/http/request_rules.py) read it.
WHOLE_REPO_OPTIONS = ("withoutTransformer",)


class HuggingFaceDownload(_OntoBase):
    modelId: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", max_length=200, description="owner/name")
    filename: str | None = Field(None, max_length=300, pattern=r"^[\w./-]+\.(safetensors|gguf)$")
    revision: str = Field("main", max_length=100, pattern=r"^[\w./-]+$")
    withoutTransformer: StrictBool = Field(False, description="Everything but transformer/'s weights: a base.")

    @model_validator(mode="after")
    def _whole_repo_only(self) -> HuggingFaceDownload:
        for name in WHOLE_REPO_OPTIONS:
            if getattr(self, name) and self.filename:
                raise ValueError(f"{name} is for a whole diffusers repo, not one filename")
        return self


class UrlDownload(ManagerRequest):
    url: str = Field(pattern=r"^https?://", max_length=2000)
    filename: str | None = Field(None, max_length=200, pattern=r"^[\w.-]+\.safetensors$")
    isLora: StrictBool = False
