"""A server's /health latency and memory, watched while a block runs."""

from __future__ import annotations

import contextlib
import threading
import time

import psutil

from harness.server import ServerProcess


class HealthWatch:
    """Polls a server's `/health` every 50 ms and samples its memory while the block runs:
    the slowest answer, any answer that was not 200, and the peak RSS over the start's."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.worst_s = 0.0
        self.polls = 0
        self.failures = 0
        self.baseline_rss = self.peak_rss = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for process in self.server._processes():
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.server.url, timeout=120, verify=self.server.verify) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                if client.get("/health").status_code != 200:
                    self.failures += 1
                self.worst_s = max(self.worst_s, time.monotonic() - started)
                self.polls += 1
                self.peak_rss = max(self.peak_rss, self._rss())
                time.sleep(0.05)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def summary(self) -> str:
        return (f"/health slowest {self.worst_s * 1000:.0f} ms over {self.polls} polls ({self.failures} not 200); "
                f"server memory +{(self.peak_rss - self.baseline_rss) / 2**20:.0f} MiB")
