"""Live previews in the engine: the latent-to-RGB maps, when previews are made, and that asking
for them changes no bit of the image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from alice.engine import previews
from alice.engine.generate import BatchEntry, run_batch
from alice.engine.spec import GenerationSpec


def test_previews_are_spread_evenly_over_the_steps():
    assert previews.preview_steps(0, 25) == frozenset()
    assert previews.preview_steps(3, 25) == {6, 12, 19}
    assert previews.preview_steps(2, 4) == {1, 3}
    assert previews.preview_steps(3, 4) == {1, 2, 3}
    assert previews.preview_steps(5, 3) == {1, 2, 3}  # fewer steps than asked: one a step
    for asked in range(1, 11):
        for total in range(1, 40):
            assert len(previews.preview_steps(asked, total)) == min(asked, total)


def test_every_family_has_published_factors_of_its_vae_or_says_it_has_none():
    from alice.engine.families import FAMILIES

    for name, latent_format in previews.LATENT_FORMATS.items():
        assert name in FAMILIES
        assert len(latent_format.factors) in (4, 16) and all(len(row) == 3 for row in latent_format.factors)
    assert set(FAMILIES) - set(previews.LATENT_FORMATS) == {"flux2-klein", "qwen-image"}


def test_the_sd15_factors_map_latent_channels_to_their_known_colours():
    # SD 1.5's fourth latent channel carries blue-yellow (ComfyUI's factors): negative is blue.
    latents = torch.zeros(1, 4, 2, 2)
    latents[0, 3] = -2.0
    [image] = previews.LinearPreview.of_format(previews.SD15_FORMAT).images(latents)
    red, green, blue = image.getpixel((0, 0))
    assert image.size == (2, 2) and blue > green > red


def _correlation(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b.resize(a.size, Image.Resampling.BOX), dtype=np.float64).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def test_a_preview_of_the_final_latents_resembles_the_image_and_changes_no_bit(demo_pipeline):
    """The demo's VAE is its own, so its map is fitted (`fit_linear_preview`). Bound: the
    last-step preview's pixels correlate with its own decoded image's (box-scaled to the 8x8
    latents) at 0.4 or more, and on average 0.3 more than with the other drawings' images
    (measured: 0.49-0.79 own, -0.58-0.66 others)."""
    pipe, config = demo_pipeline
    drawn = []
    for seed, prompt in [(0, "a red circle on a blue background"), (1, "a green square on a yellow background"),
                         (2, "a blue triangle on a white background")]:
        spec = GenerationSpec(prompt=prompt, seed=seed, width=64, height=64, steps=2)
        made: list[previews.Preview] = []
        [watched] = run_batch(pipe, config, [BatchEntry(spec, previews=2, on_preview=made.append)])
        assert [(p.index, p.step, p.total_steps) for p in made] == [(0, 1, 2), (1, 2, 2)]
        assert made[-1].image.size == (8, 8)  # the latents' resolution
        drawn.append((spec, made[-1].image, watched.images[0]))
    [alone] = run_batch(pipe, config, [BatchEntry(drawn[0][0])])
    assert np.array_equal(np.asarray(alone.images[0]), np.asarray(drawn[0][2]))  # not one bit moved
    own = [_correlation(preview, image) for _, preview, image in drawn]
    others = [_correlation(preview, image) for i, (_, preview, _) in enumerate(drawn)
              for j, (_, _, image) in enumerate(drawn) if i != j]
    assert min(own) >= 0.4, own
    assert np.mean(own) >= np.mean(others) + 0.3, (own, others)


def test_a_tiny_autoencoder_previews_at_the_full_size(demo_pipeline):
    from harness.tiny_pipelines import tiny_autoencoder

    pipe, _ = demo_pipeline
    tiny = tiny_autoencoder()  # random weights, built offline: the shapes are the point
    setattr(pipe, previews.TINY_AUTOENCODER_ATTRIBUTE, tiny)
    try:
        decoder = previews.decoder_for(pipe, "sd15")
    finally:
        delattr(pipe, previews.TINY_AUTOENCODER_ATTRIBUTE)
    assert isinstance(decoder, previews.TinyAutoencoderPreview)
    with torch.inference_mode():
        images = decoder.images(torch.randn(2, 4, 8, 8))
    assert [image.size for image in images] == [(64, 64), (64, 64)]  # 8x the latents, as the VAE


def test_families_without_factors_get_no_preview():
    class Pipe:  # what decoder_for reads of a pipeline: no tiny autoencoder, and then the family
        vae = None

    assert previews.decoder_for(Pipe(), "qwen-image") is None


def test_flux_previews_its_unpacked_latents(tmp_path):
    from harness.tiny_pipelines import build_tiny_flux
    from alice.engine.families import FLUX1_DEV
    from alice.engine.pipelines import choose_placement, load_pipeline

    pipe = load_pipeline(build_tiny_flux(tmp_path), choose_placement("cpu"))
    made: list[previews.Preview] = []
    spec = GenerationSpec(prompt="a fox", seed=1, width=64, height=64, steps=2, guidance_scale=3.5,
                          scheduler="flow-euler")
    run_batch(pipe, pipe.scheduler.config, [BatchEntry(spec, previews=1, on_preview=made.append)], family=FLUX1_DEV)
    assert [p.image.size for p in made] == [(8, 8)]  # packed (B, 16, 64) -> (B, 16, 8, 8)
