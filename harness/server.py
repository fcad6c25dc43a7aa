"""`bentoml serve` in a subprocess, waited for while it makes progress and stopped whole."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from harness.environment import ROOT
from harness.ports import free_port
from harness.processes import SERVER_MARK, kill_all, marked_processes, next_server_mark, process_tree


class ServerProcess:
    """`bentoml serve` in its own process group, as an operator runs it: `service:Alice` from
    the repository, or another `target` (a Bento's folder) from `cwd`."""

    def __init__(self, log: Path, *, verify: ssl.SSLContext | bool = True, target: str = "service:Alice",
                 cwd: Path = ROOT, base_env: dict[str, str] | None = None, **env: str) -> None:
        """`env` adds ALICE_* settings to `base_env` (this process's environment by default);
        with ALICE_TLS_CERTFILE it serves HTTPS, which the wait for readiness checks with
        `verify` (an SSL context trusting its authority)."""
        self.port = free_port()
        scheme = "https" if env.get("ALICE_TLS_CERTFILE") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        self.log_path = log
        self.mark = next_server_mark()
        self.ready_after: float | None = None  # seconds from the start to the first /readyz 200
        self._seen: dict[int, psutil.Process] = {}  # every process of the server met so far
        self._cpu: dict[int, float] = {}  # the CPU seconds each had used when last looked at
        self._log = open(log, "ab")
        self._started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=cwd, env={**(os.environ if base_env is None else base_env), **env, SERVER_MARK: self.mark},
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, stalled_after: float = 90, limit: float = 900) -> ServerProcess:
        """Wait for `/readyz`, for as long as the server keeps making progress.

        A cold start takes under 10 s on a quiet machine and over 130 s on a loaded one, so
        a fixed timeout either fails busy machines or waits for nothing on broken servers.
        The wait goes on while the server's processes keep using CPU, however slowly the
        machine's load lets them; it gives up when they have used none for `stalled_after`
        seconds, or after `limit` in all. On giving up it stops the server, so a failed start
        never leaves processes behind, and says why.
        """
        import httpx

        started = time.monotonic()
        last_progress, cpu_seen = started, -1.0
        try:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if httpx.get(f"{self.url}/readyz", timeout=5, verify=self.verify).status_code == 200:
                        self.ready_after = time.monotonic() - self._started
                        return self
                except httpx.HTTPError:
                    pass
                now = time.monotonic()
                cpu = self._cpu_seconds()
                if cpu > cpu_seen + 0.05:
                    last_progress, cpu_seen = now, cpu
                if now - last_progress > stalled_after or now - started > limit:
                    why = (f"its processes used no CPU for {now - last_progress:.0f} s"
                           if now - last_progress > stalled_after else f"still starting after {limit:.0f} s")
                    raise AssertionError(
                        f"server not ready after {now - started:.0f} s ({why}; {cpu:.1f} s of CPU used by "
                        f"{len(self._cpu)} processes; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
                        f"cores):\n{self.log()}"
                    )
                time.sleep(0.25)
        except BaseException:
            self.close()
            raise

    def _cpu_seconds(self) -> float:
        """CPU used by the server's processes so far, those gone (a restarted worker) included."""
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                self._cpu[process.pid] = times.user + times.system
        return sum(self._cpu.values())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to every process of the server, as systemd (KillMode=control-group) and
        Kubernetes stop a service."""
        processes = self._processes()
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        psutil.wait_procs(processes, timeout=timeout)
        return code

    def kill(self) -> None:
        """SIGKILL to every process of the server: a crash or a power cut."""
        processes = {process.pid: process for process in [*self._processes(), *marked_processes(self.mark)]}
        kill_all(list(processes.values()))
        self.process.wait(30)

    def _processes(self) -> list[psutil.Process]:
        """The server's processes still running: the first one's descendants, and any met
        before (BentoML's worker stays a process of the server after its parent is gone)."""
        for process in process_tree(self.process.pid):
            self._seen.setdefault(process.pid, process)
        return [process for process in self._seen.values() if process.is_running()]

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.terminate(30)
        self.kill()  # whatever is left, workers included
        self._log.close()


@contextlib.contextmanager
def running_server(log: Path, **options: Any) -> Iterator[ServerProcess]:
    """A ready ServerProcess (`options` as it takes them) for the block, stopped after it."""
    server = ServerProcess(log, **options)
    try:
        yield server.wait_ready()
    finally:
        server.close()
