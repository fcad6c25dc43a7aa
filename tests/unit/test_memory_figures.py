"""device.py's memory constants are what bench.memory measured: the checked-in figures file gives
exactly them, its weights are this repo's configs', and the measurement itself counts right."""

from __future__ import annotations

import json

import pytest
import torch

from alice.engine import device
from bench import memory


@pytest.fixture(scope="module")
def figures() -> dict:
    return json.loads(memory.FIGURES.read_text(encoding="utf-8"))


def test_device_constants_are_derived_from_the_checked_in_figures(figures):
    derived = memory.derive_constants(figures)
    assert figures["dtype"] == "float32" and not figures["tiny"] and set(figures["families"]) == set(device.FAMILIES)
    assert device.MARGIN == memory.MARGIN
    assert device.WEIGHTS_16BIT == derived["WEIGHTS_16BIT"]
    assert device.UNET_16BIT == derived["UNET_16BIT"]
    assert device.VAE_16BIT == derived["VAE_16BIT"]
    assert device.SEQUENTIAL_LAYER == derived["SEQUENTIAL_LAYER"]
    assert {f: (w.fixed, w.per_megapixel) for f, w in device.UNET_WORKING.items()} == derived["UNET_WORKING"]
    assert (device.VAE_WORKING.fixed, device.VAE_WORKING.per_megapixel) == derived["VAE_WORKING"]


def test_the_figures_weights_are_those_of_the_shipped_configs(figures):
    """Built on the meta device: a config changed since the figures were written fails here."""
    assert memory.weight_figures("sd15") == figures["families"]["sd15"]["weights"]


def test_the_cpu_peak_is_the_most_the_allocator_held_at_once():
    def call():
        first = torch.empty(1_000_000, dtype=torch.uint8)
        second = torch.empty(3_000_000, dtype=torch.uint8)
        del first
        third = torch.empty(2_000_000, dtype=torch.uint8)
        return second, third

    assert memory.cpu_peak(call) == 5_000_000  # 1 + 3, then 3 + 2: never 6 at once


def test_views_and_weights_are_not_counted_as_allocated():
    weight, batch = torch.randn(1000, 1000), torch.randn(10, 1000)
    assert memory.cpu_peak(lambda: torch.nn.functional.linear(batch, weight)) == 10 * 1000 * 4  # its output only
    assert memory.cpu_peak(lambda: weight.t().reshape(-1)[:10]) == 1000 * 1000 * 4  # t() is a view, reshape copies


def test_the_fit_recovers_a_line():
    line = memory.fit([(256 * 256, 100 + 64), (512 * 512, 100 + 256), (1024 * 1024, 100 + 1024)])
    assert line["fixed"] == pytest.approx(100) and line["per_megapixel"] == pytest.approx(1024)


def test_a_cpu_run_reproduces_the_vae_figure_at_a_small_size(figures):
    """The shipped SD 1.5 VAE (random weights) decoding 64 px now: within 10% of the figures'
    fit there (measured at 256-512 px: the decoder's maps are linear in the pixels)."""
    vae = memory.build("sd15", "vae", "cpu", torch.float32)
    measured = memory.measure_part(vae, "vae", 64, torch.device("cpu"))["allocated"]
    line = figures["families"]["sd15"]["vae"]["fit_allocated"]
    expected = line["fixed"] + line["per_megapixel"] * 64 * 64 / 1024**2
    assert measured == pytest.approx(expected, rel=0.10)


def test_the_script_runs_end_to_end_on_tiny_models():
    figures = memory.measure(("sd15",), (64, 96), tiny=True, log=lambda line: None)
    entry = figures["families"]["sd15"]
    for part in ("unet", "vae"):
        points = entry[part]["points"]
        assert 0 < points["64"]["allocated"] < points["96"]["allocated"]
        assert entry[part]["fit_allocated_16bit"]["per_megapixel"] == pytest.approx(
            entry[part]["fit_allocated"]["per_megapixel"] / 2)
