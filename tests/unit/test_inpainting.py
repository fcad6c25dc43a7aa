"""Inpainting in the engine: the masks' pixels, the inpaint pipeline over the loaded modules,
and a dedicated inpainting checkpoint (a UNet of 9 input channels) imported, marked and used."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alice.engine.generate import run_generation
from alice.engine.masks import FEATHER_PX, blend_back, feathered, fill_transparent, mask_from_alpha
from alice.engine.pipelines import LoadedPipeline, choose_placement, load_pipeline
from alice.engine.spec import GenerationSpec

SPEC = GenerationSpec(prompt="a boat", seed=3, width=64, height=64, steps=3, scheduler="ddim",
                      init_image="in", mask_image="mask", strength=1.0)


def noise_image(size: tuple[int, int] = (64, 64), seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def square_mask(size: int = 64, box: tuple[int, int, int, int] = (16, 16, 48, 48)) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, box)
    return mask


def test_the_feathered_mask_keeps_every_kept_pixel_and_ramps_inside_the_edge():
    weight = feathered(square_mask())
    inside = np.zeros((64, 64), bool)
    inside[16:48, 16:48] = True
    assert (weight[~inside] == 0).all()  # not a bit of the drawn image where the client keeps the original
    assert weight[32, 32] == 1.0  # deep inside: the drawn image alone
    ramp = weight[32, 16 : 16 + FEATHER_PX + 2]
    assert 0 < ramp[0] < 0.5 and (np.diff(ramp) >= 0).all() and ramp[-1] == 1.0  # soft over the radius
    original, drawn = noise_image(seed=1), noise_image(seed=2)
    blended = np.asarray(blend_back(original, drawn, square_mask()))
    assert (blended[~inside] == np.asarray(original)[~inside]).all()
    assert (blended[24:40, 24:40] == np.asarray(drawn)[24:40, 24:40]).all()


def test_transparent_pixels_are_the_mask_and_are_filled_from_their_edges():
    rgba = Image.new("RGBA", (32, 32), (200, 40, 40, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 8, 32))  # a transparent strip on the left, black under it
    mask = mask_from_alpha(rgba)
    assert mask is not None and np.asarray(mask)[:, :8].min() == 255 and np.asarray(mask)[:, 8:].max() == 0
    assert mask_from_alpha(Image.new("RGBA", (8, 8), (1, 2, 3, 255))) is None
    assert mask_from_alpha(Image.new("RGB", (8, 8))) is None
    filled = np.asarray(fill_transparent(rgba, seed=5)).astype(int)
    assert (filled[:, 8:] == (200, 40, 40)).all()  # the visible pixels as they were
    strip = filled[:, :8]
    assert abs(strip[..., 0].mean() - 200) < 15 and abs(strip[..., 1].mean() - 40) < 15  # the edge's colour...
    assert strip.std() > 5  # ...with noise, not a flat smear
    assert (filled == np.asarray(fill_transparent(rgba, seed=5))).all()  # repeatable from the seed


def test_the_inpaint_pipeline_shares_the_loaded_modules_and_keeps_the_unmasked_area(demo_pipeline):
    pipe, config = demo_pipeline
    loaded = LoadedPipeline("demo", pipe, config, 0.0, 0)
    inpaint = loaded.inpaint
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline" and loaded.inpaint is inpaint
    for name, module in pipe.components.items():  # the same objects, so the same tensors: no second copy
        if isinstance(module, __import__("torch").nn.Module):
            assert inpaint.components[name] is module, name
    ours = {p.data_ptr() for p in pipe.unet.parameters()}
    assert {p.data_ptr() for p in inpaint.unet.parameters()} == ours
    original, mask = noise_image(), square_mask()
    drawn = np.asarray(run_generation(inpaint, config, SPEC, init_image=original, mask=mask).images[0]).astype(int)
    kept = np.asarray(mask) == 0
    assert (drawn[kept] == np.asarray(original).astype(int)[kept]).all()
    assert np.abs(drawn[~kept] - np.asarray(original).astype(int)[~kept]).mean() > 20  # redrawn


def nine_channel_copy(demo: Path, folder: Path) -> Path:
    """The demo model as an inpainting checkpoint: its UNet with 9 input channels (latents,
    mask, masked image's latents), random weights; everything else the demo's."""
    from diffusers import UNet2DConditionModel

    shutil.copytree(demo, folder)
    unet = UNet2DConditionModel.from_pretrained(demo / "unet")
    config = {**unet.config, "in_channels": 9}
    nine = UNet2DConditionModel.from_config(config)
    shutil.rmtree(folder / "unet")
    nine.save_pretrained(folder / "unet")
    return folder


def test_a_nine_channel_inpainting_checkpoint_is_imported_marked_and_draws_masked_edits(
    bentoml_home: Path, tmp_path: Path,
):
    from alice.cli import app
    from alice.engine.demo import save_demo_pipeline
    from alice.models import store as model_store

    demo = tmp_path / "demo"
    save_demo_pipeline(demo)
    folder = nine_channel_copy(demo, tmp_path / "demo-inpainting")
    runner = CliRunner()
    imported = runner.invoke(app, ["models", "import", str(folder), "--name", "demo-inpainting"])
    assert imported.exit_code == 0, imported.output
    listed = runner.invoke(app, ["models", "list"]).stdout
    assert "sd15 inpainting" in listed, listed
    stored = model_store.get_model("demo-inpainting")
    assert stored.family == "sd15" and stored.inpainting
    pipe = load_pipeline(stored.path, choose_placement("cpu"))
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline" and pipe.unet.config.in_channels == 9
    loaded = LoadedPipeline("demo-inpainting", pipe, pipe.scheduler.config, 0.0, 0)
    assert loaded.is_inpainting_checkpoint and loaded.inpaint is pipe  # its own pipeline, not a from_pipe
    original, mask = noise_image(), square_mask()
    drawn = np.asarray(run_generation(loaded.inpaint, pipe.scheduler.config, SPEC, init_image=original,
                                      mask=mask).images[0]).astype(int)
    kept = np.asarray(mask) == 0
    assert (drawn[kept] == np.asarray(original).astype(int)[kept]).all()


@pytest.mark.parametrize("family", ["chroma"])
def test_a_family_without_a_working_inpaint_pipeline_is_refused_by_name(family):
    from alice.engine.families import FAMILIES
    from alice.protocol.generation import GenerationSettings, InvalidRequest

    settings = GenerationSettings(prompt="x", input_image="AAAA", mask="AAAA", width=64, height=64)
    with pytest.raises(InvalidRequest) as refused:
        settings.to_spec(native_size=64, max_pixels=1 << 20, max_images=4, family=FAMILIES[family])
    assert refused.value.param == "mask" and f"{family} models have no inpainting pipeline" in str(refused.value)
