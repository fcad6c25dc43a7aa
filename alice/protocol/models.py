"""Model-manager requests, in the shapes the original ALICE server's tools send (camelCase)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ManagerRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CivitAISearch(ManagerRequest):
    query: str = Field("", max_length=200, description='Words to search for; "" browses.')
    types: list[Literal["Checkpoint", "LORA"]] = Field(default_factory=list, max_length=2)
    sort: Literal["Highest Rated", "Most Downloaded", "Newest"] = "Highest Rated"
    nsfw: bool = False
    limit: int = Field(20, ge=1, le=100)
    page: int = Field(1, ge=1, le=1000)


class HuggingFaceSearch(ManagerRequest):
    query: str = Field("", max_length=200)
    limit: int = Field(20, ge=1, le=100)
    sort: Literal["downloads", "likes", "trending_score", "created_at", "last_modified"] = "downloads"


class CivitAIDownload(ManagerRequest):
    modelId: int = Field(ge=1)
    versionId: int | None = Field(None, ge=1)
    fileId: int | None = Field(None, ge=1)
    modelType: Literal["Checkpoint", "LORA"] = "Checkpoint"


class HuggingFaceDownload(ManagerRequest):
    modelId: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", max_length=200, description="owner/name")
    filename: str | None = Field(None, max_length=300, pattern=r"^[\w./-]+\.safetensors$")
    revision: str = Field("main", max_length=100, pattern=r"^[\w./-]+$")


class UrlDownload(ManagerRequest):
    url: str = Field(pattern=r"^https?://", max_length=2000)
    filename: str | None = Field(None, max_length=200, pattern=r"^[\w.-]+\.safetensors$")
    isLora: bool = False
