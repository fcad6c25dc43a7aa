"""Transformer-family models from the Hugging Face and CivitAI stand-ins, through the real app.

The repo is the tiny FLUX.1 dev laid out as black-forest-labs/FLUX.1-dev is: a sharded
transformer, a text encoder with a sharded fp16 variant beside its plain weights, a VAE with an
fp16 variant, and the same weights again in shapes a pipeline does not load (BFL's files at the
top, ComfyUI's `text_encoders/`). A second copy of it is gated as the real hub gates FLUX.1-dev.
"""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from alice.engine.demo import save_untrained_demo
from alice.models import checkpoints
from alice.models import store as model_store
from tests.downloads.fake_sources import COMMIT, FakeSources, start
from tests.downloads.test_cli_downloads import alice
from tests.downloads.test_model_manager import wait_task
from tests.families.test_transformer_files import WEIGHTS, write_gguf
from harness.tiny_pipelines import BUILDERS
from tests.http.conftest import start_client

REPO, GATED, UNET_REPO = "alice-tests/tiny-flux", "alice-tests/gated-flux", "alice-tests/tiny-sd"
GRANTED, NOT_GRANTED = "hf-granted-token", "hf-not-granted-token"


def pipeline_files(repo: Path) -> set[str]:
    """What the pipeline loads: one format per component, shards with their index."""
    def listed(pattern: str) -> set[str]:
        return {str(p.relative_to(repo)) for p in repo.glob(pattern)}

    fp16_shards = listed("text_encoder_2/model.fp16-*-of-*.safetensors")
    shards = listed("transformer/diffusion_pytorch_model-*-of-*.safetensors")
    assert len(fp16_shards) > 1 and len(shards) > 1
    return listed("tokenizer*/*.json") | fp16_shards | shards | {
        "model_index.json", "scheduler/scheduler_config.json",
        "text_encoder/config.json", "text_encoder/model.safetensors",
        "text_encoder_2/config.json", "text_encoder_2/model.safetensors.index.fp16.json",
        "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors.index.json",
        "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
    }


def transformer_weights(files: set[str]) -> set[str]:
    return {p for p in files if p.startswith("transformer/") and p != "transformer/config.json"}


def flux_repo(tiny: Path, repo: Path) -> Path:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import T5EncoderModel

    shutil.copytree(tiny, repo)
    (repo / WEIGHTS).unlink()
    FluxTransformer2DModel.from_pretrained(tiny / "transformer").save_pretrained(
        repo / "transformer", max_shard_size="200KB")
    AutoencoderKL.from_pretrained(tiny / "vae", torch_dtype=torch.float16).save_pretrained(repo / "vae", variant="fp16")
    T5EncoderModel.from_pretrained(tiny / "text_encoder_2", dtype=torch.float16).save_pretrained(
        repo / "text_encoder_2", variant="fp16", max_shard_size="20KB")
    shutil.copyfile(tiny / WEIGHTS, repo / "flux1-dev.safetensors")  # BFL's single files
    shutil.copyfile(tiny / "vae" / "diffusion_pytorch_model.safetensors", repo / "ae.safetensors")
    (repo / "text_encoders").mkdir()  # SD 3.5's ComfyUI copies
    shutil.copyfile(tiny / "text_encoder" / "model.safetensors", repo / "text_encoders" / "clip_l.safetensors")
    (repo / "README.md").write_text("---\nlicense: other\n---\n")
    return repo


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transformer-sources")
    sources = FakeSources()
    server = start(sources)
    tiny = BUILDERS["flux"](tmp / "tiny-flux")
    repo = flux_repo(tiny, tmp / "repo")
    sources.pipeline_files = pipeline_files(repo)
    assert {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()} > sources.pipeline_files
    sources.hf_repos[REPO] = repo
    sources.hf_repos[GATED] = repo
    sources.gated[GATED] = {GRANTED}
    sources.hf_tokens = {GRANTED, NOT_GRANTED}
    save_untrained_demo(tmp / "tiny-sd", seed=6)
    sources.hf_repos[UNET_REPO] = tmp / "tiny-sd"
    finetune = write_gguf(tiny / WEIGHTS, tmp / "tiny-flux-finetune-Q8_0.gguf", "Q8_0")
    shutil.copyfile(finetune, repo / "flux1-dev-Q8_0.gguf")  # as city96's repos hold them
    sources.add_civitai_file(301, 3001, "Tiny Flux Finetune", "Checkpoint", finetune, base_model="Flux.1 D")
    sources.tiny = tiny
    yield sources
    server.shutdown()


@pytest.fixture(scope="module")
def client(tmp_path_factory, sources):
    yield from start_client(tmp_path_factory.mktemp("transformer-manager"), HF_ENDPOINT=sources.url,
                            ALICE_CIVITAI_URL=sources.url)


@pytest.fixture(scope="module")
def flux_base(client, sources, tmp_path_factory) -> str:
    """A stored FLUX.1 base (text encoders and VAE, no transformer weights), for CivitAI files."""
    parts = tmp_path_factory.mktemp("flux-parts") / "flux-parts"
    shutil.copytree(sources.tiny, parts)
    (parts / WEIGHTS).unlink()
    return checkpoints.import_pipeline_folder(parts, "flux-parts").name


def fetched(sources: FakeSources, repo: str) -> set[str]:
    prefix = f"GET /{repo}/resolve/{COMMIT}/"
    return {p.removeprefix(prefix) for p in sources.seen_paths if p.startswith(prefix)}


def planned_bytes(sources: FakeSources, repo: str, paths: set[str]) -> int:
    return sum((sources.hf_repos[repo] / p).stat().st_size for p in paths)


def test_a_flux_repo_downloads_what_its_pipeline_loads_and_imports_as_flux(client, sources):
    sources.seen_paths.clear()
    sources.stall = threading.Event()
    try:
        task_id = client.post("/v1/models/download/huggingface", json={"modelId": REPO}).json()["id"]
        deadline = time.monotonic() + 60
        while not sources.stalled:
            assert time.monotonic() < deadline, client.get(f"/v1/models/download/status/{task_id}").json()
            time.sleep(0.05)
        # The first file is asked for and none of its bytes have come: the size is known.
        before = client.get(f"/v1/models/download/status/{task_id}").json()
    finally:
        sources.stall.set()
        sources.stall = None
    assert before["status"] == "downloading" and before["downloadedSize"] == 0
    assert before["totalSize"] == planned_bytes(sources, REPO, sources.pipeline_files)

    task = wait_task(client, task_id)
    assert task["status"] == "completed", task
    assert fetched(sources, REPO) == sources.pipeline_files  # no BFL single files, no ComfyUI copies, no plain+fp16 twice
    assert task["downloadedSize"] == task["totalSize"] == before["totalSize"]
    stored = model_store.get_model("tiny-flux")
    assert (stored.kind, stored.family) == ("pipeline", "flux1-dev")
    # The fp16 variants are stored under the plain names, so the folder loads without naming one.
    assert (stored.path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (stored.path / "text_encoder_2" / "model.safetensors.index.json").is_file()
    assert "sd/tiny-flux" in {m["id"] for m in client.get("/v1/models").json()["data"]}


def test_a_gated_repo_without_a_token_says_where_to_accept_and_to_set_hf_token(client, sources, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    sources.seen_paths.clear()
    task = wait_task(client, client.post("/v1/models/download/huggingface", json={"modelId": GATED}).json()["id"])
    assert task["status"] == "failed"
    assert task["error"] == (
        "alice-tests/gated-flux is gated (HTTP 401): accept its licence at https://huggingface.co/alice-tests/gated-flux"
        " while logged in, then set HF_TOKEN to a token of that account (https://huggingface.co/settings/tokens)"
    )
    assert not any(p.endswith(".safetensors") for p in sources.seen_paths)  # refused before any weight


def test_a_gated_repo_whose_licence_the_token_has_not_accepted(client, sources, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", NOT_GRANTED)
    task = wait_task(client, client.post("/v1/models/download/huggingface", json={
        "modelId": GATED, "filename": "transformer/diffusion_pytorch_model-00001-of-00002.safetensors"}).json()["id"])
    assert task["status"] == "failed"
    assert task["error"] == (
        "alice-tests/gated-flux is gated and the account of HF_TOKEN has not been granted access (HTTP 403): "
        "accept its licence at https://huggingface.co/alice-tests/gated-flux with that account, then try again"
    )


def test_a_token_the_hub_does_not_know(client, sources, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_made_up_token")
    task = wait_task(client, client.post("/v1/models/download/huggingface", json={"modelId": GATED}).json()["id"])
    assert task["status"] == "failed" and "the hub does not accept HF_TOKEN (HTTP 401" in task["error"], task
    assert "hf_made_up_token" not in client.get("/v1/models/download/status").text


def test_a_granted_token_fetches_a_gated_repo_without_its_transformer_as_a_base(client, sources, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GRANTED)
    sources.seen_paths.clear()
    sources.seen_headers.clear()
    task = wait_task(client, client.post("/v1/models/download/huggingface",
                                         json={"modelId": GATED, "withoutTransformer": True}).json()["id"])
    assert task["status"] == "completed", task
    base_files = sources.pipeline_files - transformer_weights(sources.pipeline_files)
    assert fetched(sources, GATED) == base_files  # transformer/config.json kept: the files' architecture
    assert task["totalSize"] == task["downloadedSize"] == planned_bytes(sources, GATED, base_files)
    assert any(h.get("Authorization") == f"Bearer {GRANTED}" for h in sources.seen_headers)
    stored = model_store.get_model("gated-flux-base")
    assert (stored.kind, stored.family) == ("base", "flux1-dev")
    assert sorted(p.name for p in (stored.path / "transformer").iterdir()) == ["config.json"]
    assert GRANTED not in client.get("/v1/models/download/status").text


def test_without_transformer_refuses_a_unet_repo_and_a_single_file(client):
    task = wait_task(client, client.post("/v1/models/download/huggingface",
                                         json={"modelId": UNET_REPO, "withoutTransformer": True}).json()["id"])
    assert task["status"] == "failed"
    assert task["error"] == "alice-tests/tiny-sd has no transformer to leave out (its pipeline is StableDiffusionPipeline)"
    both = client.post("/v1/models/download/huggingface",
                       json={"modelId": REPO, "filename": "ae.safetensors", "withoutTransformer": True})
    assert both.status_code == 400 and "withoutTransformer is for a whole diffusers repo" in both.text


def test_a_civitai_transformer_file_without_base_names_the_stored_candidates(client, sources, flux_base):
    sources.seen_paths.clear()
    task = wait_task(client, client.post("/v1/models/download/civitai", json={"modelId": 301}).json()["id"])
    assert task["status"] == "failed"
    error = task["error"]
    assert error.startswith("tiny-flux-finetune-Q8_0.gguf holds only a flux1-dev transformer; its text encoders "
                            "and VAE come from a stored flux1-dev or flux1-schnell model: download it with one as "
                            "its base (`alice models download civitai 301 --base <a stored flux1-dev or "
                            "flux1-schnell model>`, or \"base\" in the request) (stored flux1-dev or flux1-schnell "
                            "models: "), error
    assert flux_base in error
    assert "GET /api/download/models/3001" not in sources.seen_paths  # refused before the download

    other = wait_task(client, client.post("/v1/models/download/civitai",
                                          json={"modelId": 301, "base": "alice-demo"}).json()["id"])
    assert other["status"] == "failed"
    assert "holds a flux1-dev transformer, but alice-demo is a sd15 model" in other["error"]


def test_a_civitai_gguf_imports_onto_its_base(client, sources, flux_base):
    task = wait_task(client, client.post("/v1/models/download/civitai",
                                         json={"modelId": 301, "base": f"sd/{flux_base}"}).json()["id"])
    assert task["status"] == "completed", task
    stored = model_store.get_model("tiny-flux-finetune")
    assert (stored.kind, stored.family) == ("pipeline", "flux1-dev")
    gguf = stored.path / "transformer" / "tiny-flux-finetune-Q8_0.gguf"
    served = sources.civitai_files[3001]
    assert hashlib.sha256(gguf.read_bytes()).digest() == hashlib.sha256(served.read_bytes()).digest()


def test_the_cli_says_how_much_it_fetches_before_it_starts(tmp_path, sources):
    result = alice("download", "huggingface", REPO, "--without-transformer", tmp=tmp_path, sources=sources)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("sd/tiny-flux-base")
    size = planned_bytes(sources, REPO, sources.pipeline_files - transformer_weights(sources.pipeline_files))
    said = f"tiny-flux-base: {size / 1e9:.2f} GB ({size} bytes) to download"
    assert said in result.stderr
    assert result.stderr.index(said) < result.stderr.index("completed")


def test_a_gguf_of_a_hugging_face_repo_imports_onto_its_base(client, sources, flux_base):
    task = wait_task(client, client.post("/v1/models/download/huggingface", json={
        "modelId": REPO, "filename": "flux1-dev-Q8_0.gguf", "base": flux_base}).json()["id"])
    assert task["status"] == "completed", task
    stored = model_store.get_model("flux1-dev-q8_0")
    assert (stored.kind, stored.family) == ("pipeline", "flux1-dev")
    assert (stored.path / "transformer" / "flux1-dev-Q8_0.gguf").is_file()
