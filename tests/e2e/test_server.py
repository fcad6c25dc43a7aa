"""End to end: `bentoml serve` in a subprocess, driven by the clients people really use."""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
import time
from collections.abc import Iterator

import bentoml
import httpx
import openai
import pytest
from PIL import Image

from alice.images.formats import EXIF_IFD, USER_COMMENT, decode_user_comment
from harness.environment import alice_environment
from harness.server import ServerProcess, running_server

pytestmark = pytest.mark.e2e

API_KEY = "e2e-key"


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("e2e")
    # A short header timeout, for the raw-socket test; real clients send their headers at once.
    with alice_environment(tmp, {"ALICE_API_KEYS": API_KEY, "ALICE_HEADER_TIMEOUT_S": "1"}), \
            running_server(tmp / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def server(started: ServerProcess) -> str:
    return started.url


def test_the_start_is_timed_phase_by_phase_and_reading_the_service_loads_no_torch(started):
    [line] = [line for line in started.log().splitlines() if "INFO alice: start: " in line]
    found = re.search(r"start: (.+); ready ([\d.]+) s after the process started, ([\d.]+) s after "
                      r"`bentoml serve` started$", line)
    assert found, line
    phases = {name: float(seconds) for name, seconds in re.findall(r"([a-zA-Z ]+) ([\d.]+) s(?:, |$)", found[1])}
    assert list(phases) == ["imports and BentoML setup", "settings", "runtime", "default model"], line
    worker_s, server_s = float(found[2]), float(found[3])
    assert abs(sum(phases.values()) - worker_s) < 0.1, line
    # The server's first process started first; the test saw /readyz answer after both.
    assert 0 < worker_s <= server_s <= started.ready_after + 0.5, (line, started.ready_after)
    # `bentoml serve` imports the service only to read its definition; the worker loads torch.
    libraries = {process.pid: {m.path for m in process.memory_maps() if "libtorch" in m.path}
                 for process in started._processes()}
    assert not libraries[started.process.pid], "the server's first process loaded torch"
    assert len(libraries) == 2 and any(libraries.values())


def test_bentoml_client_generate_with_keyword_arguments(server):
    with bentoml.SyncHTTPClient(server, token=API_KEY, timeout=120) as client:
        result = client.generate(prompt="a lighthouse", width=64, height=96, steps=4, seed=3, scheduler="euler")
    assert result["seed"] == 3
    png = base64.b64decode(result["images"][0]["b64_json"])
    assert Image.open(io.BytesIO(png)).size == (64, 96)
    served = httpx.get(result["images"][0]["url"])
    assert served.status_code == 200 and served.content == png


def test_openai_sdk_chat_images_and_streaming(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == ["sd/alice-demo"]

    completion = client.chat.completions.create(
        model="sd/alice-demo",
        messages=[{"role": "user", "content": "a red bicycle"}],
        extra_body={"metadata": {"width": 64, "height": 64, "steps": 3, "seed": 11}},
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == 0
    [url] = message.model_extra["image_urls"]
    assert url in message.content
    image = Image.open(io.BytesIO(httpx.get(url).content))
    assert image.size == (64, 64)

    images = client.images.generate(prompt="a fox", model="sd/alice-demo", size="64x64", n=2,
                                    extra_body={"steps": 2, "seed": 4})
    assert len(images.data) == 2 and all(item.url for item in images.data)
    # The same request as base64: the same two images (n images are one batch, drawn the same way).
    b64 = client.images.generate(prompt="a fox", size="64x64", n=2, response_format="b64_json",
                                 extra_body={"steps": 2, "seed": 4})
    assert [base64.b64decode(item.b64_json) for item in b64.data] == [httpx.get(item.url).content for item in images.data]

    stream = client.chat.completions.create(
        model="sd/alice-demo",
        messages=[{"role": "user", "content": "a red bicycle"}],
        stream=True,
        extra_body={"metadata": {"width": 64, "height": 64, "steps": 3, "seed": 11}},
    )
    chunks = list(stream)
    assert any((chunk.model_extra or {}).get("progress") for chunk in chunks)
    final = chunks[-1].choices[0]
    assert final.finish_reason == "stop"
    assert final.delta.content == message.content.replace(url, final.delta.model_extra["image_urls"][0])


def test_openai_sdk_edit_with_a_mask_keeps_the_opaque_area_and_redraws_the_transparent_one(server):
    """Inpainting as OpenAI's SDK sends it: the mask's fully transparent pixels are redrawn, the
    rest of the image is kept (blended back: PSNR at least 35 dB there against the input)."""
    import numpy as np

    rng = np.random.default_rng(7)
    original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # texture: PSNR has something to measure
    mask = np.full((64, 64, 4), 255, dtype=np.uint8)
    mask[8:40, 24:56, 3] = 0  # the area to redraw: alpha 0
    transparent = mask[..., 3] == 0

    def png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    result = client.images.edit(
        image=("photo.png", png(original), "image/png"), mask=("mask.png", png(mask), "image/png"),
        prompt="a boat", size="64x64", response_format="b64_json", extra_body={"steps": 3, "seed": 5},
    )
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).convert("RGB"), float)
    error = (drawn - original)[~transparent]
    mse = float((error**2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)
    assert psnr >= 35, psnr
    assert np.abs(drawn - original)[transparent].mean() > 20  # redrawn: nothing like the input there


def test_openai_sdk_streams_partial_images_then_the_unstreamed_image(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    asked = dict(prompt="a red circle", model="sd/alice-demo", size="64x64", extra_body={"steps": 3, "seed": 21})
    events = list(client.images.generate(**asked, stream=True, partial_images=2))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    assert all(Image.open(io.BytesIO(base64.b64decode(event.b64_json))).size == (64, 64) for event in events)
    completed = events[-1]
    assert completed.size == "64x64" and completed.output_format == "png" and completed.usage.total_tokens == 0
    unstreamed = client.images.generate(**asked, response_format="b64_json")
    assert completed.b64_json == unstreamed.data[0].b64_json  # the same PNG, bit for bit


def test_openai_sdk_sees_typed_errors_without_retrying(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="sd/alice-demo", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"metadata": {"width": 65}})
    assert bad.value.body["param"] == "width"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="sd/missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong").models.list()


def test_openai_sdk_images_fields_of_today(server):
    """output_format and output_compression, quality, size auto, background, moderation,
    input_fidelity and variations, as the official SDK sends them to the real server."""
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    headers = {"X-Api-Key": API_KEY}
    # Few steps: each one is slow in a server on a busy machine. Only `quality` draws 13 of them.
    for output_format, pillow, quality, steps in (("jpeg", "JPEG", "low", None), ("webp", "WEBP", None, 2)):
        result = client.images.generate(prompt="a fox", size="64x64", output_format=output_format,
                                        output_compression=70, quality=quality or openai.omit, background="opaque",
                                        moderation="low", extra_body={"seed": 4, "steps": steps})
        assert (result.output_format, result.quality, result.size, result.background) == (
            output_format, quality, "64x64", "opaque")
        assert result.usage.total_tokens == 0 and result.created > 0
        served = httpx.get(result.data[0].url)
        assert served.headers["content-type"] == f"image/{output_format}"
        image = Image.open(io.BytesIO(served.content))
        assert image.format == pillow
        text = decode_user_comment(image.getexif().get_ifd(EXIF_IFD)[USER_COMMENT])
        assert text.startswith("a fox\n") and f"Steps: {steps or 13}," in text  # low = half the demo's 25 steps

    auto = client.images.generate(prompt="a fox", size="auto", response_format="b64_json", extra_body={"steps": 2})
    assert auto.size == "64x64"  # the demo's native size
    assert Image.open(io.BytesIO(base64.b64decode(auto.data[0].b64_json))).size == (64, 64)

    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 160, 40)).save(picture, format="PNG")
    edit = client.images.edit(image=("in.png", picture.getvalue(), "image/png"), prompt="a boat", size="64x64",
                              input_fidelity="high", output_format="webp", response_format="b64_json",
                              extra_body={"steps": 3})
    assert Image.open(io.BytesIO(base64.b64decode(edit.data[0].b64_json))).format == "WEBP"
    assert httpx.get(f"{server}/v1/jobs", headers=headers).json()["data"][0]["parameters"]["strength"] == 0.4

    variation = client.images.create_variation(image=("in.png", picture.getvalue(), "image/png"), n=2,
                                               size="64x64", response_format="b64_json", extra_body={"steps": 4})
    drawn = [base64.b64decode(item.b64_json) for item in variation.data]
    assert len(set(drawn)) == 2 and all(Image.open(io.BytesIO(data)).size == (64, 64) for data in drawn)
    job = httpx.get(f"{server}/v1/jobs", headers=headers).json()["data"][0]
    assert (job["parameters"]["prompt"], job["parameters"]["strength"], job["source"]) == ("", 0.6, "images")

    for field, value in (("background", "transparent"), ("output_format", "gif"), ("quality", "ultra")):
        with pytest.raises(openai.BadRequestError) as bad:
            client.images.generate(prompt="a fox", size="64x64", **{field: value})
        assert bad.value.body["param"] == field, bad.value.body


def test_sam_without_v1_and_with_x_api_key(server):
    response = httpx.post(
        f"{server}/chat/completions",
        headers={"X-Api-Key": API_KEY},
        json={"model": "sd/alice-demo", "messages": [{"role": "user", "content": "a boat"}],
              "metadata": {"steps": 2, "width": 64, "height": 64, "scheduler": "ddim", "seed": 1}},
        timeout=600,
    )
    assert response.status_code == 200
    url = response.json()["choices"][0]["message"]["image_urls"][0]
    assert url.startswith(f"{server}/images/")
    image = httpx.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


def test_health_answers_fast_during_a_generation_and_metrics_work(server):
    busy = threading.Thread(target=httpx.post, args=(f"{server}/generate",), kwargs={
        "json": {"prompt": "slow", "width": 256, "height": 256, "steps": 40},
        "headers": {"X-Api-Key": API_KEY}, "timeout": 600})
    busy.start()
    try:
        deadline = time.monotonic() + 30
        while httpx.get(f"{server}/health").json()["queue"]["running"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        health = httpx.get(f"{server}/health", timeout=5)
        assert time.monotonic() - started < 1.0
        body = health.json()
        assert body["status"] == "ok" and body["queue"]["running"] == 1
        assert {"version", "gpu_available", "gpuAvailable", "models_loaded", "modelsLoaded"} <= set(body)
        metrics = httpx.get(f"{server}/metrics", timeout=5)
        assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    finally:
        # No need to wait for the slow picture: cancel it.
        headers = {"X-Api-Key": API_KEY}
        for job in httpx.get(f"{server}/v1/jobs", headers=headers).json()["data"]:
            if job["state"] in ("queued", "running"):
                httpx.delete(f"{server}/v1/jobs/{job['id']}", headers=headers)
        busy.join()


def test_connections_that_never_finish_their_headers_are_closed_while_others_are_answered(server):
    """ALICE_HEADER_TIMEOUT_S (1 s here): a connection that sends nothing, and one that trickles
    a request's headers a byte at a time, are closed; a prompt request meanwhile is answered."""
    host, port = server.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(3)]
    trickling = socket.create_connection((host, int(port)), timeout=0.2)
    opened = time.monotonic()
    closed_after = None
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100:
        try:
            trickling.sendall(bytes([byte]))
            if trickling.recv(100) == b"":
                closed_after = time.monotonic() - opened
                break
        except TimeoutError:
            continue
        except OSError:  # reset: closed as well
            closed_after = time.monotonic() - opened
            break
    assert closed_after is not None and 0.8 <= closed_after < 3, closed_after
    assert httpx.get(f"{server}/health").status_code == 200
    for connection in idle:
        assert connection.recv(100) == b""  # closed by the server, without an answer
        connection.close()
    assert time.monotonic() - opened < 4
