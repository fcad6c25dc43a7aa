"""Shared test plumbing: a private model store and data folder per test module."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.models import ModelStore


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (and its subprocesses), then put back what was there."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def private_bentoml_home(home: Path) -> Iterator[Path]:
    """Point BentoML's model store at `home`, in this process and for subprocesses."""
    (home / "models").mkdir(parents=True, exist_ok=True)
    with environment({"BENTOML_HOME": str(home)}), BentoMLContainer.bentoml_home.patch(str(home)), \
            BentoMLContainer.model_store.patch(ModelStore(str(home / "models"))):
        yield home


@contextlib.contextmanager
def alice_environment(tmp: Path, env: dict[str, str]) -> Iterator[Path]:
    """A private store holding the demo model, a private data folder, and extra ALICE_* settings."""
    from alice.models import checkpoints

    with environment({"ALICE_DATA_DIR": str(tmp / "data"), **env}), private_bentoml_home(tmp / "bentoml"):
        checkpoints.ensure_demo_model()
        yield tmp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def forget_service_metrics() -> None:
    """Let a second service app be built in this process.

    BentoML registers its request metrics in prometheus_client's global registry each time
    an app is built, and a second registration raises DuplicateTimeseries. A real server
    builds one app per process; tests build one per module. (ALICE's own metrics are
    created once per process and stay.)
    """
    from prometheus_client import REGISTRY

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(name.startswith("bentoml_") for name in names):
            REGISTRY.unregister(collector)


ROOT = Path(__file__).resolve().parents[1]


# Each server the tests start carries a mark in its environment, which its processes inherit:
# "<session>/<number>", the session being this importing process (a pytest run, a bench). By the
# mark a server's processes are found even once BentoML's worker, which runs in a session of its
# own, has lost its parent; and the end of a test session finds what it left behind without
# touching anyone else's servers on a shared machine (tests/conftest.py).
SERVER_MARK = "TESTS_SERVER_MARK"
SESSION = uuid.uuid4().hex
_server_numbers = itertools.count(1)


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all it started (while they are still its descendants)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def marked_processes(mark: str, *, prefix: bool = False) -> list[psutil.Process]:
    """This user's processes whose SERVER_MARK is `mark` (or starts with it)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):  # gone meanwhile, or another user's
            value = process.environ().get(SERVER_MARK)
            if value is not None and (value.startswith(mark) if prefix else value == mark):
                found.append(process)
    return found


def kill_all(processes: list[psutil.Process], timeout: float = 30) -> None:
    """SIGKILL to each process; waits until they are gone."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=timeout)


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
        self.mark = f"{SESSION}/{next(_server_numbers)}"
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


@contextlib.contextmanager
def running_server(log: Path, **options: Any) -> Iterator[ServerProcess]:
    """A ready ServerProcess (`options` as it takes them) for the block, stopped after it."""
    server = ServerProcess(log, **options)
    try:
        yield server.wait_ready()
    finally:
        server.close()


def write_demo_lora(folder: Path, seed: int = 0) -> Path:
    """A LoRA file for the demo model's UNet, as diffusers/peft save one, with weights that
    visibly change its pictures."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from alice.engine.demo import build_demo_architecture

    unet = build_demo_architecture().unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        weight_name="demo_lora.safetensors",
    )
    return folder / "demo_lora.safetensors"


def save_tiny_sdxl_pipeline(folder: Path) -> Path:
    """A tiny SDXL-shaped pipeline (two text encoders, text-time conditioning), as diffusers'
    own tests build one: it loads and draws through the same code as the real SDXL."""
    import tempfile as _tempfile

    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from alice.engine.tokenizer import write_offline_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=8,
        )
        vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), in_channels=3, out_channels=3,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            latent_channels=4, norm_num_groups=8, sample_size=64)
        text_config = CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                     num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000,
                                     hidden_act="gelu", projection_dim=32)
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
    with _tempfile.TemporaryDirectory() as scratch:
        write_offline_clip_tokenizer(Path(scratch))
        tokenizer = CLIPTokenizer.from_pretrained(scratch)
    for encoder in (text_encoder, text_encoder_2):
        encoder.config.eos_token_id = tokenizer.eos_token_id
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_original_checkpoint(pipe, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Save an SD-1.x-shaped diffusers pipeline as one `.safetensors` file in the original
    (CompVis / A1111 / CivitAI) key layout, the reverse of diffusers' single-file conversion."""
    from safetensors.torch import save_file

    state = original_layout_state_dict(pipe)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(path), metadata=metadata)
    return path


def original_layout_state_dict(pipe) -> dict:
    """The UNet, VAE and (CLIP ViT-L style) text encoder of a pipeline under their original names."""
    unet = pipe.unet
    per_level = unet.config.layers_per_block
    resnet_names = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                    ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
    unet_fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                  "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",  # SDXL
                  "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}

    def resnet(rest: str) -> str:
        for new, old in resnet_names:
            rest = rest.replace(new, old)
        return rest

    def unet_key(key: str) -> str:
        parts = key.split(".")
        for module, original in unet_fixed.items():
            if key.startswith(module + "."):
                return original + key.removeprefix(module)
        if parts[0] == "mid_block":
            index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
            tail = ".".join(parts[3:])
            return f"middle_block.{index}.{resnet(tail) if parts[1] == 'resnets' else tail}"
        level, kind, layer, tail = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if parts[0] == "down_blocks":
            if kind == "downsamplers":  # downsamplers.0.conv.* -> input_blocks.N.0.op.*
                return f"input_blocks.{(level + 1) * (per_level + 1)}.0.op.{tail.removeprefix('conv.')}"
            block = 1 + level * (per_level + 1) + layer
            return f"input_blocks.{block}.0.{resnet(tail)}" if kind == "resnets" else f"input_blocks.{block}.1.{tail}"
        if kind == "upsamplers":  # after the level's last resnet (and its attention, if any)
            has_attention = hasattr(unet.up_blocks[level], "attentions")
            return f"output_blocks.{level * (per_level + 1) + per_level}.{2 if has_attention else 1}.{tail}"
        block = level * (per_level + 1) + layer
        return f"output_blocks.{block}.0.{resnet(tail)}" if kind == "resnets" else f"output_blocks.{block}.1.{tail}"

    levels = len(pipe.vae.config.block_out_channels)
    vae_attention = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]

    def vae_key(key: str, tensor):
        coder, rest = key.split(".", 1)
        rest = rest.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        parts = rest.split(".")
        if parts[0] == "down_blocks":  # encoder.down_blocks.i.resnets.j -> encoder.down.i.block.j
            rest = f"down.{parts[1]}." + ".".join(parts[2:]).replace("resnets", "block").replace(
                "downsamplers.0", "downsample")
        elif parts[0] == "up_blocks":  # decoder levels are numbered from the bottom in the original
            rest = f"up.{levels - 1 - int(parts[1])}." + ".".join(parts[2:]).replace("resnets", "block").replace(
                "upsamplers.0", "upsample")
        elif parts[0] == "mid_block" and parts[1] == "resnets":
            rest = f"mid.block_{int(parts[2]) + 1}." + ".".join(parts[3:])
        elif parts[0] == "mid_block":  # attention: linear layers were 1x1 convolutions
            tail = ".".join(parts[3:])
            for new, old in vae_attention:
                tail = tail.replace(new, old)
            rest = f"mid.attn_1.{tail}"
            if tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        return (f"{coder}.{rest}" if coder in ("encoder", "decoder") else key), tensor

    state = {}
    for key, tensor in unet.state_dict().items():
        state[f"model.diffusion_model.{unet_key(key)}"] = tensor
    for key, tensor in pipe.vae.state_dict().items():
        new_key, new_tensor = vae_key(key, tensor)
        state[f"first_stage_model.{new_key}"] = new_tensor
    for key, tensor in pipe.text_encoder.state_dict().items():
        # transformers 5's CLIPTextModel has no `text_model.` level; the original layout does
        state[f"cond_stage_model.transformer.text_model.{key.removeprefix('text_model.')}"] = tensor
    return state
