"""Search, download and import from stand-ins for Hugging Face and CivitAI, through the real app."""

from __future__ import annotations

import io
import logging
import stat
import time

import pytest

from alice.downloads.fetch import UNREACHABLE
from alice.engine.demo import save_untrained_demo
from harness.lora import write_demo_lora
from harness.tiny_pipelines import build_tiny_autoencoder
from tests.downloads.fake_sources import FakeSources, start
from tests.http.conftest import start_client

CIVITAI_TOKEN = "civitai-secret-token"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    sources = FakeSources()
    server = start(sources)
    save_untrained_demo(tmp / "tiny-sd", seed=4)
    sources.hf_repos["alice-tests/tiny-sd"] = tmp / "tiny-sd"
    taesdxl = build_tiny_autoencoder(tmp / "taesdxl")
    (taesdxl / "taesdxl_decoder.pth").write_bytes(b"the original code's weights: not fetched")
    sources.hf_repos["madebyollin/taesdxl"] = taesdxl
    lora = write_demo_lora(tmp / "lora")
    sources.add_civitai_file(101, 1001, "Inky Style", "LORA", lora)
    sources.add_civitai_file(102, 1002, "Broken Hash", "LORA", lora, sha256="00" * 32)
    sources.add_civitai_file(103, 1003, "Slow Style", "LORA", lora)
    yield sources
    server.shutdown()


@pytest.fixture(scope="module")
def client(tmp_path_factory, sources):
    yield from start_client(tmp_path_factory.mktemp("manager"), HF_ENDPOINT=sources.url,
                            ALICE_CIVITAI_URL=sources.url, CIVITAI_API_KEY=CIVITAI_TOKEN)


def wait_task(client, task_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/v1/models/download/status/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"download {task_id} never ended: {task}")


def model_ids(client) -> set[str]:
    return {m["id"] for m in client.get("/v1/models").json()["data"]}


def test_search_huggingface_and_civitai(client):
    hf = client.post("/v1/models/search/huggingface", json={"query": "tiny", "limit": 5}).json()
    assert hf["object"] == "list" and [m["id"] for m in hf["data"]] == ["alice-tests/tiny-sd"]
    browse = client.post("/v1/models/search/civitai", json={"query": "", "types": ["LORA"], "limit": 10}).json()
    assert {m["id"] for m in browse["data"]} == {101, 102, 103}
    searched = client.post("/v1/models/search/civitai", json={"query": "inky", "types": ["Checkpoint"]}).json()
    assert searched["data"] == []  # filtered by type here, since CivitAI ignores it with a query
    found = client.post("/v1/models/search/civitai", json={"query": "inky", "types": ["LORA"]}).json()["data"]
    assert found[0]["versions"][0]["files"][0]["name"] == "demo_lora.safetensors"
    bad = client.post("/v1/models/search/civitai", json={"limit": 1000})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


def test_huggingface_pipeline_download_imports_and_generates(client):
    accepted = client.post("/v1/models/download/huggingface", json={"modelId": "alice-tests/tiny-sd"})
    assert accepted.status_code == 202
    task = wait_task(client, accepted.json()["id"])
    assert task["status"] == "completed", task
    assert task["progress"] == 1.0 and task["downloadedSize"] == task["totalSize"] > 1_000_000
    assert task["model"] == "sd/tiny-sd" and "sd/tiny-sd" in model_ids(client)
    response = client.post("/generate", json={"prompt": "x", "model": "sd/tiny-sd", "width": 64, "height": 64,
                                               "steps": 2})
    assert response.status_code == 200


def test_huggingface_tiny_autoencoder_download_imports_a_preview_decoder(client, sources):
    accepted = client.post("/v1/models/download/huggingface", json={"modelId": "madebyollin/taesdxl"})
    task = wait_task(client, accepted.json()["id"])
    assert task["status"] == "completed" and task["model"] == "sd/taesdxl", task
    folder = sources.hf_repos["madebyollin/taesdxl"]
    wanted = {"config.json", "diffusion_pytorch_model.safetensors"}  # not the .pth of taesd's own code
    assert task["totalSize"] == sum((folder / name).stat().st_size for name in wanted)
    listing = client.get("/v1/models").json()
    assert {"name": "taesdxl", "family": "sdxl", "families": ["sdxl"]} in listing["preview_decoders"]
    assert "sd/taesdxl" not in model_ids(client)  # no model to draw with


def test_civitai_lora_download_uses_the_token_in_a_header(client, sources):
    sources.seen_headers.clear()
    task = wait_task(client, client.post("/v1/models/download/civitai",
                                         json={"modelId": 101, "modelType": "LORA"}).json()["id"])
    assert task["status"] == "completed", task
    assert task["model"] == "sd/inky-style"
    assert any(h.get("Authorization") == f"Bearer {CIVITAI_TOKEN}" for h in sources.seen_headers)
    response = client.post("/generate", json={"prompt": "x <lora:inky-style:0.8>", "width": 64, "height": 64,
                                               "steps": 2})
    assert response.status_code == 200, response.text


def test_url_download_resumes_after_a_dropped_connection(client, sources):
    sources.break_once.add("/api/download/models/1001")
    sources.seen_headers.clear()
    task = wait_task(client, client.post("/v1/models/download/url", json={
        "url": f"{sources.url}/api/download/models/1001", "filename": "resumed.safetensors", "isLora": True,
    }).json()["id"])
    assert task["status"] == "completed", task
    assert any(h.get("Range", "").startswith("bytes=") for h in sources.seen_headers)
    assert task["name"] == "resumed" and "sd/resumed" not in model_ids(client)  # a LoRA, not a model


def test_checksum_mismatch_fails_and_stores_nothing(client):
    task = wait_task(client, client.post("/v1/models/download/civitai",
                                         json={"modelId": 102, "modelType": "LORA"}).json()["id"])
    assert task["status"] == "failed" and "checksum" in task["error"]
    from alice.models import store as model_store

    assert "broken-hash" not in {m.name for m in model_store.list_models()}


def test_cancel_a_download_mid_way(client, sources):
    sources.slow = True
    try:
        task_id = client.post("/v1/models/download/civitai", json={"modelId": 103, "modelType": "LORA"}).json()["id"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/models/download/status/{task_id}").json()["downloadedSize"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        cancelled = client.delete(f"/v1/models/download/{task_id}")
        assert cancelled.status_code == 200
        task = wait_task(client, task_id)
        assert task["status"] == "cancelled" and 0 < task["downloadedSize"] < (task["totalSize"] or 1e12)
    finally:
        sources.slow = False
    from alice.models import store as model_store

    assert "slow-style" not in {m.name for m in model_store.list_models()}
    assert not (client.data_dir / "downloads" / task_id).exists()
    listing = client.get("/v1/models/download/status").json()
    assert listing["object"] == "list" and listing["data"][0]["id"] == task_id


def test_url_downloads_refuse_hosts_beyond_the_configured_sources(client, sources, tmp_path):
    """Loopback is refused by default, also when a configured source redirects there."""
    lan_host = FakeSources()
    server = start(lan_host)
    try:
        lan_host.civitai_files[1] = write_demo_lora(tmp_path)
        for url in (f"{lan_host.url}/api/download/models/1",
                    f"{sources.url}/redirect?to={lan_host.url}/api/download/models/1",
                    f"{sources.url}/redirect?to=http://169.254.169.254/latest/meta-data/"):
            accepted = client.post("/v1/models/download/url", json={"url": url, "filename": "x.safetensors"})
            assert accepted.status_code == 202
            task = wait_task(client, accepted.json()["id"])
            assert task["status"] == "failed" and task["error"].endswith(UNREACHABLE), task
        assert lan_host.seen_headers == []
    finally:
        server.shutdown()


def test_credentials_in_a_download_url_are_never_shown_or_logged(client, sources):
    """user:password@ and query tokens: used to download, redacted everywhere else; the task file
    that keeps them is the service user's alone."""
    handler = logging.StreamHandler(log := io.StringIO())
    for name in ("alice", "httpx"):
        logging.getLogger(name).addHandler(handler)
    previous = logging.getLogger("httpx").level
    logging.getLogger("httpx").setLevel(logging.INFO)
    sources.seen_headers.clear()
    try:
        port = sources.url.rsplit(":", 1)[1]
        task = wait_task(client, client.post("/v1/models/download/url", json={
            "url": f"http://alice:hunter2@127.0.0.1:{port}/missing/model.safetensors?token=tok3n&X-Amz-Signature=s1g",
        }).json()["id"])
    finally:
        for name in ("alice", "httpx"):
            logging.getLogger(name).removeHandler(handler)
        logging.getLogger("httpx").setLevel(previous)
    assert task["status"] == "failed" and "HTTP 404" in task["error"], task
    assert any(h.get("Authorization") == "Basic YWxpY2U6aHVudGVyMg==" for h in sources.seen_headers)  # used
    shown = client.get("/v1/models/download/status").text + task["error"] + task["name"] + log.getvalue()
    assert "HTTP Request" in log.getvalue() and task["id"] in log.getvalue()  # the lines were there
    for secret in ("hunter2", "tok3n", "s1g"):
        assert secret not in shown
    downloads = client.data_dir / "downloads"
    assert stat.S_IMODE(downloads.stat().st_mode) == 0o700
    assert stat.S_IMODE((downloads / "tasks.json").stat().st_mode) == 0o600


def test_the_token_never_reaches_logs_or_answers(client, caplog):
    listing = client.get("/v1/models/download/status").text
    assert CIVITAI_TOKEN not in listing
    assert CIVITAI_TOKEN not in client.get("/health").text
    assert CIVITAI_TOKEN not in caplog.text


def test_delete_a_model(client):
    client.post("/generate", json={"prompt": "x", "model": "tiny-sd", "width": 64, "height": 64, "steps": 1})
    assert client.delete("/v1/models/sd/tiny-sd").json()["deleted"] is True
    assert "sd/tiny-sd" not in model_ids(client)
    assert client.post("/generate", json={"prompt": "x", "model": "tiny-sd"}).status_code == 404
    assert client.delete("/v1/models/sd/tiny-sd").status_code == 404
    assert client.delete("/v1/models/sd/alice-demo").status_code == 409


def test_bad_download_requests(client):
    for path, body, param in [
        ("/v1/models/download/huggingface", {"modelId": "../etc"}, "modelId"),
        ("/v1/models/download/url", {"url": "file:///etc/passwd"}, "url"),
        ("/v1/models/download/url", {"url": "http://x/y", "filename": "../../evil.safetensors"}, "filename"),
        ("/v1/models/download/civitai", {"modelId": "abc"}, "modelId"),
    ]:
        response = client.post(path, json=body)
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["param"] == param
    assert client.get("/v1/models/download/status/dl-nope").status_code == 404
