"""OpenAI's Images API fields of today (output_format, quality, size auto, background, moderation,
input_fidelity, variations) on the real app: what each does to the job, and the 400 a bad value
gets before the queue."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from alice.images.formats import exif_parameters
from alice.protocol.a1111 import parse_a1111_parameters

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

SMALL = {"size": "64x64", "steps": 2}


def png_bytes(colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def last_job(client) -> dict:
    return client.get("/v1/jobs").json()["data"][0]


def job_count(client) -> int:
    return len(client.get("/v1/jobs").json()["data"])


@pytest.mark.parametrize(("output_format", "pillow", "suffix", "content_type"), [
    ("jpeg", "JPEG", ".jpg", "image/jpeg"), ("webp", "WEBP", ".webp", "image/webp"), ("png", "PNG", ".png", "image/png"),
])
def test_output_format_is_the_file_served_listed_and_answered(client, tmp_path, output_format, pillow, suffix,
                                                            content_type):
    body = {"prompt": "a fox", **SMALL, "seed": 5, "output_format": output_format, "output_compression": 80}
    answer = client.post("/v1/images/generations", json={**body, "response_format": "b64_json"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["output_format"] == output_format
    data = base64.b64decode(answer.json()["data"][0]["b64_json"])
    assert Image.open(io.BytesIO(data)).format == pillow

    url = client.post("/v1/images/generations", json=body).json()["data"][0]["url"]
    name = url.rsplit("/", 1)[1]
    assert name.endswith(suffix)
    served = client.get(f"/images/{name}")
    assert served.status_code == 200 and served.headers["content-type"] == content_type
    # The gallery reads the A1111 text back from the file, whatever its format.
    [item] = [item for item in client.get("/v1/gallery?limit=50").json()["data"] if item["name"] == name]
    assert item["parameters"]["prompt"] == "a fox" and item["parameters"]["settings"]["Seed"] == "5"
    assert item["generation"]["seed"] == 5
    if output_format != "png":
        (tmp_path / name).write_bytes(served.content)
        assert parse_a1111_parameters(exif_parameters(tmp_path / name))["settings"]["Size"] == "64x64"


def test_native_generate_and_jobs_take_output_format(client):
    answer = client.post("/generate", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 2,
                                            "output_format": "webp", "output_compression": 50})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["output_format"] == "webp" and result["output_compression"] == 50
    assert result["images"][0]["url"].endswith(".webp")
    assert Image.open(io.BytesIO(base64.b64decode(result["images"][0]["b64_json"]))).format == "WEBP"
    assert last_job(client)["parameters"]["output_format"] == "webp"
    defaults = client.get("/v1/settings").json()
    assert defaults["defaults"]["output_format"] == "png"
    assert defaults["setting_limits"]["output_compression"] == {"minimum": 0, "maximum": 100}


def test_quality_size_auto_background_moderation_and_the_answer_fields(client):
    answer = client.post("/v1/images/generations", json={
        "prompt": "a fox", "size": "auto", "quality": "low", "background": "opaque", "moderation": "low",
    })
    assert answer.status_code == 200, answer.text
    body = answer.json()
    # The demo is SD-1.5-shaped: native 64 px, 25 steps by default; low = half of them, rounded up.
    assert last_job(client)["parameters"]["steps"] == 13
    assert (body["size"], body["quality"], body["background"], body["output_format"]) == ("64x64", "low", "opaque", "png")
    assert body["usage"]["total_tokens"] == 0 and body["usage"]["input_tokens_details"]["text_tokens"] == 0
    assert isinstance(body["created"], int) and body["data"][0]["revised_prompt"] == "a fox"

    for quality, steps in (("hd", 38), ("auto", 25), ("max", 75)):
        body = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64", "quality": quality}).json()
        assert last_job(client)["parameters"]["steps"] == steps, quality
    # Steps the client gave itself win; the answer then names no quality.
    body = client.post("/v1/images/generations", json={"prompt": "x", **SMALL, "quality": "high"}).json()
    assert last_job(client)["parameters"]["steps"] == 2 and body["quality"] is None


@pytest.mark.parametrize(("field", "value", "words"), [
    ("output_format", "gif", ["'png'", "'jpeg'", "'webp'"]),
    ("output_compression", 101, ["100"]),
    ("quality", "ultra", ["'low'", "'medium'", "'high'", "'auto'"]),
    ("background", "transparent", ["cannot", "opaque"]),
    ("background", "checkered", ["'transparent'", "'opaque'", "'auto'"]),
    ("moderation", "strict", ["'low'", "'auto'"]),
    ("input_fidelity", "high", ["/v1/images/edits"]),  # generations have no input image to be faithful to
])
def test_bad_values_are_a_400_naming_the_field_before_the_queue(client, field, value, words):
    before = job_count(client)
    answer = client.post("/v1/images/generations", json={"prompt": "x", **SMALL, field: value})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert all(word in error["message"] for word in words), error["message"]
    assert job_count(client) == before


def test_edit_input_fidelity_maps_to_strength(client):
    def edit(**fields) -> dict:
        answer = client.post("/v1/images/edits", files={"image": ("in.png", png_bytes(), "image/png")},
                             data={"prompt": "a boat", "size": "64x64", "steps": "10", **fields})
        assert answer.status_code == 200, answer.text
        return last_job(client)["parameters"]

    assert edit(input_fidelity="high")["strength"] == 0.4
    assert edit(input_fidelity="low")["strength"] == 0.75
    assert edit(input_fidelity="high", strength="0.9")["strength"] == 0.9  # the client's own strength wins
    answer = client.post("/v1/images/edits", files={"image": ("in.png", png_bytes(), "image/png")},
                         data={"prompt": "a boat", "input_fidelity": "exact"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "input_fidelity"


def test_variations_redraw_the_image_without_a_prompt(client):
    answer = client.post("/v1/images/variations", files={"image": ("in.png", png_bytes(), "image/png")},
                         data={"n": "2", "size": "64x64", "response_format": "b64_json", "steps": "4"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["data"]) == 2 and all("revised_prompt" not in item for item in body["data"])
    parameters = last_job(client)["parameters"]
    assert parameters["prompt"] == "" and parameters["strength"] == 0.6 and parameters["num_images"] == 2
    assert parameters["init_image"]  # drawn from the upload
    missing = client.post("/v1/images/variations", data={"n": "1"}, files={"other": ("x.txt", b"x", "text/plain")})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "image"
