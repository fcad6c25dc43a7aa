"""Live previews on the wire: the Images API's `stream` with `partial_images` (OpenAI's event
shapes), the chat stream's and `/v1/jobs/{id}`'s opt-in `preview`, and the error event."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.http.conftest import wait_for_state

pytestmark = pytest.mark.fake_engine

DRAW = {"prompt": "a fox", "size": "64x64", "steps": 8, "seed": 11, "scheduler": "euler_a"}


def events(response) -> list[tuple[str, dict]]:
    """(event name, data) of each Server-Sent Event."""
    found, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            found.append((name, json.loads(line.removeprefix("data: "))))
    return found


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generation_streams_partial_images_then_the_same_image_as_unstreamed(client):
    with client.stream("POST", "/v1/images/generations", json={**DRAW, "stream": True, "partial_images": 2}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        streamed = events(response)
    names = [name for name, _ in streamed]
    assert names == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [data["type"] for _, data in streamed] == names
    partials, (_, completed) = [data for _, data in streamed[:2]], streamed[2]
    assert [data["partial_image_index"] for data in partials] == [0, 1]
    for data in [*partials, completed]:
        assert data["size"] == "64x64" and data["output_format"] == "png"
        assert data["background"] in ("opaque", "auto") and data["quality"] == "auto"
        assert isinstance(data["created_at"], int)
    assert all(png(data["b64_json"]).size == (64, 64) for data in partials)  # scaled to the image's size
    assert completed["usage"]["total_tokens"] == 0 and "input_tokens_details" in completed["usage"]
    unstreamed = client.post("/v1/images/generations", json={**DRAW, "response_format": "b64_json"}).json()
    assert completed["b64_json"] == unstreamed["data"][0]["b64_json"]  # the very PNG, bit for bit


def test_stream_without_partial_images_sends_the_completed_image_alone(client):
    with client.stream("POST", "/v1/images/generations", json={**DRAW, "stream": True}) as response:
        assert [name for name, _ in events(response)] == ["image_generation.completed"]


def test_edit_streams_image_edit_events(client):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, "PNG")
    fields = {"prompt": "a fox", "size": "64x64", "steps": "8", "seed": "3", "stream": "true", "partial_images": "1"}
    with client.stream("POST", "/v1/images/edits", data=fields,
                       files={"image": ("in.png", buffer.getvalue(), "image/png")}) as response:
        assert response.status_code == 200
        assert [name for name, _ in events(response)] == ["image_edit.partial_image", "image_edit.completed"]


def test_partial_images_over_three_is_a_400_naming_it(client):
    response = client.post("/v1/images/generations", json={**DRAW, "stream": True, "partial_images": 4})
    assert response.status_code == 400
    assert "partial_images" in response.text


def test_a_failed_job_ends_the_stream_with_an_openai_error_event(client, monkeypatch):
    engine = client.engine
    real = engine.generate

    def failing(*args, **kwargs):
        monkeypatch.setattr(engine, "generate", real)
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(engine, "generate", failing)
    with client.stream("POST", "/v1/images/generations", json={**DRAW, "stream": True, "partial_images": 2}) as response:
        assert response.status_code == 200  # the stream had begun
        streamed = events(response)
    [(name, data)] = streamed
    assert name == "error" and data["type"] == "error"
    assert data["error"]["code"] == "internal_error" and data["error"]["type"] == "server_error"
    assert "secret" not in json.dumps(data)


def test_jobs_show_their_newest_preview_when_asked(client):
    body = {"prompt": "a fox", "width": 64, "height": 64, "steps": 8, "seed": 4}
    asked = client.post("/v1/jobs", json={**body, "previews": 3}).json()
    plain = client.post("/v1/jobs", json=body).json()
    wait_for_state(client, "succeeded", count=2)
    shown = client.get(f"/v1/jobs/{asked['id']}").json()["preview"]
    assert shown["index"] == 2 and shown["step"] == 6 and shown["total_steps"] == 8  # steps 2, 4, 6 of 8
    assert png(shown["b64_json"]).size == (64, 64)
    assert "preview" not in client.get(f"/v1/jobs/{plain['id']}").json()
    assert client.post("/v1/jobs", json={**body, "previews": 11}).status_code == 400


def test_chat_stream_carries_previews_only_when_asked(client):
    sam = {"model": "sd/alice-demo", "messages": [{"role": "user", "content": "a fox"}], "stream": True,
           "metadata": {"width": 64, "height": 64, "steps": 8, "seed": 4}}

    def previews(request: dict) -> list[dict]:
        with client.stream("POST", "/v1/chat/completions", json=request) as response:
            chunks = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
                      if line.startswith("data: {")]
        return [chunk["progress"]["preview"] for chunk in chunks if "preview" in chunk.get("progress", {})]

    assert previews(sam) == []
    shown = previews({**sam, "metadata": {**sam["metadata"], "previews": 2}})
    assert [preview["index"] for preview in shown] == [0, 1]
    assert all(png(preview["b64_json"]).size == (64, 64) for preview in shown)
