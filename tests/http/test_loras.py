"""LoRAs from the store, chosen by settings or by `<lora:name:scale>` in the prompt, unloaded after."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from alice.protocol.a1111 import parse_a1111_parameters
from harness.lora import write_demo_lora
from tests.http.conftest import start_client

SMALL = {"width": 64, "height": 64, "steps": 4, "scheduler": "ddim", "seed": 8}


@pytest.fixture(scope="module")
def lora_client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loras")
    for client in start_client(tmp):
        from alice.models import checkpoints

        checkpoints.import_lora_file(write_demo_lora(tmp / "lora-file"), "inky")
        yield client


def draw(client, prompt="a boat", **extra) -> bytes:
    """The image's pixels (the PNG's text differs with the prompt, so bytes would not compare)."""
    response = client.post("/generate", json={"prompt": prompt, **SMALL, **extra})
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]["b64_json"]))).tobytes()


def test_lora_by_settings_and_by_prompt_tag_and_clean_afterwards(lora_client):
    plain = draw(lora_client)
    with_lora = draw(lora_client, loras=[{"name": "inky", "scale": 1.0}])
    assert with_lora != plain
    assert draw(lora_client, prompt="a boat <lora:inky:1.0>") == with_lora  # the tag leaves the text clean
    assert draw(lora_client, prompt="a boat <lora:inky:0.3>") not in (plain, with_lora)
    # Unloaded after each request: the next one is the plain model again.
    assert draw(lora_client) == plain
    response = lora_client.post("/generate", json={"prompt": "a boat", **SMALL, "loras": [{"name": "inky"}]})
    parameters = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]["b64_json"]))).info["parameters"]
    assert parse_a1111_parameters(parameters)["settings"]["LoRAs"] == "inky:1"


def test_lora_through_sam_settings(lora_client):
    response = lora_client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "a boat"}],
        "metadata": {**SMALL, "loras": [{"name": "inky", "scale": 0.5}]},
    })
    assert response.status_code == 200, response.text


def test_unknown_lora_is_404_before_any_work(lora_client):
    response = lora_client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "a boat <lora:nope:1>"}], "metadata": SMALL})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "loras" and "nope" in response.json()["error"]["message"]
    response = lora_client.post("/generate", json={"prompt": "x", **SMALL, "loras": [{"name": "inky", "scale": 99}]})
    assert response.status_code == 400


def test_a_lora_is_not_a_model_to_draw_with_nor_listed_as_one(lora_client):
    assert lora_client.post("/generate", json={"prompt": "x", **SMALL, "model": "inky"}).status_code == 404
    assert [m["id"] for m in lora_client.get("/v1/models").json()["data"]] == ["sd/alice-demo"]


def _post_on(client, route: str, prompt: str, loras: list[dict] | None = None):
    """The same request on each generation route, in its own shape."""
    extra = {"loras": loras} if loras else {}
    if route == "/generate":
        return client.post(route, json={"prompt": prompt, **SMALL, **extra})
    if route == "/v1/chat/completions":
        return client.post(route, json={"messages": [{"role": "user", "content": prompt}],
                                        "metadata": {**SMALL, **extra}})
    if route == "/v1/images/generations":
        return client.post(route, json={"prompt": prompt, "size": "64x64", "steps": 4, **extra})
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(png, format="PNG")
    return client.post(route, files={"image": ("in.png", png.getvalue(), "image/png")},
                       data={"prompt": prompt, "size": "64x64", "steps": "4"})


def _refusal(response) -> tuple[str, str]:
    """(param, message) of a 400 in the route's envelope (BentoML's on /generate, OpenAI's elsewhere)."""
    assert response.status_code == 400, response.text
    body = response.json()
    if "detail" in body:
        return body["detail"][0]["loc"][0], body["error"]
    return body["error"]["param"], body["error"]["message"]


ROUTES = ["/generate", "/v1/chat/completions", "/v1/images/generations", "/v1/images/edits"]


@pytest.mark.parametrize("route", ROUTES)
def test_prompt_tags_obey_the_lora_limits_on_every_route_before_queuing(lora_client, route):
    jobs_before = len(lora_client.get("/v1/jobs").json()["data"])
    many = "a boat " + " ".join(f"<lora:inky{i}:0.1>" for i in range(60))
    param, message = _refusal(_post_on(lora_client, route, many))
    assert param == "prompt" and "60" in message and "at most 8" in message

    param, message = _refusal(_post_on(lora_client, route, "a boat <lora:inky:100000000000000000000>"))
    assert param == "prompt" and "scale" in message and "5" in message

    param, message = _refusal(_post_on(lora_client, route, "a boat <lora:inky:0.5> <lora:inky:0.5>"))
    assert param == "prompt" and "inky" in message and "twice" in message
    assert len(lora_client.get("/v1/jobs").json()["data"]) == jobs_before  # nothing was queued


def test_tags_and_the_loras_field_count_together(lora_client):
    tags = " ".join(f"<lora:inky{i}>" for i in range(5))
    param, message = _refusal(_post_on(lora_client, "/generate", "a boat " + tags,
                                       [{"name": f"other{i}"} for i in range(4)]))
    assert param == "prompt" and "at most 8" in message
    param, message = _refusal(_post_on(lora_client, "/v1/chat/completions", "a boat <lora:inky:0.3>",
                                       [{"name": "inky", "scale": 0.3}]))
    assert param == "prompt" and "twice" in message


def test_a_gallery_image_drawn_with_a_tag_can_be_drawn_again(lora_client):
    """The PNG's text lists the prompt's LoRA tags too; drawing it again must not ask for them twice."""
    response = lora_client.post("/generate", json={"prompt": "a kite <lora:inky:0.5>", **SMALL,
                                                   "loras": []})
    assert response.status_code == 200, response.text
    [item] = [i for i in lora_client.get("/v1/gallery").json()["data"] if i["parameters"]["prompt"].startswith("a kite")]
    again = item["generation"]
    assert again["prompt"] == "a kite <lora:inky:0.5>" and "loras" not in again
    assert lora_client.post("/generate", json=again).status_code == 200
