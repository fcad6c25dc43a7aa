"""A compiled UNet serves a stated set of shapes, compiled before the server says it is ready.

torch.compile compiles on a UNet's first call and again whenever a call's shapes fail the
guards of every graph it has: on the project's CPU a drawing at another size took 75 s, paid
under that request's deadline. So a compiled UNet here is compiled once, in the warm-up
(`compile_and_warm`), for one size at every batch the batching rule may give it, and then
runs compiled only for those shapes; any other call runs eager, never recompiling.

The batch dimension is dynamic (marked so before the first trace): one graph serves a UNet
batch from 2 rows up (one image with classifier-free guidance is 2 rows), since a batch
changes no kernel's shape but its outer loop. A row count of 1 (one image, guidance <= 1)
is outside it: dynamo specialises sizes 0 and 1. Width and height stay static: they shape
every convolution, and a dynamic size would cost every call what only a rare request needs.
On the CPU the convolution backend changes at 16 rows (a graph for 2-15 rows, another from 16:
the warm-up's full call compiles it when the batch reaches 16). The timestep goes in as float32 whatever the sampler (see `_float_timestep`), so one graph
serves every sampler too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from alice.engine.families import Family
from alice.engine.generate import BatchEntry, run_batch
from alice.engine.spec import GenerationSpec

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    from diffusers import DiffusionPipeline

logger = logging.getLogger("alice.engine")

WARM_UP_STEPS = 2  # the UNet compiles on its first call: more steps only cost time
WARM_UP_PROMPT = "warm-up"


@dataclass(frozen=True)
class CompiledShapes:
    """What a compiled UNet runs compiled: images of `width` x `height`, 1 to `max_images` to
    a pipeline call (the UNet sees twice the rows with guidance)."""

    width: int
    height: int
    max_images: int

    def public(self) -> dict[str, int]:
        return {"width": self.width, "height": self.height, "max_images": self.max_images}


@dataclass
class CompileRecord:
    """A compiled UNet's story: its shapes, the graphs compiled for it and how long that took,
    and its calls since, compiled or eager (outside the shapes)."""

    shapes: CompiledShapes
    graphs: int = 0
    seconds: float = 0.0
    compiled_calls: int = 0
    eager_calls: int = 0
    later_graphs: int = 0  # graphs compiled while serving requests: 0, by construction

    def public(self) -> dict[str, Any]:
        return {
            **self.shapes.public(), "graphs": self.graphs, "compile_seconds": round(self.seconds, 1),
            "compiled_calls": self.compiled_calls, "eager_calls": self.eager_calls,
            "recompiles": self.later_graphs,
        }


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (each compile or recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_and_warm(
    pipe: DiffusionPipeline, scheduler_config: Any, family: Family, shapes: CompiledShapes,
) -> CompileRecord:
    """Compile the pipeline's UNet (already compiled in place by `pipelines.compile_unet`,
    which is lazy) for `shapes`, by drawing: one image, which traces the UNet with its batch
    dimension dynamic, then a full call of `shapes.max_images`, which checks that graph serves
    it. From then on calls outside `shapes` run eager (see `_ShapeRouter`). Raises what the
    compile raises (no compiler, an inductor error); the UNet is then left eager."""
    router = _ShapeRouter.install(pipe, shapes)
    record = router.record
    before = graphs_compiled()
    started = time.perf_counter()
    try:
        with router.compiling():
            for images in dict.fromkeys((1, shapes.max_images)):
                spec = GenerationSpec(
                    prompt=WARM_UP_PROMPT, width=shapes.width, height=shapes.height, steps=WARM_UP_STEPS,
                    num_images=images, seed=0,
                )
                run_batch(pipe, scheduler_config, [BatchEntry(spec)], max_images=shapes.max_images, family=family)
    except Exception:
        uncompile(pipe)
        raise
    record.seconds = time.perf_counter() - started
    record.graphs = graphs_compiled() - before
    record.compiled_calls = record.eager_calls = 0  # the warm-up's own calls are not the service's
    logger.info(
        "compiled the UNet for %dx%d, 1-%d images a call: %d graph(s) in %.1f s",
        shapes.width, shapes.height, shapes.max_images, record.graphs, record.seconds,
    )
    return record


def compile_record(pipe: DiffusionPipeline) -> CompileRecord | None:
    """The record of a UNet `compile_and_warm` compiled; None for any other."""
    router = getattr(getattr(pipe, "unet", None), "_compiled_call_impl", None)
    return router.record if isinstance(router, _ShapeRouter) else None


def uncompile(pipe: DiffusionPipeline) -> None:
    """Leave a pipeline's UNet eager (after its compile failed)."""
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        unet._compiled_call_impl = None


class _ShapeRouter:
    """Stands in for a UNet's compiled call (`Module.__call__` calls `_compiled_call_impl`):
    a call of the compiled shapes goes to the compiled code, any other to the eager forward.

    Under the "eager_on_recompile" stance even a call that passes the shape check but fails
    some other guard runs eager instead of recompiling: no request ever waits for a compile.
    """

    def __init__(self, compiled: Callable[..., Any], eager: Callable[..., Any], latent: tuple[int, int],
                 shapes: CompiledShapes) -> None:
        self.compiled = compiled
        self.eager = eager
        self.latent = latent
        self.rows = (2, 2 * shapes.max_images)
        self.record = CompileRecord(shapes)
        self.stance = "eager_on_recompile"  # how calls of the shapes run once warm (tests: "fail_on_recompile")

    @classmethod
    def install(cls, pipe: DiffusionPipeline, shapes: CompiledShapes) -> _ShapeRouter:
        unet = pipe.unet
        compiled = unet._compiled_call_impl
        if isinstance(compiled, cls):
            compiled = compiled.compiled
        if compiled is None:
            raise ValueError("the UNet is not compiled (pipelines.compile_unet)")
        scale = pipe.vae_scale_factor
        router = cls(compiled, unet._call_impl, (shapes.height // scale, shapes.width // scale), shapes)
        unet._compiled_call_impl = router
        return router

    @contextlib.contextmanager
    def compiling(self) -> Any:
        """The warm-up's calls compile (the default stance)."""
        serving, self.stance = self.stance, "default"
        try:
            yield
        finally:
            self.stance = serving

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        sample = args[0] if args else kwargs.get("sample")
        if not self._fits(sample):
            self.record.eager_calls += 1
            return self.eager(*args, **kwargs)
        args, kwargs = _float_timestep(args, kwargs)
        _mark_batch_dynamic(args, kwargs)
        self.record.compiled_calls += 1
        with torch.compiler.set_stance(self.stance):
            return self.compiled(*args, **kwargs)

    def _fits(self, sample: Any) -> bool:
        shape = getattr(sample, "shape", None)
        return (
            shape is not None and len(shape) == 4 and tuple(shape[-2:]) == self.latent
            and self.rows[0] <= shape[0] <= self.rows[1]
        )


def _float_timestep(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The timestep as float32: DDIM's and DPM++'s are int64, Euler's float32, and dynamo guards
    on the dtype, so one graph would serve only half the samplers. The UNet embeds it as
    `timesteps.float()` anyway (diffusers' get_timestep_embedding), and every timestep (< 2^24)
    is exact in float32: the same embedding to the bit."""
    import torch

    if len(args) > 1:
        timestep = args[1]
        if isinstance(timestep, torch.Tensor) and not timestep.is_floating_point():
            args = (args[0], timestep.float(), *args[2:])
    elif isinstance(timestep := kwargs.get("timestep"), torch.Tensor) and not timestep.is_floating_point():
        kwargs = {**kwargs, "timestep": timestep.float()}
    return args, kwargs


def _mark_batch_dynamic(args: tuple, kwargs: dict) -> None:
    """Mark dim 0 of every batched input dynamic, so the first trace makes one graph for every
    batch. Marks matter only when dynamo traces; on a call served by a graph they cost nothing."""
    import torch

    tensors = [*args, *kwargs.values(), *(kwargs.get("added_cond_kwargs") or {}).values()]
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.dim() > 0 and tensor.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(tensor, 0)
