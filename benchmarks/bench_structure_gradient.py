"""How large the structural loss's gradient on a trained student's positions is, against the photometric one, and
what its steps do to Adam's position step (the reason the default student weights it 0.03, not the paper's 1.0).

.venv/bin/python benchmarks/bench_structure_gradient.py RUN_DIR TEACHER_CHECKPOINT [--weights 1 0.1 0.03]

RUN_DIR: a trained student's run folder (with config.yml), best one trained without the structural loss, so that
its positions are those the photometric loss alone leaves. TEACHER_CHECKPOINT: its vanilla teacher's .ckpt.
Prints the gradients' sizes, then, for each weight, the median position step at steps 800 and 999 of a 1000-step
run (structural steps at 700..966, as scaled from 21000..29000) relative to the step without the loss: Adam's
second moment run through the measured mean squares (beta2 0.999).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Sequence

import torch
from nerfstudio.utils.eval_utils import eval_setup

from distilled_splat.losses import StructureLoss
from distilled_splat.teachers import load_gaussians

VIEWS = 8
"""Training views whose photometric gradients are averaged."""


def gradients(run_dir: Path, teacher_checkpoint: Path) -> Dict[str, torch.Tensor]:
    """Per-element mean square of the photometric gradient on the positions over VIEWS training views, and the
    structural loss's gradient at weight 1."""
    _, pipeline, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
    model = pipeline.model
    model.eval()  # the training-mode render steps the densification strategy; the loss is the same
    dataset = pipeline.datamanager.train_dataset
    squares = []
    for index in range(0, len(dataset), max(1, len(dataset) // VIEWS)):
        model.zero_grad(set_to_none=True)
        outputs = model.get_outputs(dataset.cameras[index : index + 1].to(model.device))
        image = dataset[index]["image"]
        losses = model.get_loss_dict(outputs, {"image": image, "teacher_image": image})
        sum(value for name, value in losses.items() if name != "structure_loss").backward()
        squares.append(model.means.grad.detach().pow(2))
    model.zero_grad(set_to_none=True)
    teacher_means = load_gaussians(teacher_checkpoint)["means"].to(model.means)
    StructureLoss(teacher_means)(model.means).backward()
    return {"photo_square": torch.stack(squares).mean(0), "structure": model.means.grad.detach()}


def step_ratio(photo_square: torch.Tensor, structure_square: torch.Tensor, at: Sequence[int]) -> Dict[int, float]:
    """Median over elements of sqrt(v_photo / v) at the steps ``at``, v Adam's second moment through steps
    700..999 with the structural gradient added at the nine scaled structural steps."""
    spikes = {round(700 + i * (966 - 700) / 8) for i in range(9)}
    second_moment, ratios = photo_square.clone(), {}
    for step in range(700, 1000):
        square = photo_square + structure_square if step in spikes else photo_square
        second_moment = 0.999 * second_moment + 0.001 * square
        if step in at:
            ratios[step] = float((photo_square / second_moment).sqrt().median())
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("teacher_checkpoint", type=Path)
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.1, 0.03])
    args = parser.parse_args()
    measured = gradients(args.run_dir, args.teacher_checkpoint)
    photo, structure = measured["photo_square"], measured["structure"]
    ratio = structure.pow(2) / photo.clamp_min(1e-30)
    print(f"photometric gradient RMS {float(photo.mean().sqrt()):.3g}, structural (weight 1) RMS "
          f"{float(structure.pow(2).mean().sqrt()):.3g}")  # fmt: skip
    print(f"structural / photometric, squared, per element: median {float(ratio.median()):.0f}, "
          f"90th percentile {float(ratio.quantile(0.9)):.0f}")  # fmt: skip
    for weight in args.weights:
        ratios = step_ratio(photo, (weight * structure).pow(2), at=(800, 999))
        print(f"weight {weight:g}: median position step at step 800 {ratios[800]:.2f}, at 999 {ratios[999]:.2f} "
              "of its size without the loss")  # fmt: skip


if __name__ == "__main__":
    main()
