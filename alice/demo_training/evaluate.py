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
from alice.demo_training.shapes import Scene, evaluation_scenes
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.schedulers import DEFAULT_SCHEDULER


@dataclass
class Evaluation:
    results: list[tuple[Scene, str, Verdict]] = field(default_factory=list)  # scene, prompt, verdict

    def share(self, test) -> float:
        return sum(test(scene, verdict) for scene, _, verdict in self.results) / max(len(self.results), 1)

    @property
    def shape_colour(self) -> float:
        return self.share(lambda scene, verdict: verdict.shape_colour == scene.colour)

    @property
    def background(self) -> float:
        return self.share(lambda scene, verdict: verdict.background == scene.background)

    @property
    def both_colours(self) -> float:
        return self.share(lambda scene, verdict: verdict.colours_right(scene))

    @property
    def shape(self) -> float:
        return self.share(lambda scene, verdict: verdict.shape == scene.shape)

    @property
    def place(self) -> float:
        return self.share(lambda scene, verdict: verdict.place_right(scene))

    def summary(self) -> str:
        return (
            f"{len(self.results)} held-out prompts: shape colour {self.shape_colour:.1%}, "
            f"background {self.background:.1%}, both colours {self.both_colours:.1%}, "
            f"shape {self.shape:.1%}, place {self.place:.1%}"
        )


def evaluate(
    model_dir: Path,
    *,
    steps: int = 25,
    guidance_scale: float = 7.5,
    scheduler: str = DEFAULT_SCHEDULER,
    seeds: tuple[int, ...] = (0,),
    progress: bool = True,
    save_to: Path | None = None,
) -> Evaluation:
    """Draw every evaluation scene once per seed and judge each picture."""
    pipe = load_pipeline(Path(model_dir), choose_placement("cpu"))
    base_config = pipe.scheduler.config
    evaluation = Evaluation()
    jobs = [(scene, seed) for scene in evaluation_scenes() for seed in seeds]
    for index, (scene, seed) in enumerate(tqdm(jobs, desc="evaluating", disable=not progress, unit="image")):
        prompt = scene.caption()
        spec = GenerationSpec(
            prompt=prompt, seed=seed, width=64, height=64, steps=steps, guidance_scale=guidance_scale, scheduler=scheduler
        )
        image: Image.Image = run_generation(pipe, base_config, spec).images[0]
        evaluation.results.append((scene, prompt, judge(image, scene)))
        if save_to is not None:
            save_to.mkdir(parents=True, exist_ok=True)
            image.save(save_to / f"{index:03d}-{prompt.replace(' ', '_').replace(',', '')}.png")
    return evaluation
