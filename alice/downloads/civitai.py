"""CivitAI's public REST API (`/api/v1/...`): search, and the file of a model version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

MODEL_TYPES = ("Checkpoint", "LORA", "TextualInversion")
SORTS = ("Highest Rated", "Most Downloaded", "Newest")
FILE_SUFFIXES = (".safetensors", ".gguf")  # a GGUF is a quantized transformer-only file
# A textual-inversion embedding comes as a `.pt` too (read without unpickling code: alice/engine/embeddings.py).
EMBEDDING_SUFFIXES = (".safetensors", ".pt")
# CivitAI's `baseModel` of a version, for the transformer families (names as
# alice/engine/families.py has them): their checkpoints are transformer-only files that need a
# stored base, which is known, and checked, before the download starts.
TRANSFORMER_BASE_MODELS = {
    "Flux.1 D": "flux1-dev", "Flux.1 Krea": "flux1-dev", "Flux.1 Kontext": "flux1-dev",
    "Flux.1 S": "flux1-schnell",
    "SD 3": "sd3", "SD 3.5": "sd3", "SD 3.5 Medium": "sd3", "SD 3.5 Large": "sd3", "SD 3.5 Large Turbo": "sd3",
    "Chroma": "chroma",
    "ZImageTurbo": "zimage", "ZImageBase": "zimage",
    "Flux.2 Klein 4B": "flux2-klein", "Flux.2 Klein 9B": "flux2-klein",
    "Flux.2 Klein 4B-base": "flux2-klein", "Flux.2 Klein 9B-base": "flux2-klein",
    "Qwen": "qwen-image",
}


@dataclass(frozen=True)
class RemoteFile:
    """A file to download and what to make of it."""

    url: str
    filename: str
    size_bytes: int | None
    sha256: str | None
    is_lora: bool
    suggested_name: str
    family: str | None = None  # a transformer family, from CivitAI's baseModel (None: any other)


class CivitAIError(Exception):
    pass


class CivitAI:
    def __init__(self, base_url: str, token: str | None, client: httpx.Client) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client
        # The token goes in a header, never the URL (URLs end up in logs).
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def search(
        self, query: str, types: list[str], sort: str, nsfw: bool, limit: int, page: int
    ) -> list[dict[str, Any]]:
        """Browse with the server's type filter when there is no query; with a query its type
        filter is unreliable, so filter by type here."""
        params: dict[str, Any] = {"limit": limit, "sort": sort, "nsfw": str(nsfw).lower()}
        if query:
            params["query"] = query
        else:
            params["page"] = page
            if types:
                params["types"] = types
        items = self._get("/api/v1/models", params).get("items", [])
        if query and types:
            wanted = {t.lower() for t in types}
            items = [item for item in items if str(item.get("type", "")).lower() in wanted]
        if not nsfw:
            items = [item for item in items if not item.get("nsfw")]
        return [_summary(item) for item in items]

    def file_for(self, model_id: int, version_id: int | None, file_id: int | None, model_type: str) -> RemoteFile:
        """The file to fetch: the asked one, else the version's primary .safetensors or .gguf."""
        model = self._get(f"/api/v1/models/{model_id}", {})
        versions = model.get("modelVersions") or []
        version = next((v for v in versions if version_id is None or v.get("id") == version_id), None)
        if version is None:
            raise CivitAIError(f"model {model_id} has no version {version_id}")
        files = version.get("files") or []
        if file_id is not None:
            chosen = next((f for f in files if f.get("id") == file_id), None)
        else:
            embedding = model_type == "TextualInversion" or str(model.get("type", "")) == "TextualInversion"
            suffixes = EMBEDDING_SUFFIXES if embedding else FILE_SUFFIXES
            usable = [f for f in files if str(f.get("name", "")).lower().endswith(suffixes)]
            chosen = next((f for f in usable if f.get("primary")), usable[0] if usable else None)
        if chosen is None:
            raise CivitAIError(f"model {model_id} version {version.get('id')} has no .safetensors or .gguf file "
                               "to download")
        size_kb = chosen.get("sizeKB")
        return RemoteFile(
            url=chosen.get("downloadUrl") or f"{self.base_url}/api/download/models/{version['id']}",
            filename=str(chosen.get("name")),
            size_bytes=int(size_kb * 1024) if size_kb else None,
            sha256=(chosen.get("hashes") or {}).get("SHA256"),
            is_lora=model_type.upper() == "LORA" or str(model.get("type", "")).upper() == "LORA",
            suggested_name=str(model.get("name") or f"civitai-{model_id}"),
            family=TRANSFORMER_BASE_MODELS.get(str(version.get("baseModel"))),
        )

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._client.get(self.base_url + path, params=params, headers=self.headers, timeout=30)
        except httpx.HTTPError as exc:
            raise CivitAIError(f"CivitAI did not answer ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise CivitAIError(f"CivitAI answered HTTP {response.status_code} for {path}")
        return response.json()


def _summary(item: dict[str, Any]) -> dict[str, Any]:
    """The parts of a CivitAI model a client needs to choose and download one."""
    return {
        "id": item.get("id"),
        "name": item.get("name"),
        "type": item.get("type"),
        "nsfw": item.get("nsfw", False),
        "creator": (item.get("creator") or {}).get("username"),
        "stats": item.get("stats", {}),
        "tags": item.get("tags", []),
        "versions": [
            {
                "id": version.get("id"),
                "name": version.get("name"),
                "baseModel": version.get("baseModel"),
                "files": [
                    {"id": f.get("id"), "name": f.get("name"), "sizeKB": f.get("sizeKB"),
                     "primary": f.get("primary", False), "sha256": (f.get("hashes") or {}).get("SHA256")}
                    for f in version.get("files") or []
                ],
            }
            for version in item.get("modelVersions") or []
        ],
    }
