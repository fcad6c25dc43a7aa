"""A1111's "Hires resize" as its processing.py computes it: the size the first pass is upscaled
to (covering the target), and the latents kept of it (the middle, the odd one off the right and
bottom), checked on numbers and on a latent tensor whose values say where they came from."""

from __future__ import annotations

import torch

from alice.engine.hires import upscaled
from alice.engine.spec import GenerationSpec, hires_resize


def test_the_upscaled_size_covers_the_target_and_the_kept_size_is_the_target():
    assert hires_resize(512, 768, 1024, 1024) == ((1024, 1536), (1024, 1024))  # taller: rows cut
    assert hires_resize(768, 512, 1024, 1024) == ((1536, 1024), (1024, 1024))  # wider: columns cut
    assert hires_resize(512, 768, 768, 1152) == ((768, 1152), (768, 1152))  # the same aspect: a scale
    assert hires_resize(512, 768, 1024, None) == hires_resize(512, 768, None, 1536) == ((1024, 1536), (1024, 1536))
    # An upscaled side off the grid of 8: A1111's latents round it down, and so does the kept size.
    assert hires_resize(520, 512, 1000, 1000) == ((1015, 1000), (1000, 1000))
    assert hires_resize(520, 512, 1000, None) == ((1000, 984), (1000, 984))


def test_the_latents_kept_are_the_middle_with_the_odd_row_off_the_bottom():
    spec = GenerationSpec(prompt="x", seed=0, width=64, height=64, hires_scale=2, hires_width=128, hires_height=104)
    assert spec.upscaled_size == (128, 128) and spec.final_size == (128, 104)
    rows = torch.arange(8, dtype=torch.float32).view(1, 1, 8, 1).expand(1, 4, 8, 8).contiguous()
    kept = upscaled(rows, spec)  # 16 latent rows upscaled from 8, 13 kept: 1 cut at the top, 2 at the bottom
    whole = torch.nn.functional.interpolate(rows, size=(16, 16), mode="bilinear", antialias=False)
    assert kept.shape == (1, 4, 13, 16) and torch.equal(kept, whole[:, :, 1:14])
