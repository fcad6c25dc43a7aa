"""The diffusers scheduler for each of ALICE's scheduler names (alice/engine/scheduler_names.py).

A fresh scheduler is built for every request from the pipeline's own scheduler config:
the pipeline object is shared between requests, its scheduler holds per-run state.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # diffusers is imported when a scheduler is built: see alice/engine/__init__.py
    from diffusers.schedulers.scheduling_utils import SchedulerMixin

from alice.engine.scheduler_names import A1111_SAMPLERS, FLOW_SAMPLERS

# torchsde warns on every DPM++ SDE run when the last timestep exceeds its interval by a
# float rounding error; it is harmless and would flood the logs.
warnings.filterwarnings("ignore", message="Should have tb<=t1", category=UserWarning)


@dataclass(frozen=True)
class SchedulerSpec:
    class_name: str  # of a diffusers scheduler
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> type[SchedulerMixin]:
        import diffusers

        return getattr(diffusers, self.class_name)


_KARRAS = {"use_karras_sigmas": True}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}

SCHEDULERS: dict[str, SchedulerSpec] = {
    "ddim": SchedulerSpec("DDIMScheduler"),
    "pndm": SchedulerSpec("PNDMScheduler", {"skip_prk_steps": True}),  # as SD ships it
    "lms": SchedulerSpec("LMSDiscreteScheduler"),
    "euler": SchedulerSpec("EulerDiscreteScheduler"),
    "euler_a": SchedulerSpec("EulerAncestralDiscreteScheduler"),
    "dpm++": SchedulerSpec("DPMSolverMultistepScheduler", _DPMPP_2M),
    "dpm++_karras": SchedulerSpec("DPMSolverMultistepScheduler", {**_DPMPP_2M, **_KARRAS}),
    "dpm++_sde": SchedulerSpec("DPMSolverSDEScheduler"),
    "dpm++_sde_karras": SchedulerSpec("DPMSolverSDEScheduler", _KARRAS),
    "dpm++_2m": SchedulerSpec("DPMSolverMultistepScheduler", _DPMPP_2M),
    "dpm++_2m_karras": SchedulerSpec("DPMSolverMultistepScheduler", {**_DPMPP_2M, **_KARRAS}),
    "heun": SchedulerSpec("HeunDiscreteScheduler"),
    "unipc": SchedulerSpec("UniPCMultistepScheduler"),
    "lcm": SchedulerSpec("LCMScheduler"),
}
# The flow-matching solvers: their shift (and dynamic shifting) are taken from the model's own
# FlowMatchEulerDiscreteScheduler config in `build_scheduler`.
FLOW_SCHEDULERS: dict[str, SchedulerSpec] = {
    "flow-euler": SchedulerSpec("FlowMatchEulerDiscreteScheduler"),
    "flow-dpmpp-2m": SchedulerSpec("DPMSolverMultistepScheduler", _DPMPP_2M),
    "flow-unipc": SchedulerSpec("UniPCMultistepScheduler"),
}
# Every name the protocol accepts draws with something, and nothing else is here.
assert SCHEDULERS.keys() == A1111_SAMPLERS.keys(), "alice/engine/scheduler_names.py and this table disagree"
assert FLOW_SCHEDULERS.keys() == FLOW_SAMPLERS.keys(), "alice/engine/scheduler_names.py and this table disagree"


def build_scheduler(name: str, base_config: Any, seed: int | list[int]) -> SchedulerMixin:
    """A new scheduler of that kind configured like the model's own.

    DPM++ SDE draws its noise from the global RNG unless its noise sampler is seeded,
    which would make seeded requests unrepeatable. For a batch, `seed` lists one seed per
    image: diffusers' BatchedBrownianTree then gives each image its own tree.
    """
    if name in FLOW_SCHEDULERS:
        return _flow_scheduler(FLOW_SCHEDULERS[name], base_config)
    spec = SCHEDULERS[name]  # a canonical name: the protocol checked the client's
    options = dict(spec.options)
    if spec.class_name == "DPMSolverSDEScheduler":
        options["noise_sampler_seed"] = seed
    return spec.cls.from_config(base_config, **options)


def _flow_scheduler(spec: SchedulerSpec, base_config: Any) -> SchedulerMixin:
    """flow-euler: the model's own scheduler, rebuilt from its config (so the same as the bare
    pipeline's, bit for bit). The others in diffusers' flow-sigma mode with the model's shift:
    a fixed `shift` becomes `flow_shift`; with dynamic shifting the pipeline passes `mu` per
    image size, which they turn into the shift (`time_shift_type` "exponential", as FLUX's)."""
    if spec.class_name == "FlowMatchEulerDiscreteScheduler":
        return spec.cls.from_config(base_config)
    return spec.cls(
        num_train_timesteps=base_config.get("num_train_timesteps", 1000),
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=base_config.get("shift", 1.0),
        use_dynamic_shifting=base_config.get("use_dynamic_shifting", False),
        time_shift_type=base_config.get("time_shift_type", "exponential"),
        **spec.options,
    )
