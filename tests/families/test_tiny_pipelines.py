"""Each tiny family pipeline loads offline as its real pipeline class and draws deterministically."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harness.tiny_pipelines import BUILDERS

EXPECTED_CLASS = {
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "flux-schnell": "FluxPipeline",
    "chroma": "ChromaPipeline",
    "z-image": "ZImagePipeline",
    "flux2-klein": "Flux2KleinPipeline",
    "qwen-image": "QwenImagePipeline",
}
MAX_BYTES = 5_000_000


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _draw(pipe: object, seed: int) -> np.ndarray:
    import torch

    result = pipe(  # type: ignore[operator]
        # By keyword: FLUX.2's pipelines take `image` first, so a positional prompt is an image.
        prompt="a red circle on a blue square",
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    return result.images[0]


def test_every_family_has_an_expected_class() -> None:
    assert set(EXPECTED_CLASS) == set(BUILDERS)


@pytest.mark.parametrize("family", sorted(EXPECTED_CLASS))
def test_tiny_pipeline_loads_offline_and_draws(family: str, tiny_family: Callable[[str], Path]) -> None:
    from diffusers import DiffusionPipeline

    folder = tiny_family(family)
    size = _folder_bytes(folder)
    print(f"{family}: {size / 1e6:.2f} MB")  # shown with -s; the lead tracks these sizes
    assert size < MAX_BYTES

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert type(pipe).__name__ == EXPECTED_CLASS[family]
    pipe.set_progress_bar_config(disable=True)

    image = _draw(pipe, seed=1)
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all()
    assert image.std() > 0.01, "a constant image: the pipeline did not really draw"
    np.testing.assert_array_equal(image, _draw(pipe, seed=1))  # same seed, same pixels
    assert not np.array_equal(image, _draw(pipe, seed=2))  # the seed matters


def _weights_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*.safetensors"))
    }


@pytest.mark.parametrize("family", ["flux", "z-image"])
def test_building_twice_writes_the_same_weights(
    family: str, tmp_path: Path, tiny_family: Callable[[str], Path]
) -> None:
    again = BUILDERS[family](tmp_path / family)
    assert _weights_digest(again) == _weights_digest(tiny_family(family))


@pytest.mark.parametrize("family", sorted(EXPECTED_CLASS))
def test_transformer_loads_from_a_single_file_offline(family: str, tiny_family: Callable[[str], Path]) -> None:
    """A diffusers-named transformer file loads with `config=` the folder (no hub lookup):
    the path single-file and GGUF imports take. `subfolder=` is needed once `config=` is set."""
    import json

    import diffusers
    import torch

    folder = tiny_family(family)
    class_name = json.loads((folder / "model_index.json").read_text())["transformer"][1]
    model_class = getattr(diffusers, class_name)
    single = model_class.from_single_file(
        str(folder / "transformer" / "diffusion_pytorch_model.safetensors"),
        config=str(folder),
        subfolder="transformer",
        local_files_only=True,
    )
    reference = model_class.from_pretrained(folder, subfolder="transformer").state_dict()
    loaded = single.state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[key], reference[key]) for key in reference)
