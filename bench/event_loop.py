"""Event loop: how long `/health` takes while big requests are taken in or refused.

    .venv/bin/python -m bench.event_loop

Starts `bentoml serve` on the demo model. A thread polls `/health` every 50 ms and records
the slowest answer (target: under 1 s) and the server's peak resident memory, while each
scenario runs in turn:

- one 4096x4096 img2img input (JPEG, base64 in JSON) to `/generate`, then three at once;
- a 300 MB JSON body to `/generate` stating its Content-Length;
- a 300 MB body to `/generate` sent chunked (no length).

The 300 MB bodies are sent whole, as a client that does not read early answers sends them.
Prints, per scenario, the answers, the slowest `/health`, the memory it added and how much
of the 300 MB body had gone out when the answer came.
"""

from __future__ import annotations

import argparse
import base64
import io
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from harness.environment import alice_environment
from harness.health_watch import HealthWatch
from harness.server import ServerProcess, running_server

HUGE = 300 << 20
CHUNK = b"x" * (1 << 20)


def big_input_b64(side: int = 4096) -> str:
    """Noise, so its PNG copy (which the server keeps for the job) takes seconds to encode."""
    noise = Image.effect_noise((side, side), 40)
    gradient = Image.linear_gradient("L").resize((side, side))
    image = Image.merge("RGB", [noise, gradient, noise.transpose(Image.Transpose.ROTATE_90)])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode()


def big_inputs(server: ServerProcess, image: str, count: int) -> str:
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 2, "strength": 0.5, "input_image": image}

    def post(_: int) -> int:
        return httpx.post(f"{server.url}/generate", json=body, timeout=600).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(post, range(count)))
    return f"answers {statuses} in {time.monotonic() - started:.1f} s"


def huge_body(server: ServerProcess, chunked: bool) -> str:
    """Send all 300 MB to /generate, as a client that does not read early answers does, and
    note how much had gone out when the answer came."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}"
    head = (f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()
    answer: list[tuple[bytes, float, int]] = []
    sent = 0
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head)
        reader = threading.Thread(
            target=lambda: answer.append((sock.recv(65536), time.monotonic() - started, sent)), daemon=True)
        reader.start()
        piece = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n" if chunked else CHUNK
        try:
            while sent < HUGE:
                sock.sendall(piece)
                sent += len(CHUNK)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError as exc:
            print(f"  sending stopped: {exc}")
        reader.join(120)
        sent_s = time.monotonic() - started
    if not answer or not answer[0][0]:
        return f"no answer; {sent >> 20} MiB sent in {sent_s:.1f} s"
    data, answered_s, sent_then = answer[0]
    status = data.split(b"\r\n", 1)[0].decode()
    return (f"{status} after {answered_s:.1f} s with {sent_then >> 20} MiB sent; "
            f"all {sent >> 20} MiB sent in {sent_s:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    image = big_input_b64()
    print(f"input: 4096x4096 JPEG, {len(image) / 2**20:.1f} MiB as base64")
    with tempfile.TemporaryDirectory(prefix="alice-bench-") as scratch:
        tmp = Path(scratch)
        with alice_environment(tmp, {}), running_server(tmp / "server.log") as server:
            scenarios: list[tuple[str, Callable[[], str]]] = [
                ("one 4096x4096 input", lambda: big_inputs(server, image, 1)),
                ("three 4096x4096 inputs at once", lambda: big_inputs(server, image, 3)),
                ("300 MB body with Content-Length", lambda: huge_body(server, chunked=False)),
                ("300 MB body chunked", lambda: huge_body(server, chunked=True)),
            ]
            for title, scenario in scenarios:
                with HealthWatch(server) as watch:
                    outcome = scenario()
                print(f"{title}: {outcome}; {watch.summary()}", flush=True)


if __name__ == "__main__":
    main()
