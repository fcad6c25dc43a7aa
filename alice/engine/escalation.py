"""After an out-of-memory error: the next cheaper layout of a loaded model, decided as a pure
function of its layout, the operator's settings and the image's size.

The presets are planned from estimates (alice/engine/device.py, presets.py), which no card has
yet confirmed; when one image still runs out of memory in the planned layout, the engine lays the
model out one step cheaper and draws it again, and keeps that layout for images of that size and
larger (alice/engine/pipelines.py). The steps, cheapest change first:
- VAE tiling: decode in tiles of `SMALLEST_TILE` where that tiles this image (smaller images
  decode whole whatever the setting, so the step is skipped for them);
- the next offload: for the UNet families none -> model -> sequential (resolve_preset's order),
  for the transformer families presets.LAYOUTS (gpu -> text-offloaded -> text-cpu -> model ->
  group -> sequential), each keeping the tiling it had.
Only `auto` settings move: an explicit ALICE_VAE_TILING or ALICE_CPU_OFFLOAD pins its part, and
`note` says when that is what stopped the escalation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from alice.engine.device import SMALLEST_TILE, MemoryOptions, MemoryPreset
from alice.engine.presets import DESCRIPTIONS, LAYOUTS, OFFLOAD, WHOLE_TRANSFORMER, Layout, layout_parts

UNET_OFFLOADS = ("none", "model", "sequential")


@dataclass(frozen=True)
class Escalation:
    """The next cheaper layout (None: there is none) and what changed, or why nothing can."""

    preset: MemoryPreset | None
    note: str


def layout_of(preset: MemoryPreset) -> str:
    """A layout's offload step: a UNet family's `cpu_offload`, a transformer family's name in
    presets.LAYOUTS ("cpu" for a transformer family on the CPU, which has no other)."""
    if not preset.parts:
        return preset.cpu_offload
    where = dict(preset.parts)
    places = set(where.values())
    if places == {"cpu"}:
        return "cpu"
    if places == {"gpu"}:
        return "gpu"
    if len(places) == 1:
        return places.pop()  # model or sequential: whole-pipeline
    if where.get("transformer") == "gpu" and "cpu" in places:
        return "text-cpu"  # the text encoders run in RAM beside a card
    return "group" if where.get("transformer") == "group" else "text-offloaded"


def layout_name(preset: MemoryPreset) -> str:
    """Short and bounded (a metrics label): the offload step, `+tiling` when the VAE tiles."""
    return layout_of(preset) + ("+tiling" if preset.vae_tiling_above else "")


def layout_rank(preset: MemoryPreset) -> tuple[int, int]:
    """Orders layouts by what they keep on the card: a higher rank is cheaper."""
    order: tuple[str, ...] = LAYOUTS if preset.parts else UNET_OFFLOADS
    step = layout_of(preset)
    tile = preset.vae_tiling_above
    return (order.index(step) if step in order else 0, 1_000_000 - tile if tile else 0)


def cheaper_layout(
    current: MemoryPreset, options: MemoryOptions, *, gpu: bool, width: int, height: int
) -> Escalation:
    """The next cheaper layout than `current` for a `width` x `height` image, or why none is left.
    `gpu`: whether the device is a card (on the CPU nothing can be offloaded to)."""
    side = max(width, height)
    decoded_side = current.vae_tiling_above if current.vae_tiling_above and side > current.vae_tiling_above else side
    if decoded_side > SMALLEST_TILE:  # tiling would decode smaller pieces of this image
        if options.vae_tiling == "auto":
            note = f"VAE tiling above {SMALLEST_TILE} px"
            reason = f"{current.reason}; {note} after running out of memory" if current.reason else ""
            return Escalation(replace(current, vae_tiling_above=SMALLEST_TILE, reason=reason), note)
        pinned_tiling = f"ALICE_VAE_TILING={str(options.vae_tiling).lower()} is set explicitly: no VAE tiling is tried"
    else:
        pinned_tiling = ""
    step = layout_of(current)
    order: tuple[str, ...] = LAYOUTS if current.parts else UNET_OFFLOADS
    if options.compile_unet and not current.parts:
        order = order[:-1]  # a compiled UNet does not go with sequential offload (pipelines.compile_refusal)
    if current.quantize == "nf4":
        order = WHOLE_TRANSFORMER  # an NF4 transformer is never streamed block by block (presets.py)
    following = order[order.index(step) + 1:] if step in order else ()
    if not gpu or not following:
        why = "on the CPU nothing can be offloaded" if not gpu else f"{layout_name(current)} is the cheapest layout"
        return Escalation(None, "; ".join(filter(None, [pinned_tiling, why])))
    if options.cpu_offload != "auto":
        pinned = f"ALICE_CPU_OFFLOAD={options.cpu_offload} is set explicitly: no other offload is tried"
        return Escalation(None, "; ".join(filter(None, [pinned_tiling, pinned])))
    nxt = following[0]
    if not current.parts:
        cheaper = replace(current, cpu_offload=nxt)
    else:
        encoders = tuple(name for name, _ in current.parts if name not in ("transformer", "vae"))
        layout: Layout = nxt  # type: ignore[assignment]
        # Pinned copies for streams double the RAM of what is streamed: not after running out of memory.
        cheaper = replace(
            current, cpu_offload=OFFLOAD[layout], parts=layout_parts(encoders, layout), pin_streams=False,
            # `needs` stays the planned layout's: more card than this one takes, so the cache errs safe.
            reason=f"{current.family}: {DESCRIPTIONS[layout]} after running out of memory (planned: {current.reason})",
        )
    return Escalation(cheaper, f"{nxt} offload")
