"""How load_pipeline puts weights in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alice.engine.demo import save_untrained_demo
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline

SPEC = GenerationSpec(prompt="a red circle", seed=3, width=64, height=64, steps=2, scheduler="ddim")


def test_a_cpu_model_is_read_into_memory_not_mapped_from_its_files(tmp_path: Path) -> None:
    """Mapped weights would be file pages the kernel may drop while the model idles (and read
    back from disk during the next generation); read in, the loaded model no longer depends on
    its files at all, which shows when they are overwritten in place."""
    save_untrained_demo(tmp_path, seed=5)  # float32 files: loading them needs no conversion copy
    pipe = load_pipeline(tmp_path, choose_placement("cpu"))
    before = np.asarray(run_generation(pipe, pipe.scheduler.config, SPEC).images[0])
    weights = sorted(tmp_path.rglob("*.safetensors"))
    assert weights
    for path in weights:
        with open(path, "r+b") as file:
            file.write(bytes(path.stat().st_size))  # zeros over every byte, same length
    after = np.asarray(run_generation(pipe, pipe.scheduler.config, SPEC).images[0])
    assert np.array_equal(before, after)


def test_vae_tiling_above_a_side_leaves_smaller_images_whole(tmp_path: Path) -> None:
    """The preset's tiling threshold: images up to it decode exactly as without tiling; larger
    ones in tiles of that side."""
    from alice.engine.device import MemoryPreset

    save_untrained_demo(tmp_path, seed=5)
    placement = choose_placement("cpu")
    whole = load_pipeline(tmp_path, placement, preset=MemoryPreset("sd15", "none", None, False, False))
    tiled = load_pipeline(tmp_path, placement, preset=MemoryPreset("sd15", "none", 64, False, False))
    assert not whole.vae.use_tiling
    assert tiled.vae.use_tiling and (tiled.vae.tile_sample_min_size, tiled.vae.tile_latent_min_size) == (64, 8)
    same = [np.asarray(run_generation(p, p.scheduler.config, SPEC).images[0]) for p in (whole, tiled)]
    assert np.array_equal(*same)
    larger = GenerationSpec(prompt="a red circle", seed=3, width=128, height=96, steps=2, scheduler="ddim")
    differs = [np.asarray(run_generation(p, p.scheduler.config, larger).images[0]) for p in (whole, tiled)]
    assert not np.array_equal(*differs)  # decoded in overlapping tiles, blended
