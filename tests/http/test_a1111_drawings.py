"""A1111's drawings on the demo model: the hires fix (a second pass at the upscaled size, through
every route, counted against ALICE_MAX_PIXELS at its final size and written as A1111 writes it),
and `/v1/images/from-parameters`, which draws what an A1111 text or PNG describes."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from alice.engine.spec import GenerationSpec, batch_key

SMALL = {"width": 64, "height": 64, "steps": 4, "seed": 5, "scheduler": "euler"}


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_hires_fix_doubles_the_size_and_the_png_says_it(client):
    plain = client.post("/generate", json={"prompt": "a red circle", **SMALL}).json()
    body = client.post("/generate", json={"prompt": "a red circle", **SMALL, "hires_scale": 2, "hires_steps": 4,
                                          "hires_strength": 0.5}).json()
    image = png(body["images"][0]["b64_json"])
    assert image.size == (128, 128) and png(plain["images"][0]["b64_json"]).size == (64, 64)
    assert body["hires_scale"] == 2 and body["hires_upscaler"] == "latent" and body["width"] == 64
    assert image.info["parameters"].endswith(
        "Size: 64x64, Model: alice-demo, Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent, Denoising strength: 0.5"
    )
    assert "Hires" not in png(plain["images"][0]["b64_json"]).info["parameters"]
    # Progress counted both passes: 4 steps, then int(4 x 0.5) = 2.
    job = client.get(f"/v1/jobs/{body['job_id']}").json()
    assert job["step"] == job["total_steps"] == 6 and job["parameters"]["hires_scale"] == 2
    # The first pass is the plain drawing: upscaled and redrawn in part, it stays that picture.
    first = np.asarray(png(plain["images"][0]["b64_json"]).convert("RGB").resize((128, 128)), dtype=float)
    assert np.abs(np.asarray(image.convert("RGB"), dtype=float) - first).mean() < 40


def test_lanczos_upscales_the_decoded_image_and_draws_another(client):
    hires = {"prompt": "a red circle", **SMALL, "hires_scale": 1.5, "hires_strength": 0.5}
    latent = png(client.post("/generate", json=hires).json()["images"][0]["b64_json"])
    body = client.post("/generate", json={**hires, "hires_upscaler": "lanczos"}).json()
    lanczos = png(body["images"][0]["b64_json"])
    assert lanczos.size == latent.size == (96, 96)
    assert not np.array_equal(np.asarray(lanczos), np.asarray(latent))
    assert "Hires upscale: 1.5, Hires upscaler: Lanczos, Denoising strength: 0.5" in lanczos.info["parameters"]
    assert client.get(f"/v1/jobs/{body['job_id']}").json()["total_steps"] == 4 + 2  # hires_steps none = steps


def test_a_strength_too_low_for_one_step_draws_one(client):
    """int(steps x strength) steps leave none (2 x 0.1): diffusers refuses that; ALICE draws one
    step, the schedule's last, as A1111 and ComfyUI do, on img2img and the hires fix's second pass."""
    start = png(client.post("/generate", json={"prompt": "a red circle", **SMALL}).json()["images"][0]["b64_json"])
    buffer = io.BytesIO()
    start.save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    body = client.post("/generate", json={"prompt": "a blue circle", **SMALL, "steps": 2, "strength": 0.1,
                                          "input_image": image})
    assert body.status_code == 200, body.text
    assert client.get(f"/v1/jobs/{body.json()['job_id']}").json()["total_steps"] == 1
    drawn = png(body.json()["images"][0]["b64_json"])
    assert "Steps: 2," in drawn.info["parameters"] and "Denoising strength: 0.1" in drawn.info["parameters"]
    # One step at the least noise redraws little: the picture is still the input's.
    assert np.abs(np.asarray(drawn.convert("RGB"), dtype=float) - np.asarray(start.convert("RGB"), dtype=float)).mean() < 40
    hires = client.post("/generate", json={"prompt": "a red circle", **SMALL, "hires_scale": 1.5, "hires_steps": 3,
                                           "hires_strength": 0.2})
    assert hires.status_code == 200, hires.text
    assert client.get(f"/v1/jobs/{hires.json()['job_id']}").json()["total_steps"] == 4 + 1


def test_hires_fix_on_the_openai_and_sam_routes(client):
    images = client.post("/v1/images/generations", json={"prompt": "a red circle", "size": "64x64", "steps": 2,
                                                          "hires_scale": 2, "response_format": "b64_json"})
    assert images.status_code == 200, images.text
    assert png(images.json()["data"][0]["b64_json"]).size == (128, 128)
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a red circle"}],
                                                      "metadata": {"hires_scale": 2, **SMALL}})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["metadata"]["hires_scale"] == 2


def test_hires_fix_past_the_pixel_limit_is_a_400_before_the_queue(client):
    jobs = len(client.get("/v1/jobs").json()["data"])
    response = client.post("/generate", json={"prompt": "a circle", "width": 768, "height": 768, "hires_scale": 2})
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert response.json()["detail"][0]["loc"] == ["hires_scale"]
    assert "1536x1536" in message and "1048576" in message and "ALICE_MAX_PIXELS" in message
    images = client.post("/v1/images/generations", json={"prompt": "a circle", "size": "1024x1024", "hires_scale": 1.5})
    assert images.status_code == 400 and images.json()["error"]["param"] == "hires_scale"
    assert len(client.get("/v1/jobs").json()["data"]) == jobs  # nothing queued


def test_hires_fix_settings_out_of_range_or_with_an_input_image_are_400s(client):
    for field, value in (("hires_scale", 5), ("hires_scale", 0.5), ("hires_strength", 0), ("hires_upscaler", "esrgan")):
        response = client.post("/generate", json={"prompt": "a circle", **SMALL, "hires_scale": 2, field: value})
        assert response.status_code == 400 and field in response.text, (field, response.text)
    red = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(red, format="PNG")
    response = client.post("/generate", json={"prompt": "a circle", **SMALL, "hires_scale": 2,
                                              "input_image": base64.b64encode(red.getvalue()).decode()})
    assert response.status_code == 400 and "hires_scale" in response.text


def test_hires_resize_covers_the_target_and_keeps_its_middle_as_a1111_does(client):
    """A target size (A1111's "Hires resize", hires_width x hires_height): of the same aspect, it
    is a scale (the same image as hires_scale); of another, the first pass is upscaled to cover
    it and its middle drawn. Written back as A1111 writes it, and read back bit for bit."""
    plain = png(client.post("/generate", json={"prompt": "a red circle", **SMALL}).json()["images"][0]["b64_json"])
    scaled = client.post("/generate", json={"prompt": "a red circle", **SMALL, "hires_scale": 2, "hires_strength": 0.3})
    same = client.post("/generate", json={"prompt": "a red circle", **SMALL, "hires_width": 128, "hires_strength": 0.3})
    assert same.json()["hires_scale"] == 2 and same.json()["hires_width"] == 128
    assert np.array_equal(np.asarray(png(same.json()["images"][0]["b64_json"])),
                          np.asarray(png(scaled.json()["images"][0]["b64_json"])))
    body = client.post("/generate", json={"prompt": "a red circle", **SMALL, "hires_width": 128, "hires_height": 64,
                                          "hires_strength": 0.3, "hires_upscaler": "lanczos"}).json()
    wide = png(body["images"][0]["b64_json"])
    assert wide.size == (128, 64) and body["hires_scale"] == 2
    assert "Size: 64x64, Model: alice-demo, Hires resize: 128x64, Hires upscaler: Lanczos" in wide.info["parameters"]
    assert "Hires upscale:" not in wide.info["parameters"]
    # The middle of the first pass doubled, not the whole of it squashed.
    first = plain.convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)
    drawn = np.asarray(wide.convert("RGB"), dtype=float)
    middle = np.abs(drawn - np.asarray(first.crop((0, 32, 128, 96)), dtype=float)).mean()
    squashed = np.abs(drawn - np.asarray(plain.convert("RGB").resize((128, 64)), dtype=float)).mean()
    assert middle < squashed * 0.8, (middle, squashed)
    again = client.post("/v1/images/from-parameters", json={"parameters": wide.info["parameters"]}).json()
    assert again["not_honoured"] == [] and (again["hires_width"], again["hires_height"]) == (128, 64)
    assert np.array_equal(np.asarray(png(again["images"][0]["b64_json"])), np.asarray(wide))
    refused = client.post("/generate", json={"prompt": "a circle", **SMALL, "hires_width": 128, "hires_scale": 3})
    assert refused.status_code == 400 and refused.json()["detail"][0]["loc"] == ["hires_scale"], refused.text
    refused = client.post("/generate", json={"prompt": "a circle", **SMALL, "hires_width": 512})
    assert refused.status_code == 400 and "hires_width" in refused.json()["error"], refused.text
    refused = client.post("/generate", json={"prompt": "a circle", "width": 768, "height": 768, "hires_height": 1536})
    assert refused.status_code == 400 and refused.json()["detail"][0]["loc"] == ["hires_width"], refused.text
    assert "1536x1536" in refused.json()["error"] and "ALICE_MAX_PIXELS" in refused.json()["error"]


def test_hires_and_plain_jobs_never_share_a_pipeline_call():
    plain = GenerationSpec(prompt="a", seed=1, width=64, height=64)
    assert batch_key(plain) != batch_key(GenerationSpec(prompt="a", seed=1, width=64, height=64, hires_scale=2))
    # Without a hires fix its other settings change nothing, so they do not keep jobs apart.
    assert batch_key(plain) == batch_key(GenerationSpec(prompt="b", seed=2, width=64, height=64, hires_strength=0.3))


def test_a_png_alice_wrote_read_back_draws_the_same_image_bit_for_bit(client):
    body = client.post("/generate", json={"prompt": "a (red:1.2) circle", "negative_prompt": "blue", **SMALL,
                                          "clip_skip": 2, "hires_scale": 1.5, "hires_steps": 2}).json()
    original = body["images"][0]["b64_json"]
    again = client.post("/v1/images/from-parameters", json={"image": original})
    assert again.status_code == 200, again.text
    answer = again.json()
    assert answer["not_honoured"] == [] and answer["hires_scale"] == 1.5 and answer["clip_skip"] == 2
    assert answer["scheduler"] == "euler" and answer["seed"] == 5 and answer["model"] == "alice-demo"
    assert np.array_equal(np.asarray(png(answer["images"][0]["b64_json"])), np.asarray(png(original)))
    # The same PNG as a multipart upload, and its text alone, draw it too.
    upload = client.post("/v1/images/from-parameters", files={"image": ("a.png", base64.b64decode(original))})
    text = client.post("/v1/images/from-parameters", json={"parameters": png(original).info["parameters"]})
    for response in (upload, text):
        assert response.status_code == 200, response.text
        assert np.array_equal(np.asarray(png(response.json()["images"][0]["b64_json"])), np.asarray(png(original)))


def test_a_forge_text_draws_what_it_can_and_names_the_rest(client):
    text = (
        "a red circle, <lora:add_detail:0.5>, (masterpiece:1.2)\n"
        "Negative prompt: EasyNegative, blurry\n"
        "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5, Seed: 77, Size: 64x64, "
        "Model hash: 6ce0161689, Model: dreamshaper_8, Denoising strength: 0.5, Hires upscale: 2, "
        "Hires upscaler: 4x-UltraSharp, ADetailer model: face_yolov8n.pt, Version: f2.0.1v1.10.1-previous-313-g8a042934"
    )
    response = client.post("/v1/images/from-parameters", json={"parameters": text})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["scheduler"] == "euler_a" and answer["steps"] == 3 and answer["guidance_scale"] == 5
    assert answer["hires_upscaler"] == "lanczos" and answer["hires_strength"] == 0.5
    assert png(answer["images"][0]["b64_json"]).size == (128, 128)
    assert answer["prompt"] == "a red circle, , (masterpiece:1.2)" and answer["model"] == "alice-demo"
    notes = "\n".join(answer["not_honoured"])
    for key in ("Model hash: 6ce0161689", "Model: dreamshaper_8", "<lora:add_detail>", "4x-UltraSharp",
                "ADetailer model: face_yolov8n.pt"):
        assert key in notes, notes
    assert "Version" not in notes


def test_from_parameters_refuses_what_it_cannot_read_with_a_400(client):
    for body in ({}, {"parameters": "Steps: 20, Seed: 1, CFG scale: 7"}, {"image": "not base64!"},
                 {"image": base64.b64encode(b"GIF89a").decode()}, {"parameters": "a cat", "steps": 3}):
        response = client.post("/v1/images/from-parameters", json=body)
        assert response.status_code == 400, (body, response.text)
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    response = client.post("/v1/images/from-parameters", json={"image": base64.b64encode(plain.getvalue()).decode()})
    assert response.status_code == 400 and "parameters" in response.json()["error"]["message"]
    named = client.post("/v1/images/from-parameters", json={"parameters": "a cat", "model": "nope"})
    assert named.status_code == 404


def test_read_parameters_tells_the_settings_without_drawing(client):
    jobs = len(client.get("/v1/jobs").json()["data"])
    response = client.post("/v1/images/read-parameters", json={"parameters": "a cat\nSteps: 7, Sampler: Euler, "
                                                               "CFG scale: 6, Seed: 9, Size: 64x64, Hires upscale: 2"})
    assert response.status_code == 200, response.text
    assert response.json()["settings"]["hires_scale"] == 2 and response.json()["settings"]["steps"] == 7
    assert len(client.get("/v1/jobs").json()["data"]) == jobs


def test_an_inpainting_checkpoint_draws_text_to_image_and_its_hires_fix_all_masked(client, tmp_path):
    """As A1111 runs txt2img and its hires fix on an inpainting model: the 9-channel UNet is told
    that all of the image is masked, in both passes (its own pipeline, not an img2img one, which
    would hand it 4 channels); an edit without a mask too, from the input's latents."""
    from alice.engine.demo import save_demo_pipeline
    from alice.models import checkpoints, store as model_store
    from tests.unit.test_inpainting import nine_channel_copy

    save_demo_pipeline(tmp_path / "demo")
    checkpoints.import_pipeline_folder(nine_channel_copy(tmp_path / "demo", tmp_path / "nine"), "demo-nine")
    try:
        settings = {"prompt": "a red circle", **SMALL, "model": "demo-nine"}
        plain = client.post("/generate", json=settings)
        assert plain.status_code == 200, plain.text
        hires = client.post("/generate", json={**settings, "hires_scale": 2, "hires_strength": 0.5, "num_images": 2})
        assert hires.status_code == 200, hires.text
        image, second = (png(drawn["b64_json"]) for drawn in hires.json()["images"])
        assert image.size == second.size == (128, 128) and "Hires upscale: 2" in image.info["parameters"]
        job = client.get(f"/v1/jobs/{hires.json()['job_id']}").json()
        assert job["step"] == job["total_steps"] == 4 + 2 and job["batch"] == 2  # both in one call, both passes
        first = np.asarray(png(plain.json()["images"][0]["b64_json"]).convert("RGB").resize((128, 128)), dtype=float)
        assert np.abs(np.asarray(image.convert("RGB"), dtype=float) - first).mean() < 40  # the first pass, redrawn
        lanczos = client.post("/generate", json={**settings, "hires_scale": 1.5, "hires_upscaler": "lanczos"})
        assert lanczos.status_code == 200 and png(lanczos.json()["images"][0]["b64_json"]).size == (96, 96)
        red = io.BytesIO()
        Image.new("RGB", (64, 64), "red").save(red, format="PNG")
        edit = {**settings, "input_image": base64.b64encode(red.getvalue()).decode(), "strength": 0.5, "steps": 8}
        unmasked = client.post("/generate", json=edit)  # A1111's img2img on an inpainting model: all masked
        assert unmasked.status_code == 200, unmasked.text
        drawn = np.asarray(png(unmasked.json()["images"][0]["b64_json"]).convert("RGB"), dtype=float)
        red_side, green, blue = drawn.mean(axis=(0, 1))  # half-way from the red input: red stays ahead
        assert red_side - green > 40 and red_side - blue > 40, drawn.mean(axis=(0, 1))  # measured 169, 84, 61
        plain_red, plain_green, _ = first.mean(axis=(0, 1))
        assert abs(plain_red - plain_green) < 40  # the same settings without the input draw no red cast
    finally:
        model_store.delete_model("demo-nine")
