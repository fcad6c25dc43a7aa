"""The model cache keeps what fits its byte budget, least recently used dropped first."""

from __future__ import annotations

import pytest

from alice.engine.demo import save_untrained_demo
from alice.engine.pipelines import PipelineCache, choose_placement, pipeline_bytes


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for seed, name in enumerate(("a", "b", "c")):
        save_untrained_demo(root / name, seed=seed)
    return root


def cache(folders, budget):
    loads = []
    return PipelineCache(lambda name: folders / name, choose_placement("cpu"), budget,
                         on_load=lambda name, seconds: loads.append(name)), loads


def test_budget_for_two_keeps_the_two_most_recent(folders):
    one = pipeline_bytes(cache(folders, 1 << 40)[0].get("a").pipe)
    pipelines, loads = cache(folders, int(one * 2.5))
    pipelines.get("a"), pipelines.get("b"), pipelines.get("a"), pipelines.get("c")
    assert pipelines.names() == ["a", "c"]  # b was least recently used
    assert loads == ["a", "b", "c"]
    assert pipelines.used_bytes() <= int(one * 2.5)


def test_a_model_bigger_than_the_budget_still_loads_alone(folders):
    pipelines, _ = cache(folders, 1)
    pipelines.get("a")
    pipelines.get("b")
    assert pipelines.names() == ["b"]


def test_drop_all_but(folders):
    pipelines, _ = cache(folders, 1 << 40)
    for name in "abc":
        pipelines.get(name)
    pipelines.drop_all_but("b")
    assert pipelines.names() == ["b"]


def test_the_cache_settles_on_the_loaded_weights_in_ram_on_the_cpu(folders):
    pipelines, _ = cache(folders, 1 << 40)
    loaded = pipelines.get("a")
    assert loaded.footprint.in_ram == loaded.size_bytes == pipeline_bytes(loaded.pipe)
    assert loaded.footprint.on_card == 0 and loaded.preset.cpu_offload == "none"


def test_after_out_of_memory_the_model_offload_layout_is_put_back(folders):
    """A run that fails half-way leaves the model it was in on the card (diffusers moves it back
    only at the end of a run): recovery re-installs the offload, which moves everything to RAM."""
    from alice.engine.device import MemoryPreset
    from alice.engine.pipelines import LoadedPipeline

    class OffloadedPipe:
        restored = 0

        def maybe_free_model_hooks(self):
            self.restored += 1

    pipelines, _ = cache(folders, 1 << 40)
    pipelines.get("a")
    offloaded = OffloadedPipe()
    pipelines._loaded["big"] = LoadedPipeline(
        "big", offloaded, {}, 0.0, 1, MemoryPreset("sdxl", "model", 768, False, True)
    )
    pipelines.recover_from_out_of_memory("big")
    assert offloaded.restored == 1
    assert pipelines.names() == ["big"]  # the others unloaded


def test_out_of_memory_memory_is_freed_after_the_except_block(monkeypatch, tmp_path):
    """Inside `except`, the exception's traceback holds the failed run's frames and with them its
    tensors: freeing memory there frees nothing. The runtime frees it after the block."""
    import gc
    import types
    import time
    import weakref

    import torch

    from alice.serving import runtime as runtime_module
    from alice.config import Settings
    from alice.engine import engine as engine_module
    from alice.engine.generate import GenerationSpec
    from alice.engine.pipelines import LoadedPipeline
    from alice.jobs.queue import Job, JobControl, JobFailure

    runtime = runtime_module.Runtime(Settings(device="cpu", data_dir=tmp_path))
    activations: list[weakref.ref] = []

    def run_out_of_memory(*args, **kwargs):
        latents = torch.ones(1024)
        activations.append(weakref.ref(latents))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    alive_when_freeing = []

    def drop_all_but(name):
        gc.collect()
        alive_when_freeing.append(activations[0]() is not None)

    monkeypatch.setattr(engine_module, "run_batch", run_out_of_memory)
    pipe = types.SimpleNamespace(unet=torch.nn.Linear(1, 1))
    monkeypatch.setattr(runtime.pipelines, "get", lambda name: LoadedPipeline(name, pipe, {}, 0.0, 0))
    monkeypatch.setattr(runtime.pipelines, "drop_all_but", drop_all_but)
    job = Job(model="m", spec=GenerationSpec(prompt="a cat", seed=1), source="test", deadline=time.time() + 60)
    with pytest.raises(JobFailure) as failure:
        runtime.worker.execute([job], [JobControl(runtime.jobs, job)])
    assert alive_when_freeing == [False]
    assert failure.value.code == "out_of_memory"
    assert "slicing" not in str(failure.value)  # no advice that was never measured to help
