"""Hugging Face: search diffusers repos, and plan which files of a repo to fetch.

huggingface_hub lists repos and their files; the files themselves are fetched with
ALICE's own resumable, checksummed download (`fetch.py`), so progress, cancel and
resume work the same for every source.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alice.engine.preview_decoders import CONFIG, TINY_AUTOENCODER_CLASS

if TYPE_CHECKING:  # imported when first used: the service's main process never is (alice/engine/__init__.py)
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

DEFAULT_ENDPOINT = "https://huggingface.co"
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocabularies and merges
WEIGHT_SUFFIX = ".safetensors"
MODEL_INDEX = "model_index.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMER = "transformer"  # the component a base leaves out (alice/engine/transformer_files.py says so too)


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


def plan(repo_id: str, filename: str | None, revision: str, *, without_transformer: bool = False) -> RepoPlan:
    """Which files to fetch: one named file, or what a diffusers pipeline loads with (the
    components its model_index.json names, safetensors only, one format each), its
    transformer's weights left out when `without_transformer` (a base for transformer files).

    Access is checked on the first file before any weight is planned, so a gated repo fails
    at once with what to do (HubError), not after the listing of a 30 GB download."""
    from huggingface_hub.hf_api import RepoFile

    with _refusals(repo_id, f"cannot list {repo_id}@{revision} on the hub"):
        commit = api().model_info(repo_id, revision=revision).sha or revision
        tree = [f for f in api().list_repo_tree(repo_id, revision=commit, recursive=True, expand=True)
                if isinstance(f, RepoFile)]
    if filename:
        if without_transformer:
            raise HubError("without_transformer is for a diffusers repo, not one named file")
        chosen = [f for f in tree if f.path == filename]
        if not chosen:
            raise HubError(f"{repo_id} has no file {filename}")
        with _refusals(repo_id, f"cannot read {filename} of {repo_id}"):
            _check_access(repo_id, commit, filename)
        return RepoPlan(repo_id, commit, chosen, is_pipeline=False)
    if not any(f.path == MODEL_INDEX for f in tree):
        if not without_transformer and (files := _tiny_autoencoder_files(repo_id, commit, tree)):
            return RepoPlan(repo_id, commit, files, is_pipeline=True)  # imported as a preview decoder
        raise HubError(f"{repo_id} is not a diffusers pipeline (no model_index.json); name a .safetensors or .gguf file")
    with _refusals(repo_id, f"cannot read model_index.json of {repo_id}"):
        index = json.loads(_read_file(repo_id, commit, MODEL_INDEX))
    components = pipeline_components(index)
    if without_transformer and TRANSFORMER not in components:
        raise HubError(f"{repo_id} has no transformer to leave out (its pipeline is {index.get('_class_name')})")
    skipped = {TRANSFORMER} if without_transformer else set()
    return RepoPlan(repo_id, commit, pipeline_files(tree, components, skip_weights_of=skipped), is_pipeline=True)


def _tiny_autoencoder_files(repo_id: str, commit: str, tree: list[RepoFile]) -> list[RepoFile]:
    """A tiny autoencoder's repo (madebyollin/taesd, taesdxl, taesd3, taef1: a diffusers
    AutoencoderTiny at the top, no model_index.json): its config.json and one format of its
    diffusers weights, leaving the original code's .pth and the .bin copies; none for another repo."""
    if not any(f.path == CONFIG for f in tree):
        return []
    with _refusals(repo_id, f"cannot read {CONFIG} of {repo_id}"):
        config = json.loads(_read_file(repo_id, commit, CONFIG))
    if not isinstance(config, dict) or config.get("_class_name") != TINY_AUTOENCODER_CLASS:
        return []
    weights = _one_format([f for f in tree if "/" not in f.path and f.path.startswith(DIFFUSERS_WEIGHTS)
                           and f.path.endswith(WEIGHT_SUFFIX)])
    if not weights:
        raise HubError(f"{repo_id} is a tiny autoencoder without {DIFFUSERS_WEIGHTS}.safetensors weights")
    return [f for f in tree if f.path == CONFIG] + weights


def pipeline_components(index: dict[str, Any]) -> set[str]:
    """The folders a pipeline loads from: model_index.json's entries with a class (FLUX's
    `image_encoder: [null, null]` and the like are optional parts the repo does not ship)."""
    return {name for name, value in index.items()
            if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1]}


def pipeline_files(tree: list[RepoFile], components: set[str], skip_weights_of: set[str] = frozenset()) -> list[RepoFile]:
    """model_index.json, and in each component's folder its configs and one format of its
    weights: the fp16 variant where there is one, else the plain files; a sharded set with its
    index. Repos also carry the same weights in other shapes (BFL's `flux1-dev.safetensors` and
    `ae.safetensors` at the top, SD 3.5's `text_encoders/` for ComfyUI, `.bin` and `non_ema`
    copies): those are what a pipeline does not load, and are left, often half the bytes."""
    chosen = [f for f in tree if f.path == MODEL_INDEX]
    by_folder: dict[str, list[RepoFile]] = {}
    for f in tree:
        folder, _, name = f.path.partition("/")
        if folder in components and name and "/" not in name:
            by_folder.setdefault(folder, []).append(f)
    for folder, files in sorted(by_folder.items()):
        weights = [f for f in files if f.path.endswith(WEIGHT_SUFFIX) or _INDEX.search(f.path)]
        chosen += [f for f in files if f not in weights and f.path.endswith(CONFIG_SUFFIXES)]
        if folder not in skip_weights_of:
            chosen += _one_format(weights)
    return chosen


def _one_format(weights: list[RepoFile]) -> list[RepoFile]:
    """A component's weight files (and shard indexes) of one variant: fp16, else none (plain),
    else whichever the folder has (a repo of bf16 files only)."""
    variants: dict[str | None, list[RepoFile]] = {}
    for f in weights:
        variants.setdefault(_variant(f.path.rsplit("/", 1)[-1]), []).append(f)
    for wanted in ("fp16", None):
        if wanted in variants:
            return variants[wanted]
    return variants[sorted(variants)[0]] if variants else []


_INDEX = re.compile(r"\.safetensors\.index(?:\.(\w+))?\.json$")
_WEIGHT = re.compile(r"^[^.]+(?:\.(\w+))?(?:-\d+-of-\d+)?\.safetensors$")


def _variant(name: str) -> str | None:
    """model.fp16.safetensors, model.fp16-00001-of-00002.safetensors and
    model.safetensors.index.fp16.json are fp16; model.safetensors and its shards none."""
    match = _INDEX.search(name) or _WEIGHT.match(name)
    return match.group(1) if match else "other"


def plain_name(path: str) -> str:
    """unet/diffusion_pytorch_model.fp16.safetensors -> unet/diffusion_pytorch_model.safetensors,
    and a sharded fp16 set's index likewise, so the stored folder loads without naming a variant.
    fp16 shards keep their names: the index lists them so."""
    path = re.sub(r"\.fp16(\.safetensors)$", r"\1", path)
    return re.sub(r"(\.safetensors\.index)\.fp16(\.json)$", r"\1\2", path)


def _read_file(repo_id: str, commit: str, path: str) -> bytes:
    """A small file of the repo, through huggingface_hub (its errors tell a gated repo apart)."""
    from huggingface_hub import get_session
    from huggingface_hub.utils import build_hf_headers, hf_raise_for_status

    response = get_session().get(file_url(repo_id, commit, path), headers=build_hf_headers(token=token() or False),
                                 follow_redirects=True, timeout=30)
    hf_raise_for_status(response)
    return response.content


def _check_access(repo_id: str, commit: str, path: str) -> None:
    from huggingface_hub import get_hf_file_metadata

    get_hf_file_metadata(file_url(repo_id, commit, path), token=token() or False)


@contextlib.contextmanager
def _refusals(repo_id: str, failing: str) -> Iterator[None]:
    """huggingface_hub's errors as a HubError that says what to do (never the token)."""
    try:
        yield
    except HubError:
        raise
    except Exception as exc:  # network, HTTP and parsing errors alike
        raise HubError(refusal_message(repo_id, exc, failing)) from None


def refusal_message(repo_id: str, exc: Exception, failing: str) -> str:
    """What a refusal of the hub means. A gated repo (FLUX.1-dev, SD 3.5) answers 401 without a
    token and 403 to an account that has not accepted its licence, both with X-Error-Code
    GatedRepo (huggingface_hub's GatedRepoError); a token the hub does not know is a 401 too."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    hub_says = (response.headers.get("X-Error-Message") or "") if response is not None else ""
    page = f"{DEFAULT_ENDPOINT}/{repo_id}"
    if status == 401 and "credentials" in hub_says.lower():
        return (f"{failing}: the hub does not accept HF_TOKEN (HTTP 401, \"{hub_says}\"); make a new token at "
                f"{DEFAULT_ENDPOINT}/settings/tokens")
    if isinstance(exc, GatedRepoError):
        if token() is None:
            return (f"{repo_id} is gated (HTTP {status}): accept its licence at {page} while logged in, then set "
                    f"HF_TOKEN to a token of that account ({DEFAULT_ENDPOINT}/settings/tokens)")
        return (f"{repo_id} is gated and the account of HF_TOKEN has not been granted access (HTTP {status}): "
                f"accept its licence at {page} with that account, then try again")
    if isinstance(exc, RepositoryNotFoundError):
        private = "HF_TOKEN cannot see it" if token() else "without HF_TOKEN"
        return f"{failing}: no such repo, or a private one ({private}) (HTTP {status})"
    if status is not None:
        return f"{failing}: the hub answered HTTP {status}"
    return f"{failing} ({type(exc).__name__})"


def file_url(repo_id: str, commit: str, path: str) -> str:
    return f"{endpoint()}/{repo_id}/resolve/{commit}/{path}"


def file_sha256(f: RepoFile) -> str | None:
    lfs = f.lfs
    if lfs is None:
        return None
    return lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
