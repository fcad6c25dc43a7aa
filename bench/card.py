"""What a GPU benchmark ran on, and its memory: the facts every GPU number needs beside it.

A figure from a card means little without the driver, the CUDA and cuDNN builds and whether
fp32 matmuls and convolutions ran as TF32 (torch's defaults: matmuls in full fp32, convolutions
in TF32), so bench.gpu and bench.device_check print and record these with their tables.
Memory is read two ways: torch's caching allocator (`max_memory_reserved`: what the allocator
took from the card, the figure a server must budget; `allocated` is only the live tensors) and
the driver's `mem_get_info` (the whole card: the CUDA context, cuDNN's and cuBLAS's workspaces and
other processes too).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import torch

GiB = 1024**3


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version (e.g. 580.95.05): torch knows only the CUDA driver API's."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def tf32_settings() -> dict[str, Any]:
    """Whether fp32 work may run as TF32, in the API of the running torch (fp32_precision from
    2.9 on: "tf32", "ieee" or "none" = the old allow_tf32 flags decide; those before)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    reads: dict[str, Callable[[], Any]] = {
        "matmul_fp32_precision": lambda: matmul.fp32_precision,
        "cudnn_fp32_precision": lambda: cudnn.fp32_precision,
        "matmul_allow_tf32": lambda: bool(matmul.allow_tf32),
        "cudnn_allow_tf32": lambda: bool(cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "cudnn_benchmark": lambda: bool(cudnn.benchmark),
    }
    settings: dict[str, Any] = {}
    for key, read in reads.items():
        try:  # an attribute this torch lacks, or torch refusing to mix its old and new TF32 APIs
            settings[key] = read()
        except (AttributeError, RuntimeError) as error:
            settings[key] = f"unread ({type(error).__name__})"
    return settings


def card_facts(device: str) -> dict[str, Any]:
    """The device and the software under it; on the CPU, the host's."""
    import diffusers
    import transformers

    facts: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "host": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
    }
    if not device.startswith("cuda"):
        return facts
    index = torch.device(device).index or 0
    properties = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    facts.update(
        name=properties.name,
        capability=".".join(map(str, torch.cuda.get_device_capability(index))),
        total_gib=round(total / GiB, 2),
        free_gib_at_start=round(free / GiB, 2),
        multiprocessors=properties.multi_processor_count,
        arch_list=list(torch.cuda.get_arch_list()),
        driver=nvidia_driver(),
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
        bf16_supported=torch.cuda.is_bf16_supported(),
        tf32=tf32_settings(),
    )
    return facts


def describe(facts: dict[str, Any]) -> str:
    """One line for a log or a table's caption."""
    versions = f"torch {facts['torch']}, diffusers {facts['diffusers']}, transformers {facts['transformers']}"
    if "name" not in facts:
        return f"CPU ({facts['host']}, {facts['cpu_threads']} threads); {versions}"
    tf32 = facts["tf32"]
    tf32_text = ", ".join(f"{key} {value}" for key, value in tf32.items() if "tf32" in key or "precision" in key)
    return (f"{facts['name']} (compute capability {facts['capability']}, {facts['total_gib']} GiB, "
            f"{facts['free_gib_at_start']} GiB free at start); driver {facts['driver'] or 'unknown'}, "
            f"CUDA {facts['cuda']}, cuDNN {facts['cudnn']}; {versions} (kernels for {' '.join(facts['arch_list'])}); "
            f"TF32: {tf32_text}")


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_reserved(device: str) -> int | None:
    """Bytes the caching allocator held at most since `reset_peak`; None off the GPU."""
    return torch.cuda.max_memory_reserved(device) if device.startswith("cuda") else None


def card_used(device: str) -> int | None:
    """Bytes in use on the whole card now, by the driver's count (context, workspaces, others)."""
    if not device.startswith("cuda"):
        return None
    free, total = torch.cuda.mem_get_info(device)
    return total - free
