"""The engine the Runtime drives: models in memory, and the drawing of a batch.

The Runtime takes any object of this shape (`Engine`), so tests hand it one that draws in no
time (tests/fake_engine.py) and check the HTTP contract without a diffusers pipeline;
`DiffusersEngine` is the real one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from alice.engine.compiled_unet import CompiledShapes, compile_and_warm, compile_record, graphs_compiled
from alice.engine.embeddings import embeddings_applied
from alice.engine.finite import NonFiniteOutput
from alice.engine.generate import BatchEntry, GenerationOutput, GenerationSpec, GenerationStopped, StopCheck, run_batch
from alice.engine.loras import loras_applied
from alice.engine.pipelines import MemoryPreset, PipelineCache, unet_is_compiled
from alice.metrics import prometheus_metrics

logger = logging.getLogger("alice.engine")

LoraFile = tuple[str, Path, float]  # (name, weights file, scale)
EmbeddingFile = tuple[str, Path]  # (name, vectors file): a textual-inversion embedding the prompts name


class OutOfMemory(Exception):
    """The device ran out of memory drawing, in the cheapest layout allowed or again after one
    cheaper (pipelines.PipelineCache.lay_out_cheaper); the engine has freed what it could, so the
    next call may work."""


class Engine(Protocol):
    def names(self) -> list[str]:
        """The models in memory."""

    def presets(self) -> dict[str, MemoryPreset]:
        """The memory preset per model family (for `/health`)."""

    def kept_layouts(self) -> dict[str, list[dict]]:
        """Per loaded model, the cheaper layouts kept since it ran out of memory (for `/health`)."""

    def get(self, name: str) -> Any:
        """Load a stored model if it is not in memory. model_store.ModelNotFound for one not in
        the store; torch.OutOfMemoryError when it does not fit (see recover_from_out_of_memory)."""

    def drop(self, name: str) -> bool:
        """Unload a model; False when it was not loaded."""

    def warm_up(self, name: str, shapes: Callable[[], CompiledShapes]) -> None:
        """Compile a loaded model's UNet for `shapes()` (ALICE_COMPILE_UNET), once per load;
        nothing for a UNet that is not compiled or already is. A compile that fails leaves the
        UNet eager (and says so in the log); torch.OutOfMemoryError goes to the caller."""

    def compile_status(self) -> dict[str, dict[str, Any]]:
        """Per loaded model with a compiled UNet: its shapes, graphs and calls (for `/health`)."""

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
        should_stop: StopCheck, embeddings: Sequence[EmbeddingFile] = (),
    ) -> list[GenerationOutput | GenerationStopped | NonFiniteOutput]:
        """Draw a batch of entries that share a `batch_key`, `max_images` to a call, with `loras`
        applied (`should_stop` cuts their loading short) and the `embeddings` its prompts name
        loaded: per entry its images, why it stopped, or NonFiniteOutput (an image of it came out
        NaN in the latents or the decode; the other entries keep theirs).
        Raises OutOfMemory, loras.LoraLoadFailed, or GenerationStopped while loading LoRAs."""


class DiffusersEngine(PipelineCache):
    """The pipelines in memory (an LRU cache within a memory budget), drawing with diffusers."""

    def generate(
        self, model: str, entries: Sequence[BatchEntry], *, loras: Sequence[LoraFile], max_images: int,
        should_stop: StopCheck, embeddings: Sequence[EmbeddingFile] = (),
    ) -> list[GenerationOutput | GenerationStopped | NonFiniteOutput]:
        import torch  # here, not at the top: see alice/engine/__init__.py

        spec = entries[0].spec  # the batch shares its size and which pipeline draws it (batch_key)
        # Laid out, and made cheaper after running out of memory, for the size drawn last: a hires
        # fix's second pass is the larger.
        width, height = spec.final_size
        loaded = self.get_for_size(model, width, height)
        pipe = loaded.inpaint if spec.mask_image else loaded.image_to_image if spec.init_image else loaded.pipe
        hires_pipe = loaded.image_to_image if spec.hires_scale is not None else None
        graphs, eager_calls = graphs_compiled(), _eager_calls(pipe)
        try:
            with loras_applied(pipe, loras, fuse=unet_is_compiled(pipe), should_stop=should_stop), \
                    embeddings_applied(pipe, embeddings):
                return run_batch(
                    pipe,
                    loaded.base_scheduler_config,
                    entries,
                    max_images=max_images,
                    on_out_of_memory=lambda: self.recover_from_out_of_memory(model),
                    lay_out_cheaper=lambda: self.lay_out_cheaper(model, width, height),
                    family=loaded.family,
                    hires_pipe=hires_pipe,
                )
        except torch.OutOfMemoryError:
            pass  # recovered from below: out of the except block, whose traceback holds the run's tensors
        finally:
            _count_compiles(model, pipe, graphs_compiled() - graphs, _eager_calls(pipe) - eager_calls)
        self.recover_from_out_of_memory(model)  # the next request works
        raise OutOfMemory(f"the device ran out of memory drawing with model '{model}'")

    def warm_up(self, name: str, shapes: Callable[[], CompiledShapes]) -> None:
        loaded = self.get(name)
        if not unet_is_compiled(loaded.pipe) or compile_record(loaded.pipe) is not None:
            return
        import torch

        try:
            record = compile_and_warm(loaded.pipe, loaded.base_scheduler_config, loaded.family, shapes())
        except torch.OutOfMemoryError:
            raise
        except Exception:  # no compiler after all, an inductor error: serve eager rather than not at all
            logger.exception("compiling the UNet of model %s failed; it runs eager", name)
            return
        prometheus_metrics().unet_compiles.labels(model=name, when="warm_up").inc(record.graphs)

    def compile_status(self) -> dict[str, dict[str, Any]]:
        records = {name: compile_record(loaded.pipe) for name, loaded in self._loaded.items()}
        return {name: record.public() for name, record in records.items() if record is not None}


def _eager_calls(pipe: Any) -> int:
    record = compile_record(pipe)
    return record.eager_calls if record else 0


def _count_compiles(model: str, pipe: Any, graphs: int, eager_calls: int) -> None:
    """A generation's compiles (none, unless something outside the compiled shapes' router
    compiled: then they are counted, not hidden) and its UNet calls outside the shapes."""
    record = compile_record(pipe)
    metrics = prometheus_metrics()
    if graphs and record is not None:
        record.later_graphs += graphs
        metrics.unet_compiles.labels(model=model, when="request").inc(graphs)
    if eager_calls:
        metrics.unet_eager_calls.labels(model=model).inc(eager_calls)
