"""Scheduler (sampler) names as SD users say them, mapped to diffusers schedulers.

A fresh scheduler is built for every request from the pipeline's own scheduler config:
the pipeline object is shared between requests, its scheduler holds per-run state.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # diffusers is imported when a scheduler is built: see alice/engine/__init__.py
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

# One UNet call a step. DPM++ SDE Karras (the default before) is second order: two calls a step,
# 49 for 25 steps, for the same held-out accuracy on the demo model (bench/schedulers.py,
# bench/RESULTS.md). Every name stays accepted; SAM sends its own (ddim).
DEFAULT_SCHEDULER = "dpm++_2m_karras"

# torchsde warns on every DPM++ SDE run when the last timestep exceeds its interval by a
# float rounding error; it is harmless and would flood the logs.
warnings.filterwarnings("ignore", message="Should have tb<=t1", category=UserWarning)


@dataclass(frozen=True)
class SchedulerSpec:
    class_name: str  # of a diffusers scheduler
    a1111_name: str  # the "Sampler:" name AUTOMATIC1111 writes into PNG metadata
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> type[SchedulerMixin]:
        import diffusers

        return getattr(diffusers, self.class_name)


_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}

SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler", "DDIM"),
    "pndm": SchedulerSpec("PNDMScheduler", "PLMS", {"skip_prk_steps": True}),  # as SD ships it
    "lms": SchedulerSpec("LMSDiscreteScheduler", "LMS"),
    "euler": SchedulerSpec("EulerDiscreteScheduler", "Euler"),
    "euler_a": SchedulerSpec("EulerAncestralDiscreteScheduler", "Euler a"),
    "dpm++": SchedulerSpec("DPMSolverMultistepScheduler", "DPM++ 2M", _DPMPP_2M),
    "dpm++_karras": SchedulerSpec("DPMSolverMultistepScheduler", "DPM++ 2M Karras", {**_DPMPP_2M, **_KARRAS}),
    "dpm++_sde": SchedulerSpec("DPMSolverSDEScheduler", "DPM++ SDE"),
    "dpm++_sde_karras": SchedulerSpec("DPMSolverSDEScheduler", "DPM++ SDE Karras", _KARRAS),
    "dpm++_2m": SchedulerSpec("DPMSolverMultistepScheduler", "DPM++ 2M", _DPMPP_2M),
    "dpm++_2m_karras": SchedulerSpec("DPMSolverMultistepScheduler", "DPM++ 2M Karras", {**_DPMPP_2M, **_KARRAS}),
    "heun": SchedulerSpec("HeunDiscreteScheduler", "Heun"),
    "unipc": SchedulerSpec("UniPCMultistepScheduler", "UniPC"),
    "lcm": SchedulerSpec("LCMScheduler", "LCM"),
}
ALIASES = {"euler_ancestral": "euler_a"}
SCHEDULER_NAMES = sorted([*SCHEDULERS, *ALIASES])


class UnknownScheduler(ValueError):
    """The request named a scheduler ALICE does not have."""


def canonical_scheduler_name(name: str) -> str:
    """The canonical name for a case-insensitive name or alias; UnknownScheduler otherwise."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in SCHEDULERS:
        raise UnknownScheduler(f"unknown scheduler '{name}'; accepted: {', '.join(SCHEDULER_NAMES)}")
    return key


def build_scheduler(name: str, base_config: Any, seed: int | list[int]) -> SchedulerMixin:
    """A new scheduler of that kind configured like the model's own.

    DPM++ SDE draws its noise from the global RNG unless its noise sampler is seeded,
    which would make seeded requests unrepeatable. For a batch, `seed` lists one seed per
    image: diffusers' BatchedBrownianTree then gives each image its own tree.
    """
    spec = SCHEDULERS[canonical_scheduler_name(name)]
    options = dict(spec.options)
    if spec.class_name == "DPMSolverSDEScheduler":
        options["noise_sampler_seed"] = seed
    return spec.cls.from_config(base_config, **options)


def a1111_sampler_name(name: str) -> str:
    return SCHEDULERS[canonical_scheduler_name(name)].a1111_name
