"""The engine the Runtime drives: models in memory, and the drawing of a batch.

The Runtime takes any object of this shape (`Engine`), so tests hand it one that draws in no
time (tests/fake_engine.py) and check the HTTP contract without a diffusers pipeline;
`DiffusersEngine` is the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

from alice.engine.finite import NonFiniteOutput  # noqa: F401  (the worker's import, like OutOfMemory)
from alice.engine.generate import BatchEntry, GenerationOutput, GenerationSpec, GenerationStopped, StopCheck, run_batch
from alice.engine.loras import loras_applied
from alice.engine.pipelines import MemoryPreset, PipelineCache, unet_is_compiled

LoraFile = tuple[str, Path, float]  # (name, weights file, scale)


class OutOfMemory(Exception):
    """The device ran out of memory drawing; the engine has freed what it could, so the next
    call may work."""


class Engine(Protocol):
    def names(self) -> list[str]:
        """The models in memory."""

    def presets(self) -> dict[str, MemoryPreset]:
        """The memory preset per model family (for `/health`)."""

    def get(self, name: str) -> Any:
        """Load a stored model if it is not in memory. model_store.ModelNotFound for one not in
        the store; torch.OutOfMemoryError when it does not fit (see recover_from_out_of_memory)."""

    def drop(self, name: str) -> bool:
        """Unload a model; False when it was not loaded."""

    def recover_from_out_of_memory(self, name: str) -> None:
        """After an out-of-memory load of `name`: free what the failed attempt held."""

    def release_cached_memory(self) -> None:
        """Hand memory the device's allocator keeps back to the device."""

    def images_per_call(self, model: str, spec: GenerationSpec, max_batch: int) -> int:
        """How many images like the spec's one call of `model` may draw: at most `max_batch`,
        within the memory the device keeps for drawing. model_store.ModelNotFound for a model
        not in the store."""

    def generate(
        self, model: str, entries: Sequence[BatchEntry], *, loras: Sequence[LoraFile], max_images: int,
        should_stop: StopCheck,
    ) -> list[GenerationOutput | GenerationStopped]:
        """Draw a batch of entries that share a `batch_key`, `max_images` to a call, with `loras`
        applied (`should_stop` cuts their loading short): per entry its images or why it stopped.
        Raises OutOfMemory, NonFiniteOutput (NaN in the latents or the decode),
        loras.LoraLoadFailed, or GenerationStopped while loading LoRAs."""


class DiffusersEngine(PipelineCache):
    """The pipelines in memory (an LRU cache within a memory budget), drawing with diffusers."""

    def generate(
        self, model: str, entries: Sequence[BatchEntry], *, loras: Sequence[LoraFile], max_images: int,
        should_stop: StopCheck,
    ) -> list[GenerationOutput | GenerationStopped]:
        import torch  # here, not at the top: see alice/engine/__init__.py

        loaded = self.get(model)
        pipe = loaded.image_to_image if entries[0].spec.init_image else loaded.pipe
        try:
            with loras_applied(pipe, loras, fuse=unet_is_compiled(pipe), should_stop=should_stop):
                return run_batch(
                    pipe,
                    loaded.base_scheduler_config,
                    entries,
                    max_images=max_images,
                    on_out_of_memory=lambda: self.recover_from_out_of_memory(model),
                    family=loaded.family,
                )
        except torch.OutOfMemoryError:
            pass  # recovered from below: out of the except block, whose traceback holds the run's tensors
        self.recover_from_out_of_memory(model)  # the next request works
        raise OutOfMemory(f"the device ran out of memory drawing with model '{model}'")
