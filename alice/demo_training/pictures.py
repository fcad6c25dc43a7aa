"""The README's demo pictures, drawn again from a model: `python -m alice.demo_training.pictures`.

`docs/images/demo-quickstart.png`: the three quickstart prompts at seed 42, as `/generate`
draws them with its defaults. `docs/images/demo-held-out.png`: the first picture of each
held-out evaluation prompt, in the evaluation's order, in rows of twelve.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from alice.demo_training.evaluate import Evaluation, evaluate
from alice.engine.demo import DEMO_MODEL_DIR
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline

QUICKSTART_PROMPTS = (
    "a yellow circle on a purple background, top left",
    "a large green square on a black background",
    "a small white triangle on a red background, bottom right",
)
_QUICKSTART_SIDE, _GAP = 192, 12
_HELD_OUT_SIDE, _PER_ROW = 96, 12


def quickstart_sheet(model_dir: Path) -> Image.Image:
    pipe = load_pipeline(model_dir, choose_placement("cpu"))
    sheet = Image.new("RGB", (3 * _QUICKSTART_SIDE + 2 * _GAP, _QUICKSTART_SIDE), "white")
    for index, prompt in enumerate(QUICKSTART_PROMPTS):
        spec = GenerationSpec(prompt=prompt, seed=42, width=64, height=64)
        image = run_generation(pipe, pipe.scheduler.config, spec).images[0]
        sheet.paste(image.resize((_QUICKSTART_SIDE,) * 2, Image.Resampling.BICUBIC), (index * (_QUICKSTART_SIDE + _GAP), 0))
    return sheet


def held_out_sheet(pictures: list[Image.Image]) -> Image.Image:
    rows = -(-len(pictures) // _PER_ROW)
    sheet = Image.new("RGB", (_PER_ROW * _HELD_OUT_SIDE, rows * _HELD_OUT_SIDE), "white")
    for index, picture in enumerate(pictures):
        row, column = divmod(index, _PER_ROW)
        sheet.paste(picture.resize((_HELD_OUT_SIDE,) * 2, Image.Resampling.BICUBIC),
                    (column * _HELD_OUT_SIDE, row * _HELD_OUT_SIDE))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL_DIR)
    parser.add_argument("--to", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    quickstart_sheet(args.model).save(args.to / "demo-quickstart.png")
    pictures: list[Image.Image] = []
    evaluation: Evaluation = evaluate(args.model, keep_pictures=pictures)
    held_out_sheet(pictures).save(args.to / "demo-held-out.png")
    print(evaluation.summary())


if __name__ == "__main__":
    main()
