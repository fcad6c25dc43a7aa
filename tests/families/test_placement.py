"""apply_preset on the tiny family pipelines, on the CPU: group offload with the CPU as the onload
device runs every hook diffusers installs, and must not change a pixel; fp8 storage keeps the text
encoders' Linear weights in one byte each and still draws."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from alice.engine.device import MemoryPreset
from alice.engine.placement import apply_preset


def _load(folder: Path):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _draw(pipe) -> np.ndarray:
    import torch

    return pipe(
        prompt="a red circle on a blue square", height=64, width=64, num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(1), output_type="np",
    ).images[0]


def _preset(pipe, transformer: str, text: str, fp8: bool = False) -> MemoryPreset:
    encoders = [name for name in pipe.components if name.startswith("text_encoder") and pipe.components[name]]
    parts = {"transformer": transformer, **dict.fromkeys(encoders, text), "vae": "gpu"}
    return MemoryPreset(
        family="tiny", cpu_offload="group", vae_tiling_above=None, attention_slicing=False, channels_last=False,
        parts=tuple(parts.items()), fp8_storage=tuple(encoders) if fp8 else (), dtype="float32",
    )


@pytest.mark.parametrize("family", ["flux", "sd3", "z-image", "qwen-image"])
@pytest.mark.parametrize(("transformer", "text"), [("group", "group"), ("gpu", "group")])
def test_group_offload_draws_the_same_image(family, transformer, text, tiny_family: Callable[[str], Path]):
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    folder = tiny_family(family)
    expected = _draw(_load(folder))
    pipe = _load(folder)
    preset = _preset(pipe, transformer, text)
    apply_preset(pipe, preset, "cpu")
    offloaded = {name for name, module in pipe.components.items() if getattr(module, "parameters", None)
                 and _is_group_offload_enabled(module)}
    assert offloaded == {name for name, where in preset.parts if where == "group"}
    np.testing.assert_array_equal(_draw(pipe), expected)


def test_fp8_text_encoders_are_stored_in_one_byte_and_still_draw(tiny_family: Callable[[str], Path]):
    import torch

    pipe = _load(tiny_family("flux"))
    apply_preset(pipe, _preset(pipe, "gpu", "gpu", fp8=True), "cpu")
    t5 = pipe.text_encoder_2
    linears = [m for m in t5.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    image = _draw(pipe)
    assert np.isfinite(image).all() and image.std() > 0.01


def test_vae_tiling_is_set_from_the_preset(tiny_family: Callable[[str], Path]):
    pipe = _load(tiny_family("flux"))
    preset = MemoryPreset(
        family="tiny", cpu_offload="none", vae_tiling_above=512, attention_slicing=False, channels_last=False,
        parts=(("transformer", "cpu"), ("vae", "cpu")), dtype="float32",
    )
    apply_preset(pipe, preset, "cpu")
    assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_size == 512
