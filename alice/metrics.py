"""`alice_*` Prometheus metrics, exported on BentoML's `/metrics`, and a JSON summary.

No prompt or key ever goes into a label: labels are model names, failure codes and the names
of configured keys (a bounded set: a job of a name no longer configured counts as `other`).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Metrics:
    generation_seconds: Any
    images: Any
    steps: Any
    failures: Any
    queue_depth: Any
    running: Any
    model_load_seconds: Any
    gpu_memory_bytes: Any
    cheaper_layouts: Any
    unet_compiles: Any
    unet_eager_calls: Any
    jobs_by_key: Any
    images_by_key: Any


@functools.cache
def prometheus_metrics() -> Metrics:
    """Created on first use, once per process.

    prometheus_client must be imported only after BentoML's worker has set
    PROMETHEUS_MULTIPROC_DIR, or the values never reach `/metrics`.
    """
    from prometheus_client import Counter, Gauge, Histogram

    return Metrics(
        generation_seconds=Histogram(
            "alice_generation_duration_seconds", "Time from a job's start to its images being saved.",
            ["model"], buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
        ),
        images=Counter("alice_images_total", "Images generated.", ["model"]),
        steps=Counter("alice_steps_total", "Denoising steps run.", ["model"]),
        failures=Counter("alice_job_failures_total", "Jobs that ended without images, by reason.", ["reason"]),
        queue_depth=Gauge("alice_queue_depth", "Jobs waiting.", multiprocess_mode="livesum"),
        running=Gauge("alice_jobs_running", "Jobs running (0 or 1 per worker).", multiprocess_mode="livesum"),
        model_load_seconds=Histogram(
            "alice_model_load_seconds", "Time to load a model into memory.", ["model"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
        ),
        gpu_memory_bytes=Gauge("alice_gpu_memory_bytes", "GPU memory allocated by torch.", multiprocess_mode="livesum"),
        cheaper_layouts=Counter(
            "alice_out_of_memory_layouts_total",
            "Times a model was laid out cheaper after an image ran out of memory, by the layout it got.",
            ["model", "layout"],
        ),
        unet_compiles=Counter(
            "alice_unet_compiles_total",
            "Graphs torch.compile made for a model's UNet (ALICE_COMPILE_UNET): when=warm_up before the model "
            "serves, when=request during a generation (a recompile; 0 unless something escaped the compiled shapes).",
            ["model", "when"],
        ),
        unet_eager_calls=Counter(
            "alice_unet_eager_calls_total",
            "UNet calls of a compiled model run eager, being outside its compiled shapes (another size, one row).",
            ["model"],
        ),
        jobs_by_key=Counter("alice_key_jobs_total", "Jobs that ended, by the name of the key that asked and how "
                            "they ended (only on servers with API keys).", ["key", "state"]),
        images_by_key=Counter("alice_key_images_total", "Images generated, by the name of the key that asked.",
                              ["key"]),
    )


@functools.cache
def shared_queue_depth() -> Any:
    """The depth of the queue that replicas share (ALICE_DATABASE_URL), exported by those only.

    Every replica reports the same cluster-wide number, so it is read with max(), never sum();
    `alice_queue_depth` and `alice_jobs_running` stay each replica's own, to be summed.
    """
    from prometheus_client import Gauge

    return Gauge(
        "alice_shared_queue_depth",
        "Jobs waiting in the queue all replicas share; cluster-wide, the same on every replica: aggregate with max().",
        multiprocess_mode="livemax",
    )


@dataclass
class Summary:
    """The same facts in memory, for `GET /v1/metrics` and the web page."""

    started: float = field(default_factory=time.time)
    jobs_by_state: dict[str, int] = field(default_factory=dict)
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    images: int = 0
    steps: int = 0
    generation_seconds: float = 0.0
    model_loads: dict[str, float] = field(default_factory=dict)
    key_names: frozenset[str] = frozenset()  # the configured keys' names: the only `key` labels
    by_key: dict[str, Summary] = field(default_factory=dict)  # each key's own figures
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def job_finished(self, state: str, reason: str | None, model: str, images: int, steps: int, seconds: float,
                     owner: str | None = None) -> None:
        with self._lock:
            self._count(state, reason, images, steps, seconds)
            if owner is not None:
                mine = self.by_key.get(owner)
                if mine is None:
                    mine = self.by_key[owner] = Summary(started=self.started)
                mine._count(state, reason, images, steps, seconds)
        metrics = prometheus_metrics()
        if owner is not None:
            key = owner if owner in self.key_names else "other"
            metrics.jobs_by_key.labels(key=key, state=state).inc()
            if images:
                metrics.images_by_key.labels(key=key).inc(images)
        metrics.steps.labels(model=model).inc(steps)
        if images:
            metrics.images.labels(model=model).inc(images)
            metrics.generation_seconds.labels(model=model).observe(seconds)
        elif reason:
            metrics.failures.labels(reason=reason).inc()

    def _count(self, state: str, reason: str | None, images: int, steps: int, seconds: float) -> None:
        self.jobs_by_state[state] = self.jobs_by_state.get(state, 0) + 1
        if reason:
            self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1
        self.images += images
        self.steps += steps
        if images:
            self.generation_seconds += seconds

    def model_loaded(self, model: str, seconds: float) -> None:
        with self._lock:
            self.model_loads[model] = seconds
        prometheus_metrics().model_load_seconds.labels(model=model).observe(seconds)

    def laid_out_cheaper(self, model: str, layout: str) -> None:
        prometheus_metrics().cheaper_layouts.labels(model=model, layout=layout).inc()

    def snapshot(self, owner: str | None = None) -> dict[str, Any]:
        """The figures of every job, or of `owner`'s jobs only (a user key's view)."""
        if owner is not None:
            with self._lock:
                mine = self.by_key.get(owner) or Summary(started=self.started)
            return {**mine.snapshot(), "model_load_seconds": self.snapshot()["model_load_seconds"]}
        with self._lock:
            succeeded = self.jobs_by_state.get("succeeded", 0)
            return {
                "uptime_s": round(time.time() - self.started, 1),
                "jobs": dict(self.jobs_by_state),
                "failures": dict(self.failures_by_reason),
                "images_total": self.images,
                "steps_total": self.steps,
                "average_job_seconds": round(self.generation_seconds / succeeded, 3) if succeeded else None,
                "model_load_seconds": dict(self.model_loads),
            }
