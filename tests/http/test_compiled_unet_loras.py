"""LoRAs on a torch.compile'd UNet (ALICE_COMPILE_UNET=true; inductor's C++ backend on the CPU):
a plain request after any LoRA request, even one whose adapter failed to load half-way, draws the
plain model's image bit for bit, and changing LoRAs or scales does not recompile the UNet.

Compiling the demo UNet takes a minute or more here, so the whole story runs on one server and
one compile, in one test.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from harness.lora import write_demo_lora
from tests.http.conftest import start_client

SMALL = {"width": 64, "height": 64, "steps": 4, "scheduler": "ddim", "seed": 8}


def write_lora_that_fails_half_way(folder):
    """A demo LoRA whose last layer's weights have the wrong shape: it imports (its keys are
    LoRA keys), and peft injects every adapter layer before the shapes fail to load."""
    from safetensors.torch import load_file, save_file

    path = write_demo_lora(folder, seed=2)
    weights = load_file(str(path))
    last_down = sorted(key for key in weights if "lora_A" in key or "lora.down" in key)[-1]
    weights[last_down] = weights[last_down][:, :7].contiguous()
    save_file(weights, str(path))
    return path


@pytest.fixture(scope="module")
def compiled_client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compiled")
    for client in start_client(tmp, ALICE_COMPILE_UNET="true"):
        from alice.models import checkpoints

        checkpoints.import_lora_file(write_demo_lora(tmp / "inky", seed=0), "inky")
        checkpoints.import_lora_file(write_demo_lora(tmp / "blotchy", seed=1), "blotchy")
        checkpoints.import_lora_file(write_lora_that_fails_half_way(tmp / "broken"), "broken")
        yield client


def draw(client, prompt="a boat", **extra) -> bytes:
    response = client.post("/generate", json={"prompt": prompt, **SMALL, **extra})
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]["b64_json"]))).tobytes()


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_loras_on_a_compiled_unet_leave_the_plain_model_bit_for_bit_without_recompiling(compiled_client):
    plain = draw(compiled_client)  # compiles the UNet
    graphs = compiled_graphs()
    assert graphs >= 1  # it did compile

    inky = draw(compiled_client, loras=[{"name": "inky", "scale": 1.0}])
    assert inky != plain
    assert draw(compiled_client) == plain
    blotchy = draw(compiled_client, loras=[{"name": "blotchy", "scale": 0.5}])
    assert blotchy not in (plain, inky)
    both = draw(compiled_client, prompt="a boat <lora:inky:1.0>", loras=[{"name": "blotchy", "scale": 0.3}])
    assert both not in (plain, inky, blotchy)
    assert draw(compiled_client, prompt="a boat <lora:inky:1.0>") == inky  # the same LoRA and scale again
    assert draw(compiled_client) == plain

    # An adapter that fails after peft injected its layers (and after a good one loaded) fails
    # that request only: nothing of either stays in the model.
    response = compiled_client.post(
        "/generate", json={"prompt": "a boat", **SMALL, "loras": [{"name": "inky"}, {"name": "broken"}]}
    )
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["type"] == "lora_failed" and "LoRA 'broken'" in response.json()["error"]
    assert draw(compiled_client) == plain
    assert draw(compiled_client, loras=[{"name": "inky", "scale": 1.0}]) == inky

    # Five LoRA changes (names, scales, a mix, a failure) and back: no recompile.
    assert compiled_graphs() == graphs
