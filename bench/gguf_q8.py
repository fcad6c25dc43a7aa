"""A pipeline folder's transformer written as a GGUF Q8_0 file, beside its other parts: the layout
ALICE stores a GGUF imported with `--base` in (a `transformer/` holding the .gguf and config.json,
loaded by alice/engine/transformer_files.py), for bench.gpu's GGUF line.

The weights are quantized with torch on the bench's device: the `gguf` package's numpy Q8_0 takes
minutes for FLUX.1's 12 B parameters on the CPU, the card a few seconds. `q8_0` gives the same
bytes as `gguf.quants.quantize` (tests/unit/test_bench_gpu.py checks it); the file is written by
`gguf.GGUFWriter`, laid out as city96's files are: 2-D weights quantized where rows split into whole
blocks of 32, the rest (biases, norms) kept in F32. Tensor names stay diffusers' own, which
diffusers' FLUX loader takes as they are.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

TRANSFORMER = "transformer"
BLOCK = 32  # Q8_0: 32 weights a block, each block a float16 scale and 32 int8s (34 bytes)


def q8_0(tensor: torch.Tensor) -> np.ndarray:
    """GGML's Q8_0 of a 2-D tensor whose rows split into whole blocks, as uint8 rows of 34 bytes a
    block, computed as the gguf package does (ggml's reference): scale = max |x| / 127 in float32,
    x times 1/scale rounded half away from zero, the scale stored as float16."""
    rows, columns = tensor.shape
    blocks = tensor.float().reshape(-1, BLOCK)
    scale = blocks.abs().amax(dim=1, keepdim=True) / 127
    inverse = torch.where(scale == 0, torch.zeros_like(scale), 1 / scale)
    scaled = blocks * inverse
    # C's roundf (np_roundf in gguf): torch.round would round halves to even.
    magnitude = scaled.abs()
    whole = magnitude.floor()
    rounded = torch.sign(scaled) * (whole + torch.floor(2 * (magnitude - whole)))
    packed = torch.cat([scale.half().view(torch.uint8), rounded.to(torch.int8).view(torch.uint8)], dim=1)
    return packed.reshape(rows, columns // BLOCK * (BLOCK + 2)).cpu().numpy()


def write_q8_0_gguf(weights: list[Path], out: Path, arch: str, device: str) -> Path:
    """A GGUF of the safetensors files' tensors, Q8_0 where they quantize, F32 otherwise; read
    one tensor at a time onto `device` (FLUX.1's 24 GB never whole in memory but as Q8_0)."""
    import gguf
    from safetensors import safe_open

    writer = gguf.GGUFWriter(str(out), arch=arch)
    for path in weights:
        with safe_open(str(path), framework="pt", device=device) as file:
            for name in file.keys():
                tensor = file.get_tensor(name)
                if tensor.ndim == 2 and tensor.shape[-1] % BLOCK == 0:
                    packed = q8_0(tensor)
                    writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                else:
                    writer.add_tensor(name, tensor.float().cpu().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def gguf_pipeline_folder(folder: Path, out: Path, device: str) -> Path:
    """`out`: the pipeline folder with its transformer as a Q8_0 GGUF; every other file a hard
    link to `folder`'s (a copy where links cannot be made), so only the GGUF takes disk."""
    for source in folder.rglob("*"):
        relative = source.relative_to(folder)
        if source.is_dir() or (relative.parts[0] == TRANSFORMER and source.name != "config.json"):
            continue
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    weights = sorted((folder / TRANSFORMER).glob("*.safetensors"))
    arch = "flux" if "Flux" in (folder / TRANSFORMER / "config.json").read_text(encoding="utf-8") else "sd3"
    write_q8_0_gguf(weights, out / TRANSFORMER / f"{folder.name}-Q8_0.gguf", arch, device)
    return out
