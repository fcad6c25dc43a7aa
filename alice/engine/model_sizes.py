"""A transformer-family model folder's parts as the memory planner needs them (presets.py),
read from the weights' headers before any weight is loaded.

The planner works in 16-bit bytes: a float32 file counts as half its size, a GGUF file as
itself (it stays quantized in memory). Parameter counts tell models of one family apart
(SD 3.5 Large from Medium, FLUX.2 Klein 9B from 4B).
"""

from __future__ import annotations

import json
from pathlib import Path

from alice.engine.memory_figures import FAMILY_FIGURES
from alice.engine.presets import PresetInputs, reference_inputs
from alice.engine.transformer_files import TRANSFORMER, is_nf4_folder, transformer_file_in


def preset_inputs(folder: Path, family: str) -> PresetInputs:
    """The planner's inputs for a stored model of a transformer family; the family's released
    checkpoint's figures for any part whose files say nothing (a header that cannot be read)."""
    file = transformer_file_in(folder)
    quantized = None
    if file is not None and file.suffix.lower() == ".gguf":
        params, transformer_bytes, quantized = _gguf_params(file), file.stat().st_size, "gguf"
    elif is_nf4_folder(folder / TRANSFORMER):  # saved by diffusers with a BitsAndBytesConfig: as stored
        files = sorted((folder / TRANSFORMER).glob("*.safetensors"))
        params = sum(_safetensors_params(f, skip=_NF4_STATE, per_byte=2) for f in files)  # two 4-bit weights a byte
        transformer_bytes, quantized = sum(f.stat().st_size for f in files), "nf4"
    else:
        files = [file] if file is not None else sorted((folder / TRANSFORMER).glob("*.safetensors"))
        params = sum(_safetensors_params(f) for f in files)
        transformer_bytes = 2 * params
    encoders = {
        name: 2 * sum(_safetensors_params(f) for f in sorted((folder / name).glob("*.safetensors")))
        for name in _components(folder) if name.startswith("text_encoder")
    }
    figures = FAMILY_FIGURES[family].text_encoders
    # A part with no .safetensors (a GGUF T5, dequantized to 16 bits as it loads): the family's figure.
    encoders = {name: size or figures.get(name, 0) for name, size in encoders.items()}
    return reference_inputs(
        family,
        transformer_bytes=transformer_bytes or None,
        quantized=quantized,
        transformer_params=params or None,
        # A part with no .safetensors (a GGUF T5, dequantized to 16 bits as it loads): the family's figure.
        text_encoders={name: size for name, size in encoders.items() if size} or None,
    )


def _components(folder: Path) -> list[str]:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return []
    return [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]


# The quantization state beside each NF4 weight (`.absmax`, `.quant_map`, `.quant_state.*`): no weights.
_NF4_STATE = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4")


def _safetensors_params(path: Path, skip: tuple[str, ...] = (), per_byte: int = 1) -> int:
    """Elements in a .safetensors file, from its JSON header (8-byte length, then the header)."""
    try:
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little")
            header = json.loads(file.read(length))
    except (OSError, ValueError):
        return 0
    total = 0
    for name, entry in header.items():
        if name != "__metadata__" and not name.endswith(skip):
            count = 1
            for side in entry.get("shape", []):
                count *= side
            if entry.get("dtype") == "U8":  # packed weights (NF4: per_byte 2)
                count *= per_byte
            total += count
    return total


def _gguf_params(path: Path) -> int:
    import gguf

    try:
        return sum(int(tensor.n_elements) for tensor in gguf.GGUFReader(str(path)).tensors)
    except Exception:  # an unreadable file was refused at import; the figures stand in
        return 0
