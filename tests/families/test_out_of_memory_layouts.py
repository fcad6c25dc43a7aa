"""A transformer family out of memory: the tiny FLUX pipeline, planned for a large card (faked)
and run on the CPU, runs out of memory while its text encoders are on the "card"; it is drawn
again with them group-offloaded (presets.LAYOUTS' next step, diffusers' hooks with the CPU as
the onload device), the same pixels, and goes back in place for a smaller image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from alice.engine.generate import BatchEntry
from tests.families.test_engine_families import spec_for
from tests.unit.test_out_of_memory_layouts import fake_card_engine, out_of_memory_unless


def text_streamed(pipe) -> Callable[[torch.nn.Module], bool]:
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return lambda module: _is_group_offload_enabled(pipe.text_encoder_2)


def test_a_transformer_family_is_drawn_again_with_its_text_encoders_streamed(tiny_family: Callable[[str], Path]):
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    engine = fake_card_engine(tiny_family)
    spec = spec_for("flux1-dev")

    def draw(size: int = 64) -> np.ndarray:
        entry = BatchEntry(spec.__class__(**{**spec.__dict__, "width": size, "height": size}))
        [out] = engine.generate("flux", [entry], loras=[], max_images=1, should_stop=lambda: None)
        return np.asarray(out.images[0])

    planned = draw()
    loaded = engine.get("flux")
    assert set(dict(loaded.preset.parts).values()) == {"gpu"}
    with out_of_memory_unless(text_streamed(loaded.pipe), "FluxTransformer2DModel") as refused:
        first, second = draw(), draw()
    assert len(refused) == 1
    np.testing.assert_array_equal(first, planned)
    np.testing.assert_array_equal(second, planned)
    assert dict(loaded.current_layout.parts) == {
        "transformer": "gpu", "text_encoder": "group", "text_encoder_2": "group", "vae": "gpu"
    }
    assert [kept["layout"] for kept in engine.kept_layouts()["flux"]] == ["text-offloaded"]
    draw(48)  # smaller: the group offload hooks come off in place
    assert not _is_group_offload_enabled(loaded.pipe.text_encoder_2)
    np.testing.assert_array_equal(draw(), planned)  # and back on for 64 px
    assert _is_group_offload_enabled(loaded.pipe.text_encoder_2)
