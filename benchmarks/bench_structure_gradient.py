"""How large the structural loss's gradient on a trained student's positions is, against the photometric one, and
what its steps do to Adam's position step (the reason the default student weights it 0.03, not the paper's 1.0).

.venv/bin/python benchmarks/bench_structure_gradient.py [--output outputs/demo] [--weights 1 0.1 0.03]
.venv/bin/python benchmarks/bench_structure_gradient.py --student-config CONFIG.yml --teacher-checkpoint CKPT

By default the student and vanilla teacher of a finished ``distilled-splat run`` / ``demo`` folder; or any trained
student's config.yml (a frontier model's, say: best one trained without the structural loss, so that its positions
are those the photometric loss alone leaves) and its vanilla teacher's checkpoint. Prints the gradients' sizes,
then, for each weight, the median position step a tenth of the run into the structural loss's window and at
the run's last step (the window and the length those of the student's config) relative to the step without the
loss: Adam's second moment run through the measured mean squares (beta2 0.999).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Sequence

import torch
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.eval_utils import eval_setup

from distilled_splat.losses import StructureLoss
from distilled_splat.recipe import Recipe
from distilled_splat.run_configs import STUDENT
from distilled_splat.schedules import in_window
from distilled_splat.teachers import load_gaussians
from distilled_splat.training import last_step_checkpoint


def gradients(student_config: Path, teacher_checkpoint: Path, views: int) -> Dict[str, object]:
    """Per-element mean square of the photometric gradient on the positions over ``views`` training views, the
    structural loss's gradient at weight 1, and the student's config (for its schedule)."""
    config, pipeline, _, _ = eval_setup(student_config, test_mode="test")
    model = pipeline.model
    model.eval()  # the training-mode render steps the densification strategy and adds the structural loss
    dataset = pipeline.datamanager.train_dataset
    squares = []
    for index in range(0, len(dataset), max(1, len(dataset) // views)):
        model.zero_grad(set_to_none=True)
        outputs = model.get_outputs(dataset.cameras[index : index + 1].to(model.device))
        image = dataset[index]["image"]
        sum(model.get_loss_dict(outputs, {"image": image, "teacher_image": image}).values()).backward()
        squares.append(model.means.grad.detach().pow(2))
    model.zero_grad(set_to_none=True)
    teacher_means = load_gaussians(teacher_checkpoint)["means"].to(model.means)
    StructureLoss(teacher_means)(model.means).backward()
    return {"photo_square": torch.stack(squares).mean(0), "structure": model.means.grad.detach(), "config": config}


def step_ratio(
    photo_square: torch.Tensor, structure_square: torch.Tensor, config: TrainerConfig, at: Sequence[int]
) -> Dict[int, float]:
    """Median over elements of sqrt(v_photo / v) at the steps ``at``, v Adam's second moment from the first
    structural step of ``config``'s student to its run's end, the structural gradient added at its structural
    steps."""
    model = config.pipeline.model
    second_moment, ratios = photo_square.clone(), {}
    for step in range(model.structure_start, config.max_num_iterations):
        structural = in_window(step, model.structure_start, model.structure_stop, model.structure_every)
        second_moment = 0.999 * second_moment + 0.001 * (
            photo_square + structure_square if structural else photo_square
        )
        if step in at:
            ratios[step] = float((photo_square / second_moment).sqrt().median())
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"), help="a finished run or demo folder")
    parser.add_argument("--student-config", type=Path, help="a trained student's config.yml instead of the run's")
    parser.add_argument("--teacher-checkpoint", type=Path, help="its vanilla teacher's checkpoint")
    parser.add_argument("--views", type=int, default=8, help="training views whose photometric gradients count")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.1, 0.03])
    args = parser.parse_args()
    if (args.student_config is None) != (args.teacher_checkpoint is None):
        parser.error("--student-config and --teacher-checkpoint go together")
    if args.student_config is None:
        configs = Recipe.load(args.output).configs
        student_config = configs.method_config(STUDENT).get_base_dir() / "config.yml"
        teacher_checkpoint = last_step_checkpoint(configs.method_config("vanilla"))
    else:
        student_config, teacher_checkpoint = args.student_config, args.teacher_checkpoint
    measured = gradients(student_config, teacher_checkpoint, args.views)
    photo, structure, config = measured["photo_square"], measured["structure"], measured["config"]
    into_window = config.pipeline.model.structure_start + config.max_num_iterations // 10
    last = config.max_num_iterations - 1
    ratio = structure.pow(2) / photo.clamp_min(1e-30)
    print(f"photometric gradient RMS {float(photo.mean().sqrt()):.3g}, structural (weight 1) RMS "
          f"{float(structure.pow(2).mean().sqrt()):.3g}")  # fmt: skip
    print(f"structural / photometric, squared, per element: median {float(ratio.median()):.0f}, "
          f"90th percentile {float(ratio.quantile(0.9)):.0f}")  # fmt: skip
    for weight in args.weights:
        ratios = step_ratio(photo, (weight * structure).pow(2), config, at=(into_window, last))
        print(f"weight {weight:g}: median position step at step {into_window} {ratios[into_window]:.2f}, at {last} "
              f"{ratios[last]:.2f} of its size without the loss")  # fmt: skip


if __name__ == "__main__":
    main()
