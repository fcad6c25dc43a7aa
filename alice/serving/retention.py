"""The retention sweep: every ALICE_RETENTION_SWEEP_INTERVAL_S, on a thread of its own, delete
images older than ALICE_IMAGE_RETENTION_DAYS or beyond ALICE_IMAGE_RETENTION_GB, and img2img
inputs as old (a job's input normally goes when the job finishes)."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from alice.config import Settings
from alice.images.store import ImageStore
from alice.jobs.queue import JobQueue

logger = logging.getLogger("alice")


class RetentionSweep:
    def __init__(self, settings: Settings, images: ImageStore, inputs: ImageStore, jobs: JobQueue) -> None:
        """`jobs` says whose turn it is among replicas that share the folders."""
        self.settings = settings
        self.images = images
        self.inputs = inputs
        self.jobs = jobs
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alice-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """The sweep ends at its next wait; one under way finishes (a daemon thread: no join)."""
        self._stopping.set()

    def _run(self) -> None:
        interval = self.settings.retention_sweep_interval_s
        while True:
            try:
                # Replicas share the folders: one of them sweeps per interval.
                if self.jobs.is_my_turn("retention", interval * 0.9):
                    self.images.sweep(
                        max_age=timedelta(days=self.settings.image_retention_days),
                        max_total_bytes=int(self.settings.image_retention_gb * 1024**3),
                    )
                    self.inputs.sweep(max_age=timedelta(days=self.settings.image_retention_days), max_total_bytes=None)
            except Exception:  # a failed sweep must not end the sweeping
                logger.exception("image retention sweep failed")
            if self._stopping.wait(interval):
                return
