"""Working memory of the UNet families' parts, measured: where alice/engine/device.py's memory
constants come from.

    .venv/bin/python -m bench.memory                        # on the CPU: sd15, sd2, sdxl at 256/384/512 px
    .venv/bin/python -m bench.memory --write                # and write bench/memory_figures.json
    .venv/bin/python -m bench.memory --device cuda          # on a GPU: the real figure, in the card's dtype
    .venv/bin/python -m bench.memory --tiny --sizes 64,128  # tiny models, seconds (the tests do this)

For each UNet family's shipped architecture (alice/configs/<family>, random weights: the values do
not change what is allocated), it measures the working memory of
- one UNet step: batch 2 (classifier-free guidance), the family's text sequence (77 tokens; SDXL's
  pooled text and size conditioning too), under inference mode as the pipeline runs it;
- one VAE decode of one image (a batch decodes one image at a time: alice/engine/generate.py);
at each size, and fits `fixed + per_megapixel x megapixels` by least squares per family and part.
Working memory is what the call allocates beyond what was allocated before it (weights, inputs):
- on the CPU, activations by shape: the peak bytes of the tensors the call's ATen ops create that
  are alive at once (`LiveTensors`, a TorchDispatchMode that counts each new storage until its
  free), in float32 (`--dtype`), scaled to 16 bits (half) for device.py. Not the CPU allocator's
  peak: that one (torch.profiler's allocation events, tried first) was 130 MiB for all three
  UNets at 256 px, oneDNN's reordered copy of the largest conv weight (2560 x 1280 x 3 x 3 in
  float32, 118 MB), a CPU artifact the GPU does not have. Neither sees the GPU's cuDNN
  workspaces or allocator rounding: device.py adds MARGIN for those.
- on a GPU, `torch.cuda.max_memory_allocated` and `max_memory_reserved` over the call, less what
  was allocated and reserved before it (the cache emptied first), in the dtype ALICE picks for
  the card (`auto_dtype`): the real figure, margin included. `margin` in its output is the GPU's
  reserved slope over the CPU's 16-bit slope where the figures file has both.

Weights (every constant of device.py that is a size of weights) are read off the models built on
the meta device (no memory): parameters and buffers of each component, in 16 bits.

`measure()` returns the figures as data (bench/device_check.py calls it); `derive_constants()`
turns a figures file into device.py's constants, and tests/unit/test_memory_figures.py checks that
device.py holds exactly those.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import platform
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from bench.random_pipelines import CONFIGS, TINY_SIZES, default_dtype, model_components

FAMILIES = ("sd15", "sd2", "sdxl")
FIGURES = Path(__file__).with_name("memory_figures.json")
DEFAULT_SIZES = (256, 384, 512)
MEGAPIXEL = 1024 * 1024
GiB = 1024**3
TEXT_TOKENS = 77
MARGIN = 1.5  # assumed GPU/CPU ratio until a GPU run measures it (see device.py)
# Tiny UNet sizes for the tests (TINY_SIZES has none: bench.gpu's tiny runs use the transformer families).
TINY_UNET = {"layers_per_block": 1, "norm_num_groups": 8,
             "attention_head_dim": 2, "transformer_layers_per_block": 1, "addition_time_embed_dim": 8}


def build(family: str, part: str, device: str | torch.device, dtype: torch.dtype, tiny: bool = False) -> torch.nn.Module:
    """One component of alice/configs/<family> with random weights (uninitialised on `meta`)."""
    library, class_name = model_components(family)[part]
    cls = getattr(importlib.import_module(library), class_name)
    overrides: dict[str, Any] = dict(TINY_SIZES.get(class_name, {})) if tiny else {}
    if tiny and class_name == "UNet2DConditionModel":
        overrides.update(TINY_UNET)
        if family == "sdxl":  # the pooled text (tiny CLIP-G projection 32) and 6 size ids of 8
            overrides["projection_class_embeddings_input_dim"] = 32 + 6 * 8
            overrides["cross_attention_dim"] = 64
        else:
            overrides["cross_attention_dim"] = 32
    torch.manual_seed(0)
    # Built on the meta device, then given memory and filled with small random values: the values
    # change nothing allocated, and this is many times faster than each layer's own initialisation.
    with torch.device("meta"), default_dtype(dtype):
        if library == "diffusers":
            config = {**cls.load_config(str(CONFIGS / family / part)), **overrides}
            if tiny and class_name == "UNet2DConditionModel":  # as many widths as the family has blocks
                config["block_out_channels"] = [32 * min(i + 1, 2) for i in range(len(config["down_block_types"]))]
            model = cls.from_config(config).eval()
        else:
            from transformers import AutoConfig

            model = cls(AutoConfig.from_pretrained(str(CONFIGS / family / part), **overrides)).eval()
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device=device)
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.normal_(0, 0.02) if tensor.is_floating_point() else tensor.zero_()
    return model


def module_bytes(module: torch.nn.Module, value_bytes: int = 2) -> int:
    return sum(t.numel() for t in (*module.parameters(), *module.buffers())) * value_bytes


def largest_leaf(module: torch.nn.Module, value_bytes: int = 2) -> int:
    """The largest module with no children: what sequential offload moves onto the card at once."""
    return max(
        (sum(t.numel() for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))) * value_bytes
         for m in module.modules() if not list(m.children())),
        default=0,
    )


def weight_figures(family: str) -> dict[str, Any]:
    """16-bit bytes of every component, built on the meta device."""
    parts = {}
    leaf = 0
    for part in model_components(family):
        model = build(family, part, "meta", torch.float32)
        parts[part] = module_bytes(model)
        leaf = max(leaf, largest_leaf(model))
    return {"parts": parts, "total": sum(parts.values()), "largest_leaf": leaf}


# -- measuring a call -----------------------------------------------------------------------------
class LiveTensors(TorchDispatchMode):
    """Counts the bytes of every storage an ATen op creates while the mode is on, until that
    storage is freed (its Python object is kept alive with it, so a weakref finalizer sees the
    free): the live activations at each moment, and their peak. What a kernel allocates for
    itself and frees before it returns (oneDNN's reordered copies of conv weights, SDPA's
    per-thread buffers, cuDNN's workspaces on a GPU) is not an op's output and is not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        # An output that shares an input's storage (a view, an in-place op) allocated nothing.
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for value in pytree.tree_leaves(out):
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                storage = value.untyped_storage()
                key = id(storage)
                if key not in self._seen and storage.data_ptr() not in inputs:
                    self._seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
        return out

    def _freed(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes


def cpu_peak(call: Callable[[], object]) -> int:
    """Peak bytes of the tensors `call` creates that are alive at once (LiveTensors): its
    activations by shape, whatever device it runs on."""
    tracker = LiveTensors()
    with tracker:
        result = call()
    del result
    return tracker.peak


def cuda_peak(call: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """(allocated, reserved): peak bytes over `call` beyond those before it."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = call()
    torch.cuda.synchronize(device)
    del result
    return (torch.cuda.max_memory_allocated(device) - allocated, torch.cuda.max_memory_reserved(device) - reserved)


def unet_inputs(unet: torch.nn.Module, size: int, batch: int = 2) -> dict[str, Any]:
    """One denoising step's arguments as the pipeline hands them (batch 2: CFG's two halves)."""
    config = unet.config
    device, dtype = unet.device, unet.dtype
    latent = size // 8
    inputs: dict[str, Any] = {
        "sample": torch.randn(batch, config.in_channels, latent, latent, device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, config.cross_attention_dim, device=device,
                                             dtype=dtype),
    }
    if config.addition_embed_type == "text_time":
        time_ids = 6 * config.addition_time_embed_dim
        pooled = config.projection_class_embeddings_input_dim - time_ids
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, device=device, dtype=dtype),
        }
    return inputs


def _decoder_shape(family: str) -> str:
    """What decides a VAE's working memory: its decoder's layout, not its scaling factor."""
    config = json.loads((CONFIGS / family / "vae" / "config.json").read_text(encoding="utf-8"))
    keys = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "up_block_types",
            "mid_block_add_attention", "out_channels")
    return json.dumps([config.get(key) for key in keys])


def measure_part(model: torch.nn.Module, part: str, size: int, device: torch.device) -> dict[str, int]:
    """Working bytes of one UNet step (batch 2) or one VAE decode (one image) at size x size."""
    if part == "unet":
        inputs = unet_inputs(model, size)
        call = lambda: model(**inputs, return_dict=False)[0]  # noqa: E731
    else:
        latents = torch.randn(1, model.config.latent_channels, size // 8, size // 8, device=device,
                              dtype=model.dtype)
        call = lambda: model.decode(latents, return_dict=False)[0]  # noqa: E731
    with torch.inference_mode():
        if device.type == "cuda":
            call()  # the first call picks its kernels and workspaces: measure the steady state
            allocated, reserved = cuda_peak(call, device)
            return {"allocated": allocated, "reserved": reserved}
        return {"allocated": cpu_peak(call)}


def fit(points: list[tuple[int, int]]) -> dict[str, float]:
    """Least squares `bytes = fixed + per_megapixel x megapixels` over (pixels, bytes) points."""
    xs = [pixels / MEGAPIXEL for pixels, _ in points]
    ys = [float(value) for _, value in points]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread if spread else (mean_y / mean_x)
    fixed = mean_y - slope * mean_x if spread else 0.0
    return {"fixed": fixed, "per_megapixel": slope}


def measure(
    families: tuple[str, ...] = FAMILIES,
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    tiny: bool = False,
    log: Callable[[str], None] = lambda line: print(line, flush=True),
) -> dict[str, Any]:
    """The figures as data: per family its weights and, per part (unet, vae), the working bytes
    at each size with their fit (in the measured dtype, and per 16-bit value as `*_16bit`)."""
    target = torch.device(device)
    if dtype is None:
        dtype = torch.float32
        if target.type == "cuda":
            from alice.engine.device import auto_dtype, read_device_facts

            dtype = auto_dtype(read_device_facts(str(target)))
    value_bytes = torch.tensor([], dtype=dtype).element_size()
    torch.set_flush_denormal(True)  # small random weights must not slow the CPU with denormals
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(target) if target.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "sizes": list(sizes),
        "tiny": tiny,
        "method": "torch.cuda max_memory_allocated/reserved" if target.type == "cuda"
        else "LiveTensors (TorchDispatchMode): peak bytes of the ATen ops' new tensors alive at once",
        "families": {},
    }
    if target.type == "cuda":
        free, total = torch.cuda.mem_get_info(target)
        figures["cuda_context"] = total - free  # before any tensor of ours: the context and other processes
    decoders: dict[str, str] = {}  # a VAE architecture already measured -> the family it was measured for
    for family in families:
        entry: dict[str, Any] = {"weights": weight_figures(family) if not tiny else {}}
        for part in ("unet", "vae"):
            if part == "vae":
                same = decoders.setdefault(_decoder_shape(family), family)
                if same != family:  # SD 1.5, SD 2.x and SDXL share one decoder architecture
                    entry[part] = {**figures["families"][same][part], "same_as": same}
                    log(f"{family} vae: the same decoder as {same}'s")
                    continue
            started = time.perf_counter()
            points = {}
            try:  # an error (out of memory on a small card) ends this part only
                model = build(family, part, target, dtype, tiny)
                for size in sizes:
                    points[size] = measure_part(model, part, size, target)
                    log(f"  {family} {part} {size}x{size}: " + ", ".join(
                        f"{name} {value / 2**20:.0f} MiB" for name, value in points[size].items()))
            except Exception as exc:  # noqa: BLE001
                entry[part] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                               "points": {str(size): values for size, values in points.items()}}
                log(f"{family} {part}: {entry[part]['error']}")
                continue
            finally:
                model = None
                gc.collect()
                if target.type == "cuda":
                    torch.cuda.empty_cache()
            measured = {"points": {str(size): values for size, values in points.items()}}
            for kind in points[sizes[0]]:
                line = fit([(size * size, values[kind]) for size, values in points.items()])
                measured[f"fit_{kind}"] = line
                measured[f"fit_{kind}_16bit"] = {k: v * 2 / value_bytes for k, v in line.items()}
            entry[part] = measured
            log(f"{family} {part}: " + "; ".join(
                f"{kind}: {fixed / 2**20:.0f} MiB + {slope / GiB:.3f} GiB per megapixel in 16 bits"
                for kind, (fixed, slope) in (
                    (key.removeprefix("fit_").removesuffix("_16bit"), tuple(value.values()))
                    for key, value in measured.items() if key.endswith("_16bit"))
            ) + f" ({time.perf_counter() - started:.0f} s)")
        figures["families"][family] = entry
    return figures


# -- device.py's constants -------------------------------------------------------------------------
def derive_constants(figures: dict[str, Any], margin: float = MARGIN) -> dict[str, Any]:
    """device.py's constants from a CPU figures file: working memory in 16 bits times `margin`,
    (fixed, per megapixel) rounded to MiB; weights in 16-bit bytes."""
    families = figures["families"]

    def working(measured: dict[str, Any]) -> tuple[int, int]:
        line = measured["fit_allocated_16bit"]
        return (round(max(0.0, line["fixed"]) * margin / 2**20) * 2**20,
                round(line["per_megapixel"] * margin / 2**20) * 2**20)

    # SD 1.5, SD 2.x and SDXL share the VAE's decoder (its widths); the largest measured is kept.
    vaes = [working(families[f]["vae"]) for f in families]
    return {
        "WEIGHTS_16BIT": {f: e["weights"]["total"] for f, e in families.items()},
        "UNET_16BIT": {f: e["weights"]["parts"]["unet"] for f, e in families.items()},
        "VAE_16BIT": max(e["weights"]["parts"]["vae"] for e in families.values()),
        "SEQUENTIAL_LAYER": max(e["weights"]["largest_leaf"] for e in families.values()),
        "UNET_WORKING": {f: working(e["unet"]) for f, e in families.items()},
        "VAE_WORKING": max(vaes, key=lambda line: line[0] + line[1]),
    }


def as_python(constants: dict[str, Any]) -> str:
    """The constants as device.py writes them."""
    def working(line: tuple[int, int]) -> str:
        return f"Working({line[0] // 2**20} * MiB, {line[1] // 2**20} * MiB)"

    unet = ", ".join(f'"{f}": {working(line)}' for f, line in constants["UNET_WORKING"].items())
    return "\n".join([
        f"WEIGHTS_16BIT = {constants['WEIGHTS_16BIT']}".replace("'", '"'),
        f"UNET_16BIT = {constants['UNET_16BIT']}".replace("'", '"'),
        f"VAE_16BIT = {constants['VAE_16BIT']}",
        f"UNET_WORKING = {{{unet}}}",
        f"VAE_WORKING = {working(constants['VAE_WORKING'])}",
        f"SEQUENTIAL_LAYER = {constants['SEQUENTIAL_LAYER']}",
    ])


def margins(cpu: dict[str, Any], gpu: dict[str, Any]) -> dict[str, float]:
    """The GPU's reserved per-megapixel slope over the CPU's 16-bit one, per family and part:
    what MARGIN stands in for."""
    ratios = {}
    for family, entry in gpu["families"].items():
        for part in ("unet", "vae"):
            cpu_slope = cpu["families"].get(family, {}).get(part, {}).get("fit_allocated_16bit", {}).get("per_megapixel")
            if cpu_slope and "fit_reserved_16bit" in entry[part]:
                ratios[f"{family} {part}"] = entry[part]["fit_reserved_16bit"]["per_megapixel"] / cpu_slope
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (the CPU's default), float16, bfloat16")
    parser.add_argument("--tiny", action="store_true", help="tiny models (the tests)")
    parser.add_argument("--write", type=Path, nargs="?", const=FIGURES, default=None,
                        help=f"write the figures as JSON (default {FIGURES.name})")
    args = parser.parse_args()
    figures = measure(
        tuple(args.families.split(",")), tuple(int(s) for s in args.sizes.split(",")), args.device,
        getattr(torch, args.dtype) if args.dtype else None, args.tiny,
    )
    if figures["dtype"] == "float32" and not args.tiny and args.device == "cpu":
        print("device.py:\n" + as_python(derive_constants(figures)))
    elif FIGURES.exists() and args.device != "cpu":
        print("GPU reserved / CPU 16-bit slope:", json.dumps(margins(json.loads(FIGURES.read_text()), figures)))
    if args.write:
        args.write.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
