"""How often the demo model draws what it is asked, on combinations it never saw in training.

Generation goes through the engine's own `run_generation`, with the service's defaults for
everything the caller does not choose, so the numbers are what a user of ALICE gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from alice.demo_training.judge import Verdict, judge
from alice.demo_training.shapes import Scene, evaluation_prompts, training_scenes
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline


@dataclass
class Evaluation:
    results: list[tuple[Scene, str, Verdict]] = field(default_factory=list)  # scene, prompt, verdict

    def shares(self, sizes: tuple[str, ...] | None = None) -> dict[str, float]:
        """The share of pictures that pass each check, by the check's name; `sizes` keeps only
        the prompts of those sizes ("" is the default size, the medium one)."""
        results = [result for result in self.results if sizes is None or result[0].size in sizes]
        count = max(len(results), 1)
        return {
            name: sum(check(scene, verdict) for scene, _, verdict in results) / count
            for name, check in CHECKS.items()
        }

    def count(self, sizes: tuple[str, ...]) -> int:
        return sum(scene.size in sizes for scene, _, _ in self.results)

    def summary(self) -> str:
        shares = ", ".join(f"{name} {share:.1%}" for name, share in self.shares().items())
        by_size = ", ".join(
            f"{label} {self.shares(sizes)['shape']:.1%} of {self.count(sizes)}" for label, sizes in SIZE_GROUPS.items()
        )
        return f"{len(self.results)} held-out prompts: {shares}; shape by size: {by_size}"


# The size groups the summary reports the shape for apart: small shapes cover one or two of the
# 8x8 latent cells, the others three or more.
SIZE_GROUPS = {"medium and large": ("", "large"), "small": ("small",)}

# What is judged right, in the order the summary reports it.
CHECKS = {
    "shape colour": lambda scene, verdict: verdict.shape_colour == scene.colour,
    "background": lambda scene, verdict: verdict.background == scene.background,
    "both colours": lambda scene, verdict: verdict.colours_right(scene),
    "shape": lambda scene, verdict: verdict.shape == scene.shape,
    "place": lambda scene, verdict: verdict.place_right(scene),
}


def evaluate(
    model_dir: Path,
    *,
    steps: int | None = None,
    guidance_scale: float | None = None,
    scheduler: str | None = None,
    seeds: tuple[int, ...] = (0,),
    progress: bool = True,
    save_to: Path | None = None,
    keep_pictures: list[Image.Image] | None = None,
) -> Evaluation:
    """Draw every evaluation prompt once per seed and judge each picture (also appended to
    `keep_pictures`, when given). Steps, guidance and scheduler not given are the drawing
    settings' defaults (alice/engine/spec.py), as a request that leaves them out gets."""
    given = {"steps": steps, "guidance_scale": guidance_scale, "scheduler": scheduler}
    drawing = {name: value for name, value in given.items() if value is not None}
    pipe = load_pipeline(Path(model_dir), choose_placement("cpu"))
    base_config = pipe.scheduler.config
    evaluation = Evaluation()
    jobs = [(scene, prompt, seed) for scene, prompt in evaluation_prompts() for seed in seeds]
    for index, (scene, prompt, seed) in enumerate(tqdm(jobs, desc="evaluating", disable=not progress, unit="image")):
        spec = GenerationSpec(prompt=prompt, seed=seed, width=64, height=64, **drawing)
        image: Image.Image = run_generation(pipe, base_config, spec).images[0]
        evaluation.results.append((scene, prompt, judge(image, scene)))
        if keep_pictures is not None:
            keep_pictures.append(image)
        if save_to is not None:
            save_to.mkdir(parents=True, exist_ok=True)
            image.save(save_to / f"{index:03d}-{prompt.replace(' ', '_').replace(',', '')}.png")
    return evaluation


def autoencoder_round_trip(model_dir: Path, count: int = 600, seed: int = 7) -> dict[str, float]:
    """The share of shapes the judge still reads right after the model's autoencoder alone
    (encode, decode) on `count` drawn scenes, by size: the most the whole model could draw."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from alice.demo_training.train import autoencode

    vae = AutoencoderKL.from_pretrained(Path(model_dir) / "vae", torch_dtype=torch.float32).eval()
    scenes, _, pixels = training_scenes(count, seed)
    right: dict[str, list[bool]] = {}
    for start in range(0, count, 100):
        decoded = autoencode(vae, pixels[start : start + 100])
        for scene, picture in zip(scenes[start:], ((decoded + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()):
            right.setdefault(scene.size or "medium", []).append(judge(Image.fromarray(picture), scene).shape == scene.shape)
    return {size: round(float(np.mean(right[size])), 3) for size in ("large", "medium", "small") if size in right}
