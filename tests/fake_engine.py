"""An engine that draws in no time, for tests of the wire formats (alice/engine/engine.py's
`Engine`): everything around the pipeline is real (HTTP app, runtime, queue, stores, PNGs).

Image i of a request is noise from its seed + i, the same alone or in a batch: same seed,
same pixels; another seed, another image.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Sequence

from PIL import Image

from alice.models import store as model_store
from alice.engine.generate import BatchEntry, GenerationOutput, GenerationStopped, StopCheck, images_per_call
from alice.engine.previews import Preview, preview_steps


class FakeEngine:
    def __init__(self, step_seconds: float = 0.0) -> None:
        """`step_seconds`: how long each denoising step takes (to see a job running)."""
        self.step_seconds = step_seconds
        self._loaded: list[str] = []
        self._lock = threading.Lock()
        self.calls: list[int] = []  # images per call, in order

    def names(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def presets(self) -> dict:
        return {}

    def kept_layouts(self) -> dict:
        return {}

    def get(self, name: str) -> str:
        model_store.get_model(name)  # ModelNotFound as the real one
        with self._lock:
            if name not in self._loaded:
                self._loaded.append(name)
        return name

    def drop(self, name: str) -> bool:
        with self._lock:
            if name not in self._loaded:
                return False
            self._loaded.remove(name)
            return True

    def recover_from_out_of_memory(self, name: str) -> None:
        pass

    def warm_up(self, name: str, shapes: object) -> None:
        pass  # nothing compiles here

    def compile_status(self) -> dict:
        return {}

    def images_per_call(self, model: str, spec, max_batch: int) -> int:
        return images_per_call(spec, max_batch, 1024 * 1024)  # the CPU's rule, default ALICE_MAX_PIXELS

    def release_cached_memory(self) -> None:
        pass

    def generate(
        self, model: str, entries: Sequence[BatchEntry], *, loras: Sequence, max_images: int, should_stop: StopCheck,
        embeddings: Sequence = (),
    ) -> list[GenerationOutput | GenerationStopped]:
        self.get(model)
        rows = [(index, entry.spec.seed + i) for index, entry in enumerate(entries) for i in range(entry.spec.num_images)]
        calls = [rows[i : i + max_images] for i in range(0, len(rows), max_images)]
        stopped: dict[int, str] = {}
        images: list[list[Image.Image]] = [[] for _ in entries]
        largest = [0] * len(entries)
        steps = entries[0].spec.steps  # the batch shares it
        total = [steps * sum(index in {i for i, _ in call} for call in calls) for index in range(len(entries))]
        done = [0] * len(entries)
        started = time.perf_counter()
        for call in calls:
            self.calls.append(len(call))
            indices = list(dict.fromkeys(index for index, _ in call))
            for _ in range(steps):
                if all(index in stopped for index in indices):
                    break  # as the real one interrupts a call nobody waits for
                time.sleep(self.step_seconds)
                for index in indices:
                    entry = entries[index]
                    if index in stopped:
                        continue
                    done[index] += 1
                    if entry.on_step:
                        entry.on_step(done[index], total[index])
                    # Live previews of its first image, as the real one spreads them: noise at 1/8 the side.
                    if entry.on_preview and (index, entry.spec.seed) in call and (
                        done[index] % steps or steps) in preview_steps(entry.previews, steps):
                        shown = sum(1 for _ in preview_steps(entry.previews, steps) if _ < (done[index] % steps or steps))
                        small = noise(max(1, entry.spec.width // 8), max(1, entry.spec.height // 8), entry.spec.seed)
                        entry.on_preview(Preview(small, shown, done[index] % steps or steps, steps))
                    if entry.should_stop and (reason := entry.should_stop()):
                        stopped[index] = reason
            for index, seed in call:
                if index not in stopped:
                    images[index].append(noise(entries[index].spec.width, entries[index].spec.height, seed))
                    largest[index] = max(largest[index], len(call))
        seconds = time.perf_counter() - started
        return [
            GenerationStopped(stopped[index]) if index in stopped
            else GenerationOutput(images=images[index], seconds=seconds, batch=largest[index])
            for index in range(len(entries))
        ]


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))
