"""FLUX.1 LoRAs through the real service: imported as `--lora` files and labelled flux1-dev from
their tensor names (diffusers/PEFT and kohya), drawn on FLUX.1 dev through `/generate` and SAM's
chat (a `<lora:...>` tag) as bare diffusers draws with the LoRA loaded, the plain model again
afterwards; an SD LoRA on FLUX.1 and a FLUX.1 LoRA on the SD demo are refused (400) before the queue."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from harness.lora import write_demo_lora
from tests.families.test_flux_loras import bare_draw
from tests.families.tiny_loras import DOUBLE_BLOCKS_ONLY, flux_lora_layers, write_diffusers_lora, write_kohya_lora
from harness.tiny_pipelines import build_tiny_flux
from tests.http.conftest import start_client
from tests.http.test_families import png_pixels, psnr

DRAW = {"prompt": "a red circle on a blue square", "seed": 7, "width": 64, "height": 64, "steps": 2,
        "scheduler": "flow-euler", "guidance_scale": 3.5, "model": "tiny-flux"}


@pytest.fixture(scope="module")
def flux_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("flux-loras")
    folder = build_tiny_flux(tmp / "tiny-flux")
    files = {
        "flux-style": write_diffusers_lora(flux_lora_layers(folder), tmp / "loras" / "style.safetensors"),
        "flux-kohya": write_kohya_lora(flux_lora_layers(folder, seed=1, targets=DOUBLE_BLOCKS_ONLY),
                                       tmp / "loras" / "kohya.safetensors"),
        "inky": write_demo_lora(tmp / "loras" / "sd"),
    }
    for client in start_client(tmp / "server"):
        from alice.models import checkpoints

        checkpoints.import_pipeline_folder(folder, "tiny-flux")
        client.families = {name: checkpoints.import_lora_file(path, name).family  # type: ignore[attr-defined]
                           for name, path in files.items()}
        client.folder, client.files = folder, files  # type: ignore[attr-defined]
        yield client


def generate(client: Any, **extra: Any) -> np.ndarray:
    response = client.post("/generate", json={**DRAW, **extra})
    assert response.status_code == 200, response.text
    return png_pixels(base64.b64decode(response.json()["images"][0]["b64_json"]))


def test_imported_loras_are_labelled_by_their_tensor_names(flux_client: Any) -> None:
    assert flux_client.families == {"flux-style": "flux1-dev", "flux-kohya": "flux1-dev,flux2-klein",
                                     "inky": "sd15"}
    model = flux_client.get("/v1/models/sd/tiny-flux").json()
    assert model["loras"] is True


@pytest.mark.parametrize(("name", "scale"), [("flux-style", 0.7), ("flux-kohya", 1.0)])
def test_a_flux_lora_draws_as_bare_diffusers_with_it_on_generate_and_chat(flux_client: Any, name: str,
                                                                          scale: float) -> None:
    plain = generate(flux_client)
    expected = bare_draw(flux_client.folder, "flux", flux_client.files[name], scale)
    drawn = {"generate": generate(flux_client, loras=[{"name": name, "scale": scale}])}
    chat = flux_client.post("/v1/chat/completions", json={
        "model": "sd/tiny-flux", "messages": [{"role": "user", "content": f"{DRAW['prompt']} <lora:{name}:{scale}>"}],
        "metadata": {key: value for key, value in DRAW.items() if key not in ("prompt", "model")},
    })
    assert chat.status_code == 200, chat.text
    [url] = chat.json()["choices"][0]["message"]["image_urls"]
    drawn["chat"] = png_pixels(flux_client.get(url.removeprefix("http://testserver")).content)
    for route, pixels in drawn.items():
        print(f"{name} x{scale} via {route}: PSNR {psnr(pixels, expected):.1f} dB")  # shown with -s
        assert psnr(pixels, expected) >= 40, route
        assert psnr(pixels, plain) < 35, route  # the LoRA was on
    assert np.array_equal(generate(flux_client), plain)  # and off again for the next job
    assert np.array_equal(generate(flux_client, loras=[{"name": name, "scale": 0}]), plain)


@pytest.mark.parametrize(("model", "lora", "words"), [
    ("tiny-flux", "inky", "LoRA 'inky' does not apply to model 'tiny-flux': it was made for Stable Diffusion "
                          "(UNet) models, and flux1-dev models take flux1-dev LoRAs"),
    ("alice-demo", "flux-style", "LoRA 'flux-style' does not apply to model 'alice-demo': it was made for "
                                 "flux1-dev models, and sd15 models take Stable Diffusion (UNet) LoRAs"),
])
def test_a_lora_of_another_family_is_a_400_before_the_queue(flux_client: Any, model: str, lora: str,
                                                            words: str) -> None:
    jobs = len(flux_client.get("/v1/jobs").json()["data"])
    settings = {**DRAW, "model": model, **({} if model == "tiny-flux" else {"scheduler": "ddim"})}
    response = flux_client.post("/generate", json={**settings, "loras": [{"name": lora}]})
    assert response.status_code == 400 and words in response.text, response.text
    chat = flux_client.post("/v1/chat/completions", json={
        "model": "sd/" + model, "messages": [{"role": "user", "content": f"a cat <lora:{lora}:1>"}],
        "metadata": {key: value for key, value in settings.items() if key not in ("prompt", "model")},
    })
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "loras", chat.text
    assert words in chat.json()["error"]["message"]
    assert len(flux_client.get("/v1/jobs").json()["data"]) == jobs  # refused before the queue
