"""The batch size on a GPU follows the working memory the model cache leaves beside the weights on
the card, not the pixels of one largest image; cards described by their facts (none is here)."""

from __future__ import annotations

import pytest
import torch

from alice.engine.demo import DEMO_MODEL_DIR
from alice.engine.device import DeviceFacts, MemoryOptions, batch_limit, cache_capacity, footprint, resolve_preset
from alice.engine.generate import GenerationSpec
from alice.engine.pipelines import PipelineCache, choose_placement
from tests.unit.test_device import CPU, GTX_1060, H100, gpu

RTX_4090 = gpu("NVIDIA GeForce RTX 4090", (8, 9), 25_393_692_672)


def limit(facts: DeviceFacts, family: str, side: int, max_batch: int) -> tuple[int, int, object]:
    """(images per call, the card memory left beside the weights, the preset) for one model alone."""
    placement = choose_placement(facts=facts)
    preset = resolve_preset(facts, family, MemoryOptions(), placement.dtype)
    room = cache_capacity(facts).card - footprint(preset, facts, placement.dtype, 1024 * 1024).on_card
    return batch_limit(preset, facts, placement.dtype, side * side, max_batch, room), room, preset


def working(facts: DeviceFacts, preset, side: int, images: int) -> int:
    return footprint(preset, facts, choose_placement(facts=facts).dtype, side * side, images=images).working


@pytest.mark.parametrize(
    ("facts", "family", "side"),
    [(GTX_1060, "sd15", 512), (GTX_1060, "sdxl", 1024), (GTX_1060, "sdxl", 512), (RTX_4090, "sd15", 512),
     (RTX_4090, "sdxl", 1024), (H100, "sd15", 512), (H100, "sdxl", 1024)],
)
def test_a_batch_is_as_large_as_its_estimate_keeps_within_the_room_left(facts, family, side):
    """The n images' estimated working memory fits what the cache kept free when it read the
    card at start; one more image would not (unless ALICE_MAX_BATCH stops it first)."""
    n, room, preset = limit(facts, family, side, max_batch=256)
    assert working(facts, preset, side, n) <= room
    assert n == 256 or working(facts, preset, side, n + 1) > room


def test_an_80gb_card_batches_far_more_than_4_images_at_512():
    n, _, _ = limit(H100, "sd15", 512, max_batch=256)
    assert n >= 32  # the pixel rule gave 4
    assert limit(H100, "sd15", 512, max_batch=8)[0] == 8  # ALICE_MAX_BATCH still bounds it
    assert limit(H100, "sdxl", 1024, max_batch=256)[0] >= 8


def test_a_24gb_card_batches_more_than_the_pixel_rule_and_fewer_than_an_80gb_one():
    assert 4 < limit(RTX_4090, "sd15", 512, max_batch=256)[0] < limit(H100, "sd15", 512, max_batch=256)[0]


def test_a_6gb_card_draws_sdxl_one_image_at_a_time_at_1024():
    assert limit(GTX_1060, "sdxl", 1024, max_batch=8)[0] == 1
    assert limit(GTX_1060, "sdxl", 512, max_batch=8)[0] > 1  # smaller images share the room of one large one


def test_the_room_is_what_was_free_at_start():
    """A card another process already holds 3 GiB of (read once, at start) batches fewer."""
    busy = DeviceFacts(**{**RTX_4090.__dict__, "free_memory": RTX_4090.total_memory - 3 * 1024**3})
    assert limit(busy, "sd15", 512, max_batch=256)[0] < limit(RTX_4090, "sd15", 512, max_batch=256)[0]


def spec(side: int) -> GenerationSpec:
    return GenerationSpec(prompt="a red circle", seed=1, width=side, height=side)


def cache_on(facts: DeviceFacts) -> PipelineCache:
    return PipelineCache(lambda name: DEMO_MODEL_DIR, choose_placement(facts=facts))


def test_the_model_cache_sizes_batches_by_memory_on_a_gpu_and_by_pixels_on_the_cpu():
    """A model not loaded yet is sized as `get` will load it (its weights on disk: the demo's are
    tiny, so the 80 GB card's room is nearly all for drawing)."""
    assert cache_on(CPU).images_per_call("alice-demo", spec(512), 64) == 4  # as before: 4 x 512^2 = 1024^2
    on_h100 = cache_on(H100).images_per_call("alice-demo", spec(512), 64)
    assert on_h100 == 64
    larger = cache_on(H100).images_per_call("alice-demo", spec(1024), 256)
    assert 64 < larger < cache_on(H100).images_per_call("alice-demo", spec(512), 256)  # the pixel rule gave 1
    assert cache_on(GTX_1060).images_per_call("alice-demo", spec(1024), 64) >= 1
    assert cache_on(H100).images_per_call("alice-demo", spec(512), 8) == 8


def test_the_worker_never_fails_picking_a_batch_for_a_model_that_is_gone(monkeypatch, tmp_path, bentoml_home):
    """On a GPU the limit reads the model's folder; a model deleted while its job waited is no
    crash of the queue's worker: one image per call, and the job fails with its reason."""
    from alice.config import Settings
    from alice.jobs.job import Job
    from alice.serving.runtime import Runtime
    from tests.unit.test_device import FakeCards

    FakeCards(monkeypatch)
    runtime = Runtime(Settings(device="cuda:0", data_dir=tmp_path))
    job = Job(model="no-such-model", spec=spec(512), source="test", deadline=0)
    assert runtime.worker.images_per_call(job) == 1


def test_sdxl_in_fp16_counts_its_vae_upcast():
    """The batch of an fp16 SDXL pipeline leaves the float32 decode its room."""
    facts = RTX_4090
    preset = resolve_preset(facts, "sdxl", MemoryOptions(), torch.float16)
    half = footprint(preset, facts, torch.float16, 1024 * 1024, images=1).working
    brain = footprint(preset, facts, torch.bfloat16, 1024 * 1024, images=1).working
    assert half >= brain
