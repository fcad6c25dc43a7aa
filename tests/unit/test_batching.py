"""Batching in the engine on the real demo pipeline: one pipeline call for several requests,
each image its own seed (its unbatched twin at 40 dB or more, for every scheduler), a request
leaving the batch, an out-of-memory split in halves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alice.engine.generate import (
    BatchEntry,
    GenerationOutput,
    GenerationSpec,
    GenerationStopped,
    batch_key,
    images_per_call,
    run_batch,
    run_generation,
)
from alice.engine.scheduler_names import canonical_scheduler_name
from tests.unit.test_schedulers import CONTRACT_NAMES


def psnr(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def specs(scheduler: str = "euler", steps: int = 3, count: int = 3) -> list[GenerationSpec]:
    return [GenerationSpec(prompt=f"a red circle {i}", negative_prompt="blue" * (i % 2), seed=40 + 7 * i,
                           width=64, height=64, steps=steps, scheduler=canonical_scheduler_name(scheduler))
            for i in range(count)]


class CallCounter:
    """Counts the pipeline's calls (one text encoding per call, whatever the batch)."""

    def __init__(self, pipe) -> None:
        self.calls = 0
        self.handle = pipe.text_encoder.register_forward_hook(self._count)

    def _count(self, *_) -> None:
        self.calls += 1


@pytest.fixture
def calls(demo_pipeline):
    counter = CallCounter(demo_pipeline[0])
    yield counter
    counter.handle.remove()


@pytest.mark.parametrize("scheduler", CONTRACT_NAMES)
def test_a_batched_image_matches_its_unbatched_twin(demo_pipeline, scheduler):
    pipe, config = demo_pipeline
    batch = specs(scheduler)
    alone = [run_generation(pipe, config, spec).images[0] for spec in batch]
    results = run_batch(pipe, config, [BatchEntry(spec) for spec in batch], max_images=8)
    assert [result.batch for result in results] == [3, 3, 3]
    for twin, result in zip(alone, results):
        assert psnr(twin, result.images[0]) >= 40
    # Each image is its own: no two of them alike.
    assert psnr(results[0].images[0], results[1].images[0]) < 30


def test_several_requests_and_a_requests_own_images_share_one_call(demo_pipeline, calls):
    pipe, config = demo_pipeline
    first, second = specs(count=2)
    pair = GenerationSpec(**{**first.__dict__, "num_images": 2, "seed": 90})
    results = run_batch(pipe, config, [BatchEntry(pair), BatchEntry(second)], max_images=8)
    assert calls.calls == 2  # one call: the prompts and the negative prompts are encoded once each
    assert [len(result.images) for result in results] == [2, 1]
    assert [result.batch for result in results] == [3, 3]
    # The request's second image is seed 91's: the same as a request for seed 91 alone.
    twin = run_generation(pipe, config, GenerationSpec(**{**first.__dict__, "seed": 91})).images[0]
    assert psnr(twin, results[0].images[1]) >= 40


def test_batching_off_each_image_its_own_call_and_bytes(demo_pipeline, calls):
    pipe, config = demo_pipeline
    batch = specs(scheduler="euler_a")
    results = run_batch(pipe, config, [BatchEntry(spec) for spec in batch], max_images=1)
    assert calls.calls == 2 * 3 and [result.batch for result in results] == [1, 1, 1]
    for spec, result in zip(batch, results):
        assert result.images[0].tobytes() == run_generation(pipe, config, spec).images[0].tobytes()


def test_a_stopped_request_leaves_the_batch_and_the_others_go_on(demo_pipeline):
    pipe, config = demo_pipeline
    batch = specs(steps=6)
    steps: list[list[tuple[int, int]]] = [[], [], []]

    def stop_second_after_two_steps():
        return "cancelled" if len(steps[1]) >= 2 else None

    entries = [BatchEntry(spec, on_step=lambda done, total, i=i: steps[i].append((done, total)),
                          should_stop=stop_second_after_two_steps if i == 1 else None)
               for i, spec in enumerate(batch)]
    results = run_batch(pipe, config, entries, max_images=8)
    assert isinstance(results[1], GenerationStopped) and results[1].reason == "cancelled"
    assert steps[1] == [(1, 6), (2, 6)]  # no progress after it left
    for index in (0, 2):
        assert isinstance(results[index], GenerationOutput) and len(results[index].images) == 1
        assert steps[index][-1] == (6, 6)
        alone = run_generation(pipe, config, batch[index]).images[0]
        assert psnr(alone, results[index].images[0]) >= 40


def test_a_batch_whose_every_request_stopped_ends_its_call(demo_pipeline):
    pipe, config = demo_pipeline
    seen: list[int] = []
    entries = [BatchEntry(spec, on_step=lambda done, total: seen.append(done),
                          should_stop=lambda: "deadline" if seen else None) for spec in specs(steps=6)]
    results = run_batch(pipe, config, entries, max_images=8)
    assert all(isinstance(result, GenerationStopped) for result in results)
    assert max(seen) == 1  # the call ended after its first step
    # Asked to stop before the call: no call at all.
    seen.clear()
    entries = [BatchEntry(spec, on_step=lambda done, total: seen.append(done), should_stop=lambda: "cancelled")
               for spec in specs(steps=6)]
    assert [r.reason for r in run_batch(pipe, config, entries, max_images=8)] == ["cancelled"] * 3
    assert seen == []


def test_out_of_memory_splits_the_batch_in_halves_once(demo_pipeline):
    pipe, config = demo_pipeline

    def fail_beyond_two_images(module, args, kwargs):  # classifier-free guidance doubles the rows
        if args[0].shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = pipe.unet.register_forward_pre_hook(fail_beyond_two_images, with_kwargs=True)
    recovered: list[bool] = []
    try:
        results = run_batch(pipe, config, [BatchEntry(s) for s in specs(count=4)], max_images=8,
                            on_out_of_memory=lambda: recovered.append(True))
        assert recovered == [True]
        assert [result.batch for result in results] == [2, 2, 2, 2]
        with pytest.raises(torch.OutOfMemoryError):  # halves of three still fail: no second split
            run_batch(pipe, config, [BatchEntry(s) for s in specs(count=6)], max_images=8)
    finally:
        handle.remove()


def test_what_may_share_a_call():
    base = GenerationSpec(prompt="a", seed=1, width=64, height=64, scheduler="dpm++_sde_karras")
    same = GenerationSpec(prompt="b", seed=2, negative_prompt="c", width=64, height=64, scheduler="dpm++_sde_karras")
    assert batch_key(base) == batch_key(same)
    for change in ({"width": 128}, {"steps": 24}, {"scheduler": "euler"}, {"guidance_scale": 7},
                   {"loras": (("x", 1.0),)}, {"init_image": "in.png"}):
        assert batch_key(base) != batch_key(GenerationSpec(**{**base.__dict__, **change}))


def test_images_per_call_stays_within_the_memory_of_one_largest_image():
    at = lambda side: GenerationSpec(prompt="a", seed=1, width=side, height=side)  # noqa: E731
    assert images_per_call(at(512), max_batch=8, max_pixels=1024 * 1024) == 4
    assert images_per_call(at(64), max_batch=8, max_pixels=1024 * 1024) == 8
    assert images_per_call(at(1024), max_batch=8, max_pixels=1024 * 1024) == 1
    assert images_per_call(at(64), max_batch=1, max_pixels=1024 * 1024) == 1
