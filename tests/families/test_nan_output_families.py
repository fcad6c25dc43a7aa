"""A transformer family's NaN is caught as the UNet's is (tests/unit/test_nan_output.py): the
check wraps the VAE's decode every family's pipeline ends with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from alice.engine.families import FAMILIES
from alice.engine.finite import NonFiniteOutput
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline
from tests.unit.test_nan_output import nan_from, overflows_below_fp32


@pytest.fixture(scope="module")
def half_flux(tiny_family: Callable[[str], Path]) -> Any:
    return load_pipeline(tiny_family("flux"), choose_placement("cpu", "bfloat16"))


FLUX_SPEC = GenerationSpec(prompt="a red circle", seed=3, width=64, height=64, steps=2,
                           guidance_scale=FAMILIES["flux1-dev"].default_guidance,
                           scheduler=FAMILIES["flux1-dev"].default_scheduler)


def test_a_transformer_familys_nan_is_caught_too(half_flux) -> None:
    config = half_flux.scheduler.config
    with nan_from(half_flux.transformer), pytest.raises(NonFiniteOutput) as failure:
        run_generation(half_flux, config, FLUX_SPEC)
    assert failure.value.part == "denoiser" and failure.value.dtype == "bfloat16"
    with nan_from(half_flux.vae.decoder.conv_out, overflows_below_fp32) as poisoned:
        image = np.asarray(run_generation(half_flux, config, FLUX_SPEC).images[0])
    assert len(poisoned) == 1 and np.isfinite(image).all() and half_flux.vae.dtype == torch.bfloat16
