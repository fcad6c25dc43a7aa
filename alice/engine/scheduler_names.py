"""Scheduler (sampler) names as SD users say them: the engine's words, data only (no torch), so
the protocol checks clients' names with them without diffusers. The engine maps each canonical
name to a diffusers class (alice/engine/schedulers.py)."""

from __future__ import annotations

# One UNet call a step. DPM++ SDE Karras (the default before) is second order: two calls a step,
# 49 for 25 steps, for the same held-out accuracy on the demo model (bench/schedulers.py,
# bench/RESULTS.md). Every name stays accepted; SAM sends its own (ddim).
DEFAULT_SCHEDULER = "dpm++_2m_karras"

# Canonical name -> the "Sampler:" name AUTOMATIC1111 writes into PNG metadata.
A1111_SAMPLERS: dict[str, str] = {
    "ddim": "DDIM",
    "pndm": "PLMS",
    "lms": "LMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpm++": "DPM++ 2M",
    "dpm++_karras": "DPM++ 2M Karras",
    "dpm++_sde": "DPM++ SDE",
    "dpm++_sde_karras": "DPM++ SDE Karras",
    "dpm++_2m": "DPM++ 2M",
    "dpm++_2m_karras": "DPM++ 2M Karras",
    "heun": "Heun",
    "unipc": "UniPC",
    "lcm": "LCM",
}
ALIASES = {"euler_ancestral": "euler_a"}
# The names the UNet families (SD 1.x, 2.x, XL) draw with: their noise-prediction samplers.
SD_SCHEDULERS = tuple(A1111_SAMPLERS)

# The transformer families are flow-matching models: the samplers that integrate their velocity
# field. "flow-euler" is the pipeline's own FlowMatchEulerDiscreteScheduler, as its folder
# configures it; the others are diffusers' multistep solvers in their flow-sigma mode, offered
# per family only where that family's pipeline drives them with the same shifted schedule
# (alice/engine/families.py). A1111 (Forge) writes the same sampler names for flow models.
FLOW_SAMPLERS: dict[str, str] = {
    "flow-euler": "Euler",
    "flow-dpmpp-2m": "DPM++ 2M",
    "flow-unipc": "UniPC",
}
FLOW_SCHEDULERS = tuple(FLOW_SAMPLERS)
# An SD sampler name asked of a flow-matching model: the same solver on its flow, as A1111/Forge
# and ComfyUI read a sampler name whatever the model. DDIM (eta 0) is Euler's method there: on
# x_t = (1 - t) x0 + t noise its update (1 - t') x0_hat + t' noise_hat is x_t + (t' - t) v. So
# SAM, which always sends `ddim`, draws a FLUX model with flow-euler; the answer names it.
FLOW_EQUIVALENTS: dict[str, str] = {
    "ddim": "flow-euler",
    "euler": "flow-euler",
    "dpm++": "flow-dpmpp-2m",
    "dpm++_2m": "flow-dpmpp-2m",
    "unipc": "flow-unipc",
}
SCHEDULER_NAMES = sorted([*A1111_SAMPLERS, *ALIASES, *FLOW_SAMPLERS])

# A1111 writes the sampler's display name; several of ours share one, the later (explicit) name wins.
# Read back as SD names only (a flow model's "Euler" reads back as "euler", which a flow model
# refuses by name: the client sees which it has).
_SCHEDULER_BY_SAMPLER = {sampler: name for name, sampler in A1111_SAMPLERS.items()}


class UnknownScheduler(ValueError):
    """The request named a scheduler ALICE does not have."""


def canonical_scheduler_name(name: str) -> str:
    """The canonical name for a case-insensitive name or alias; UnknownScheduler otherwise."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in A1111_SAMPLERS and key not in FLOW_SAMPLERS:
        raise UnknownScheduler(f"unknown scheduler '{name}'; accepted: {', '.join(SCHEDULER_NAMES)}")
    return key


def a1111_sampler_name(name: str) -> str:
    """A1111's name for a canonical scheduler name."""
    return A1111_SAMPLERS.get(name) or FLOW_SAMPLERS[name]


def scheduler_for_sampler(sampler: str) -> str | None:
    """Our name for A1111's "Sampler:" name, or None for one we do not have."""
    return _SCHEDULER_BY_SAMPLER.get(sampler)
