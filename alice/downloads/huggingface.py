"""Hugging Face: search diffusers repos, and plan which files of a repo to fetch.

huggingface_hub lists repos and their files; the files themselves are fetched with
ALICE's own resumable, checksummed download (`fetch.py`), so progress, cancel and
resume work the same for every source.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when first used: the service's main process never is (alice/engine/__init__.py)
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

DEFAULT_ENDPOINT = "https://huggingface.co"
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocabularies and merges
WEIGHT_SUFFIX = ".safetensors"


class HubError(Exception):
    pass


@dataclass(frozen=True)
class RepoPlan:
    repo_id: str
    commit: str
    files: list[RepoFile]
    is_pipeline: bool  # a diffusers folder (model_index.json) rather than one file


def endpoint() -> str:
    """HF_ENDPOINT, read now (huggingface_hub reads it once at import)."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def api() -> HfApi:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint(), token=token() or False)


def search(query: str, limit: int, sort: str) -> list[dict[str, Any]]:
    """Text-to-image diffusers repos, most downloaded first by default."""
    try:
        models = api().list_models(
            search=query or None, pipeline_tag="text-to-image", filter="diffusers", sort=sort, limit=limit
        )
        return [
            {
                "id": m.id,
                "downloads": m.downloads,
                "likes": m.likes,
                "tags": m.tags or [],
                "pipeline_tag": m.pipeline_tag,
                "lastModified": m.last_modified.isoformat() if m.last_modified else None,
            }
            for m in models
        ]
    except Exception as exc:  # network, HTTP and parsing errors alike
        raise HubError(f"the Hugging Face hub did not answer the search ({type(exc).__name__})") from None


def plan(repo_id: str, filename: str | None, revision: str) -> RepoPlan:
    """Which files to fetch: one named file, or a diffusers pipeline's configs and weights
    (safetensors only, the fp16 variant where the repo has one)."""
    from huggingface_hub.hf_api import RepoFile

    try:
        commit = api().model_info(repo_id, revision=revision).sha or revision
        tree = [f for f in api().list_repo_tree(repo_id, revision=commit, recursive=True, expand=True)
                if isinstance(f, RepoFile)]
    except Exception as exc:
        raise HubError(f"cannot list {repo_id}@{revision} on the hub ({type(exc).__name__})") from None
    if filename:
        chosen = [f for f in tree if f.path == filename]
        if not chosen:
            raise HubError(f"{repo_id} has no file {filename}")
        return RepoPlan(repo_id, commit, chosen, is_pipeline=False)
    if not any(f.path == "model_index.json" for f in tree):
        raise HubError(f"{repo_id} is not a diffusers pipeline (no model_index.json); name a .safetensors file")
    return RepoPlan(repo_id, commit, pipeline_files(tree), is_pipeline=True)


def pipeline_files(tree: list[RepoFile]) -> list[RepoFile]:
    configs = [f for f in tree if "/" not in f.path.strip("/") or f.path.count("/") == 1]
    configs = [f for f in configs if f.path.endswith(CONFIG_SUFFIXES)]
    weights: dict[str, RepoFile] = {}
    for f in tree:
        if f.path.count("/") != 1 or not f.path.endswith(WEIGHT_SUFFIX):
            continue
        key = plain_name(f.path)
        # The fp16 variant wins: half the download, and ALICE runs in half precision on GPUs.
        if key not in weights or ".fp16." in f.path:
            weights[key] = f
    return configs + list(weights.values())


def plain_name(path: str) -> str:
    """unet/diffusion_pytorch_model.fp16.safetensors -> unet/diffusion_pytorch_model.safetensors,
    so the stored folder loads without naming a variant."""
    return re.sub(r"\.fp16(\.safetensors)$", r"\1", path)


def file_url(repo_id: str, commit: str, path: str) -> str:
    return f"{endpoint()}/{repo_id}/resolve/{commit}/{path}"


def file_sha256(f: RepoFile) -> str | None:
    lfs = f.lfs
    if lfs is None:
        return None
    return lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
