"""A transformer-family model folder's parts as the memory planner needs them (presets.py),
read from the weights' headers before any weight is loaded.

The planner works in 16-bit bytes: a float32 file counts as half its size, a GGUF file as
itself (it stays quantized in memory). Parameter counts tell models of one family apart
(SD 3.5 Large from Medium, FLUX.2 Klein 9B from 4B).
"""

from __future__ import annotations

import json
from pathlib import Path

from alice.engine.presets import PresetInputs, reference_inputs
from alice.engine.transformer_files import TRANSFORMER, transformer_file_in


def preset_inputs(folder: Path, family: str) -> PresetInputs:
    """The planner's inputs for a stored model of a transformer family; the family's released
    checkpoint's figures for any part whose files say nothing (a header that cannot be read)."""
    file = transformer_file_in(folder)
    quantized = None
    if file is not None and file.suffix.lower() == ".gguf":
        params, transformer_bytes, quantized = _gguf_params(file), file.stat().st_size, "gguf"
    else:
        files = [file] if file is not None else sorted((folder / TRANSFORMER).glob("*.safetensors"))
        params = sum(_safetensors_params(f) for f in files)
        transformer_bytes = 2 * params
    encoders = {
        name: 2 * sum(_safetensors_params(f) for f in sorted((folder / name).glob("*.safetensors")))
        for name in _components(folder) if name.startswith("text_encoder")
    }
    return reference_inputs(
        family,
        transformer_bytes=transformer_bytes or None,
        quantized=quantized,
        transformer_params=params or None,
        text_encoders={name: size for name, size in encoders.items() if size} or None,
    )


def _components(folder: Path) -> list[str]:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return []
    return [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]


def _safetensors_params(path: Path) -> int:
    """Elements in a .safetensors file, from its JSON header (8-byte length, then the header)."""
    try:
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(length))
    except (OSError, ValueError):
        return 0
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            count = 1
            for side in entry.get("shape", []):
                count *= side
            total += count
    return total


def _gguf_params(path: Path) -> int:
    import gguf

    try:
        return sum(int(tensor.n_elements) for tensor in gguf.GGUFReader(str(path)).tensors)
    except Exception:  # an unreadable file was refused at import; the figures stand in
        return 0
