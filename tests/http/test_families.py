"""Transformer families through the real service: imported into a private store with their real
family, listed with their drawing facts, drawn through `/generate`, SAM's chat and the Images
API as the bare diffusers pipeline draws them, and refused (400) what their family does not take."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from harness.tiny_pipelines import BUILDERS
from tests.http.conftest import start_client

# store name -> (tiny builder, the family it must be labelled)
IMPORTED = {
    "tiny-flux": ("flux", "flux1-dev"),
    "tiny-schnell": ("flux-schnell", "flux1-schnell"),
    "tiny-sd3": ("sd3", "sd3"),
    "tiny-chroma": ("chroma", "chroma"),
    "tiny-zimage": ("z-image", "zimage"),
}
DRAW = {"prompt": "a red circle on a blue square", "seed": 5, "width": 64, "height": 64, "steps": 2,
        "scheduler": "flow-euler"}


@pytest.fixture(scope="module")
def families_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("families")
    folders = {name: BUILDERS[builder](tmp / name) for name, (builder, _) in IMPORTED.items()}
    for client in start_client(tmp / "server"):
        from alice.models import checkpoints

        for name, folder in folders.items():
            assert checkpoints.import_pipeline_folder(folder, name).family == IMPORTED[name][1]
        client.folders = folders  # type: ignore[attr-defined]
        yield client


def bare_image(folder: Path, guidance: float, seed: int = 5, steps: int = 2, prompt: str = DRAW["prompt"]) -> np.ndarray:
    """The bare diffusers pipeline's image for DRAW's settings (weights read in, as ALICE does)."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, disable_mmap=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt=prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(image)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_models_list_each_family_with_how_it_draws(families_client: Any) -> None:
    models = {m["id"]: m for m in families_client.get("/v1/models").json()["data"]}
    assert {mid: m["type"] for mid, m in models.items()} == {
        "sd/alice-demo": "sd15", **{"sd/" + name: family for name, (_, family) in IMPORTED.items()}
    }
    flux, schnell, sd3 = models["sd/tiny-flux"], models["sd/tiny-schnell"], models["sd/tiny-sd3"]
    assert (flux["default_steps"], flux["default_guidance_scale"], flux["guidance"]) == (28, 3.5, "embedded")
    assert flux["schedulers"] == ["flow-euler", "flow-dpmpp-2m", "flow-unipc"] and not flux["negative_prompt"]
    assert (schnell["default_steps"], schnell["default_guidance_scale"]) == (4, 0.0)
    assert flux["native_size"] == 1024  # FLUX's pipeline hard-codes it
    assert sd3["native_size"] == 64  # the tiny SD3 transformer's sample_size 8, times the VAE's 8
    demo = models["sd/alice-demo"]
    assert demo["default_steps"] == 25 and "dpm++_2m_karras" in demo["schedulers"] and demo["clip_skip"]
    one = families_client.get("/v1/models/sd/tiny-sd3").json()
    assert one["family"] == "sd3" and one["default_scheduler"] == "flow-euler"


@pytest.mark.parametrize(("model", "guidance"), [("tiny-flux", 3.5), ("tiny-sd3", 7.0)])
def test_generate_chat_and_images_draw_as_the_bare_pipeline(families_client: Any, model: str,
                                                            guidance: float) -> None:
    expected = bare_image(families_client.folders[model], guidance)
    settings = {**DRAW, "guidance_scale": guidance}

    native = families_client.post("/generate", json={**settings, "model": model})
    assert native.status_code == 200, native.text
    drawn = {"generate": png_pixels(base64.b64decode(native.json()["images"][0]["b64_json"]))}

    chat = families_client.post("/v1/chat/completions", json={
        "model": "sd/" + model, "messages": [{"role": "user", "content": DRAW["prompt"]}],
        "metadata": {key: value for key, value in settings.items() if key != "prompt"},
    })
    assert chat.status_code == 200, chat.text
    [url] = chat.json()["choices"][0]["message"]["image_urls"]
    drawn["chat"] = png_pixels(families_client.get(url.removeprefix("http://testserver")).content)

    images = families_client.post("/v1/images/generations", json={
        "model": "sd/" + model, "prompt": DRAW["prompt"], "size": "64x64", "response_format": "b64_json",
        **{key: value for key, value in settings.items() if key not in ("prompt", "width", "height")},
    })
    assert images.status_code == 200, images.text
    drawn["images"] = png_pixels(base64.b64decode(images.json()["data"][0]["b64_json"]))

    for route, pixels in drawn.items():
        score = psnr(pixels, expected)
        print(f"{model} via {route}: PSNR {score:.1f} dB")  # shown with -s
        assert score >= 40, route


def test_a_request_without_settings_draws_with_its_family_defaults(families_client: Any) -> None:
    response = families_client.post("/generate", json={"prompt": "a cat", "model": "tiny-schnell", "width": 64,
                                                       "height": 64, "seed": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["steps"], body["guidance_scale"], body["scheduler"]) == (4, 0.0, "flow-euler")
    expected = bare_image(families_client.folders["tiny-schnell"], 0.0, seed=3, steps=4, prompt="a cat")
    assert psnr(png_pixels(base64.b64decode(body["images"][0]["b64_json"])), expected) >= 40
    sd = families_client.post("/generate", json={"prompt": "a cat", "width": 64, "height": 64, "steps": 1})
    assert sd.json()["scheduler"] == "dpm++_2m_karras" and sd.json()["guidance_scale"] == 7.5  # the demo: SD's


def test_sam_draws_a_flux_model_with_its_fixed_settings(families_client: Any) -> None:
    """SAM always sends scheduler `ddim` (and its other defaults): on a flow model DDIM is Euler's
    method on the flow, so it draws flow-euler, as the bare pipeline's own scheduler does, and
    the answer says which scheduler drew it."""
    chat = families_client.post("/v1/chat/completions", json={
        "model": "sd/tiny-flux", "messages": [{"role": "user", "content": DRAW["prompt"]}],
        "metadata": {"steps": 2, "guidance_scale": 7.5, "scheduler": "ddim", "width": 64, "height": 64,
                     "negative_prompt": "", "seed": 5},
    })
    assert chat.status_code == 200, chat.text
    message = chat.json()["choices"][0]["message"]
    assert message["metadata"]["scheduler"] == "flow-euler"
    drawn = png_pixels(families_client.get(message["image_urls"][0].removeprefix("http://testserver")).content)
    assert psnr(drawn, bare_image(families_client.folders["tiny-flux"], 7.5)) >= 40


@pytest.mark.parametrize(
    ("model", "extra", "param", "words"),
    [
        ("tiny-flux", {"scheduler": "lms"}, "scheduler",
         "scheduler 'lms' does not apply to flux1-dev models; use one of: flow-euler, flow-dpmpp-2m, flow-unipc"),
        ("tiny-chroma", {"scheduler": "flow-dpmpp-2m"}, "scheduler", "use one of: flow-euler, flow-unipc"),
        ("alice-demo", {"scheduler": "flow-euler"}, "scheduler", "does not apply to sd15 models; use one of: ddim"),
        ("tiny-flux", {"negative_prompt": "blur"}, "negative_prompt", "flux1-dev models take no negative prompt"),
        ("tiny-sd3", {"clip_skip": 2}, "clip_skip", "not to sd3 models"),
        ("tiny-zimage", {"width": 72}, "width", "multiples of 16"),
    ],
)
def test_what_a_family_does_not_take_is_a_400_before_the_queue(
    families_client: Any, model: str, extra: dict, param: str, words: str
) -> None:
    jobs = len(families_client.get("/v1/jobs").json()["data"])
    response = families_client.post("/generate", json={**DRAW, "model": model, **extra})
    assert response.status_code == 400, response.text
    assert words in response.text
    chat = families_client.post("/v1/chat/completions", json={
        "model": "sd/" + model, "messages": [{"role": "user", "content": "a cat"}], "metadata": {**DRAW, **extra}})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == param, chat.text
    assert len(families_client.get("/v1/jobs").json()["data"]) == jobs  # refused before the queue


def test_a_folder_of_no_known_family_is_refused_at_import(tmp_path: Path, families_client: Any) -> None:
    from alice.models import checkpoints

    folder = tmp_path / "kontext"
    folder.mkdir()
    (folder / "model_index.json").write_text('{"_class_name": "FluxKontextPipeline"}')
    with pytest.raises(ValueError, match="FluxKontextPipeline, of no model family ALICE knows"):
        checkpoints.import_pipeline_folder(folder, "kontext")


def test_a_zimage_lora_draws_through_the_service_and_an_sd3_one_is_a_400_on_it(families_client: Any,
                                                                              tmp_path: Path) -> None:
    """The new families' LoRAs through the real app: imported and labelled by their tensor names,
    drawn on /generate and SAM's chat (a `<lora:>` tag) as bare diffusers draws with the LoRA
    loaded; one of another family refused before the queue, naming both."""
    from diffusers import DiffusionPipeline

    from alice.models import checkpoints
    from tests.families.test_transformer_loras import ATTENTION, bare_lora_draw
    from tests.families.tiny_loras import (
        lora_layers,
        write_diffusers_lora,
        write_renamed_lora,
    )

    zimage, sd3 = families_client.folders["tiny-zimage"], families_client.folders["tiny-sd3"]
    files = {"z-style": write_renamed_lora(lora_layers(zimage), tmp_path / "z.safetensors",
                                           lambda module: "diffusion_model." + module),
             "sd3-style": write_diffusers_lora(lora_layers(sd3, targets=ATTENTION), tmp_path / "sd3.safetensors")}
    labels = {name: checkpoints.import_lora_file(path, name).family for name, path in files.items()}
    assert labels == {"z-style": "zimage", "sd3-style": "sd3,flux1-dev,flux2-klein,qwen-image"}

    pipe = DiffusionPipeline.from_pretrained(zimage, local_files_only=True, disable_mmap=True)
    pipe.set_progress_bar_config(disable=True)
    expected = bare_lora_draw(pipe, "z-image", files["z-style"], 0.8)
    settings = {**DRAW, "seed": 7, "guidance_scale": 0.0}
    native = families_client.post("/generate", json={**settings, "model": "tiny-zimage",
                                                     "loras": [{"name": "z-style", "scale": 0.8}]})
    assert native.status_code == 200, native.text
    chat = families_client.post("/v1/chat/completions", json={
        "model": "sd/tiny-zimage", "messages": [{"role": "user", "content": f"{DRAW['prompt']} <lora:z-style:0.8>"}],
        "metadata": {key: value for key, value in settings.items() if key != "prompt"},
    })
    assert chat.status_code == 200, chat.text
    [url] = chat.json()["choices"][0]["message"]["image_urls"]
    drawn = {"generate": png_pixels(base64.b64decode(native.json()["images"][0]["b64_json"])),
             "chat": png_pixels(families_client.get(url.removeprefix("http://testserver")).content)}
    plain = families_client.post("/generate", json={**settings, "model": "tiny-zimage"})
    for route, pixels in drawn.items():
        assert np.array_equal(pixels, expected), route  # the same code runs: bit for bit
    assert psnr(drawn["generate"], png_pixels(base64.b64decode(plain.json()["images"][0]["b64_json"]))) < 35

    jobs = len(families_client.get("/v1/jobs").json()["data"])
    for model, lora, words in [
        ("tiny-zimage", "sd3-style", ("it was made for sd3 or flux1-dev or flux2-klein or qwen-image models, and "
                                      "zimage models take zimage LoRAs")),
        ("tiny-sd3", "z-style", "it was made for zimage models, and sd3 models take sd3 LoRAs"),
    ]:
        response = families_client.post("/generate", json={**settings, "model": model, "loras": [{"name": lora}]})
        assert response.status_code == 400 and words in response.text, response.text
    assert len(families_client.get("/v1/jobs").json()["data"]) == jobs  # refused before the queue
