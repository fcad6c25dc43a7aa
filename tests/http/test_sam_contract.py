"""A replay of SAM's calls as ../shared/api-contract.md gives them, and the answers it decodes."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

SAM_REQUEST = {
    "model": "sd/alice-demo",
    "messages": [{"role": "user", "content": "a lighthouse at dusk"}],
    "metadata": {
        "steps": 4,
        "guidance_scale": 7.5,
        "scheduler": "ddim",
        "width": 64,
        "height": 64,
        "negative_prompt": "blurry",
        "seed": 42,
    },
}


def sam_chat(client, path="/v1/chat/completions", headers=None, **changes):
    body = json.loads(json.dumps(SAM_REQUEST))
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return client.post(path, json=body, headers=headers or {})


def fetch_png(client, url: str) -> Image.Image:
    path = url.removeprefix("http://testserver")
    response = client.get(path)  # SAM fetches image URLs with no credentials
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_sam_generation_call_decodes(client, path):
    response = sam_chat(client, path)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "sd/alice-demo"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop" and choice["finishReason"] == "stop"
    message = choice["message"]
    assert message["role"] == "assistant"
    [url] = message["image_urls"]
    assert url.startswith("http://testserver/images/") and url.endswith(".png")
    assert message["content"] == f"1 image generated. ![image]({url})"
    meta = message["metadata"]
    assert (meta["prompt"], meta["seed"], meta["steps"], meta["scheduler"]) == ("a lighthouse at dusk", 42, 4, "ddim")
    assert meta["negative_prompt"] == "blurry"
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "promptTokens", "completionTokens", "totalTokens"):
        assert body["usage"][key] == 0
    # Every metadata setting took effect: the image has the asked size and the PNG says so.
    image = fetch_png(client, url)
    assert image.size == (64, 64)
    assert "Steps: 4, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 64x64" in image.info["parameters"]


def test_settings_precedence_sam_config_over_samConfig_over_metadata(client):
    response = sam_chat(
        client,
        metadata={"width": 64, "height": 64, "steps": 4, "seed": 1},
        samConfig={"width": 72, "steps": 3, "seed": 2},
        sam_config={"width": 80, "seed": 3},
    )
    meta = response.json()["choices"][0]["message"]["metadata"]
    assert (meta["width"], meta["height"], meta["steps"], meta["seed"]) == (80, 64, 3, 3)
    assert fetch_png(client, response.json()["choices"][0]["message"]["image_urls"][0]).size == (80, 64)


def test_camel_case_and_string_values_are_understood(client):
    response = sam_chat(
        client,
        metadata={"width": "64", "height": "64", "steps": "3", "guidanceScale": "5", "negativePrompt": "x", "seed": "9"},
    )
    assert response.status_code == 200, response.text
    meta = response.json()["choices"][0]["message"]["metadata"]
    assert (meta["steps"], meta["guidance_scale"], meta["negative_prompt"], meta["seed"]) == (3, 5.0, "x", 9)


def test_prompt_is_the_last_user_message_and_may_be_a_list_of_parts(client):
    messages = [
        {"role": "system", "content": "You draw."},
        {"role": "user", "content": "an old prompt"},
        {"role": "assistant", "content": "1 image generated."},
        {"role": "user", "content": [{"type": "text", "text": "a red"}, {"type": "text", "text": "bicycle"}]},
    ]
    meta = sam_chat(client, messages=messages).json()["choices"][0]["message"]["metadata"]
    assert meta["prompt"] == "a red bicycle"


def test_model_with_and_without_prefix_and_default(client):
    assert sam_chat(client, model="alice-demo").json()["model"] == "alice-demo"
    response = sam_chat(client, model=None)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["metadata"]["model"] == "alice-demo"


def test_unknown_extra_fields_are_ignored(client):
    response = sam_chat(client, temperature=0.2, max_tokens=10, user="sam", tools=[], frobnicate={"a": 1})
    assert response.status_code == 200, response.text


def test_forwarded_headers_and_host_build_the_urls(client):
    response = sam_chat(client, headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "alice.example.net"})
    url = response.json()["choices"][0]["message"]["image_urls"][0]
    assert url.startswith("https://alice.example.net/images/")
    response = sam_chat(client, headers={"Host": "192.168.1.20:3000"})
    assert response.json()["choices"][0]["message"]["image_urls"][0].startswith("http://192.168.1.20:3000/images/")


@pytest.mark.parametrize(
    ("changes", "status", "param"),
    [
        ({"metadata": {"width": 65}}, 400, "width"),
        ({"metadata": {"steps": 1000}}, 400, "steps"),
        ({"metadata": {"scheduler": "nope"}}, 400, "scheduler"),
        ({"metadata": {"size": "big"}}, 400, "size"),
        ({"metadata": {"guidance_scale": "NaN"}}, 400, "guidance_scale"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "system", "content": "hi"}]}, 400, "messages"),
        ({"messages": [{"role": "user", "content": ""}]}, 400, "prompt"),
        ({"model": "sd/nope"}, 404, "model"),
        ({"model": "sd/../../etc"}, 400, "model"),
    ],
)
def test_errors_use_the_openai_envelope_and_sams_statuses(client, changes, status, param):
    response = sam_chat(client, **changes)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]
    assert response.headers["x-should-retry"] == "false"


def test_malformed_json_is_a_400(client):
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_model_list(client, path):
    body = client.get(path).json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["id"] == "sd/alice-demo"
    assert model["object"] == "model"
    assert isinstance(model["created"], int)
    assert model["owned_by"] == model["ownedBy"] == "alice"
    assert model["type"] == "sd15"


def test_model_retrieve(client):
    assert client.get("/v1/models/sd/alice-demo").json()["id"] == "sd/alice-demo"
    response = client.get("/v1/models/sd/unknown")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_streaming_sends_progress_then_the_images_then_done(client):
    with client.stream("POST", "/v1/chat/completions", json={**SAM_REQUEST, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    steps = [chunk["progress"]["step"] for chunk in chunks if chunk.get("progress", {}).get("state") == "running"]
    assert steps and steps[-1] == 4 and steps == sorted(steps)
    final = chunks[-1]["choices"][0]
    assert final["finish_reason"] == "stop"
    [url] = final["delta"]["image_urls"]
    assert final["delta"]["content"] == f"1 image generated. ![image]({url})"
    assert fetch_png(client, url).size == (64, 64)


def test_images_api_url_and_b64(client):
    body = client.post(
        "/v1/images/generations",
        json={"prompt": "a fox", "size": "64x64", "n": 2, "steps": 3, "seed": 5, "scheduler": "euler_a"},
    ).json()
    assert isinstance(body["created"], int)
    assert [fetch_png(client, item["url"]).size for item in body["data"]] == [(64, 64), (64, 64)]
    assert body["data"][0]["revised_prompt"] == "a fox"
    b64 = client.post(
        "/v1/images/generations",
        json={"prompt": "a fox", "size": "64x64", "steps": 3, "seed": 5, "scheduler": "euler_a", "response_format": "b64_json"},
    ).json()
    import base64

    import numpy as np

    alone = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64["data"][0]["b64_json"]))), dtype=np.float64)
    first = np.asarray(fetch_png(client, body["data"][0]["url"]), dtype=np.float64)
    # Same seed, same settings: the same image; the two of n=2 shared one pipeline call, so up
    # to the last bits of the arithmetic (README, Schedulers).
    assert 10 * np.log10(255**2 / max(float(((alone - first) ** 2).mean()), 1e-12)) >= 40


def test_images_api_errors(client):
    response = client.post("/v1/images/generations", json={"prompt": "a fox", "size": "63x64"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "width"
    response = client.post("/v1/images/generations", json={"prompt": "a fox", "response_format": "gif"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format"
