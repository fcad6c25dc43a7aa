"""A torch.compile'd UNet (ALICE_COMPILE_UNET=true; inductor's C++ backend on the CPU), on one
server: it compiles in the warm-up, before `/readyz`, for the demo's native size at every batch;
a request of another size runs eager without recompiling; and with LoRAs, a plain request after
any LoRA request, even one whose adapter failed to load half-way, draws the plain model's image
bit for bit, and changing LoRAs or scales does not recompile the UNet.

Compiling the demo UNet takes a minute or more here, so the whole story runs on one server and
one compile. ALICE_MAX_BATCH=4 keeps it one graph (the warm-up's largest call is 8 UNet rows:
the CPU's convolutions change backend at 16, which would take a second graph).
"""

from __future__ import annotations

import base64
import io
import time

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
    for client in start_client(tmp, ALICE_COMPILE_UNET="true", ALICE_MAX_BATCH="4"):
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


def refuse_recompiles() -> None:
    """Make the server's compiled UNet raise where it would recompile, instead of running that
    call eager: a request that needed a recompile then fails, where it would only run slower."""
    from alice.http.app import http_app

    pipe = http_app.state.runtime.pipelines.get("alice-demo").pipe
    pipe.unet._compiled_call_impl.stance = "fail_on_recompile"


def compile_status(client) -> dict:
    return client.get("/health").json()["unet_compile"]["models"]["alice-demo"]


def counted(metric: str, **labels: str) -> float:
    """A Prometheus counter's value in this process (the server runs in it)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(metric, labels) or 0.0


def compiles_counted(when: str) -> float:
    return counted("alice_unet_compiles_total", model="alice-demo", when=when)


def test_the_unet_compiles_before_ready_and_a_request_of_another_size_runs_eager(compiled_client):
    # Ready (start_client waited for /readyz), and before any request the UNet is compiled, for
    # the demo's 64 px at 1 to 4 images a call, in one graph, counted on /health and Prometheus.
    status = compile_status(compiled_client)
    assert {key: status[key] for key in ("width", "height", "max_images", "graphs")} == {
        "width": 64, "height": 64, "max_images": 4, "graphs": 1}
    assert status["compile_seconds"] > 0 and status["compiled_calls"] == status["eager_calls"] == 0
    assert compiles_counted("warm_up") == 1 and compiled_graphs() >= 1
    graphs = compiled_graphs()

    refuse_recompiles()  # for the rest of the module: what runs compiled runs the warm-up's graph
    draw(compiled_client)  # the default size: compiled, at once
    # 3 images (6 UNet rows), and a sampler whose timesteps are float32 where the warm-up's
    # (DPM++) are int64: the same graph.
    for extra in ({"num_images": 3}, {"num_images": 2, "scheduler": "euler"}):
        response = compiled_client.post("/generate", json={"prompt": "a boat", **SMALL, **extra})
        assert response.status_code == 200 and len(response.json()["images"]) == extra["num_images"], response.text
    started = time.perf_counter()
    draw(compiled_client, width=128, height=128)  # another size: eager, no 75 s recompile
    other_size = time.perf_counter() - started
    draw(compiled_client, guidance_scale=1.0)  # one UNet row: eager too (dynamo specialises 1)
    status = compile_status(compiled_client)
    steps = SMALL["steps"]
    assert (status["compiled_calls"], status["eager_calls"]) == (3 * steps, 2 * steps)
    assert compiled_graphs() == graphs and status["recompiles"] == 0 and compiles_counted("request") == 0
    assert counted("alice_unet_eager_calls_total", model="alice-demo") == 2 * steps
    assert other_size < status["compile_seconds"]  # far less, unless the machine stalled meanwhile


def test_loras_on_a_compiled_unet_leave_the_plain_model_bit_for_bit_without_recompiling(compiled_client):
    refuse_recompiles()
    plain = draw(compiled_client)
    graphs = compiled_graphs()
    assert graphs >= 1  # compiled in the warm-up

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
