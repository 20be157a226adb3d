"""The report of a finished recipe: metrics per model, student/teacher ratios, side-by-side views and a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
from distilled_splat.exports.writer import export_compact
from distilled_splat.files import write_atomically
from distilled_splat.plots import log_psnr_axes, new_figure, save_figure
from distilled_splat.recipe import Recipe
from distilled_splat.run_configs import STUDENT
from distilled_splat.run_folder import COMPACT_FORMATS
from distilled_splat.training import gaussian_count

FIELDS = (
    "psnr",
    "ssim",
    "lpips",
    "num_gaussians",
    "ply_bytes",
    "spz_bytes",
    "splat_bytes",
    "sog_bytes",
    "render_ms",
    "train_seconds",
)
BYTE_FIELDS = tuple(f"{fmt}_bytes" for fmt in ("ply", *COMPACT_FORMATS))
LABELS = {"vanilla": "vanilla teacher", "noise": "noise teacher", "dropout": "dropout teacher", STUDENT: "student"}


def model_rows(recipe: Recipe) -> Dict[str, Dict[str, Optional[float]]]:
    """Metrics of every finished model, from its eval json, checkpoint, export and recorded training time."""
    timings = recipe.folder.read_timings()
    rows = {}
    for name in recipe.configs.models():
        config = recipe.configs.method_config(name)
        try:
            results = json.loads(recipe.folder.eval_path(name).read_text())["results"]
            written = ("ply", *recipe.folder.compact_formats())
            sizes = {f"{fmt}_bytes": recipe.folder.export_path(name, fmt).stat().st_size for fmt in written}
            sizes.update({f"{fmt}_bytes": None for fmt in COMPACT_FORMATS if fmt not in written})
        except (OSError, ValueError, KeyError):
            raise DistilledSplatError(
                f"{name} is not finished in {recipe.output}: run `distilled-splat run` to complete it"
            ) from None
        rows[name] = {
            "psnr": results["psnr"],
            "ssim": results["ssim"],
            "lpips": results.get("lpips"),  # absent when LPIPS weights could not be loaded
            "num_gaussians": gaussian_count(config),
            **sizes,
            "render_ms": 1000.0 / results["fps"] if results.get("fps") else None,
            "train_seconds": timings.get(name),
        }
    return rows


def ratios(rows: Dict[str, Dict]) -> Dict[str, Optional[float]]:
    student, teacher = rows[STUDENT], rows["vanilla"]
    result = {}
    for name in ("num_gaussians", *BYTE_FIELDS, "render_ms", "train_seconds"):
        if student[name] is not None and teacher[name]:
            result[name] = student[name] / teacher[name]
    result["psnr_gain_db"] = student["psnr"] - teacher["psnr"]
    return result


def formatted(name: str, value) -> str:
    if value is None:
        return "n/a"
    if name in ("num_gaussians", *BYTE_FIELDS):
        return f"{int(value):,}"
    return f"{value:.2f}" if name in ("psnr", "render_ms", "train_seconds") else f"{value:.4f}"


def table(rows: Dict[str, Dict]) -> Table:
    result = Table(title="Distilled-3DGS on the held-out views")
    result.add_column("model")
    for name in FIELDS:
        result.add_column(name, justify="right")
    for model, row in rows.items():
        result.add_row(LABELS[model], *(formatted(name, row[name]) for name in FIELDS))
    return result


VIEWER_PAGES = {"vanilla": "report/viewer/teacher.html", STUDENT: "report/viewer/student.html"}
"""Interactive pages of the vanilla teacher and the student, relative to the output folder."""


def write_viewer_pages(recipe: Recipe) -> Optional[str]:
    """The teacher's and the student's interactive pages, opening at held-out view 0 (the report's first image);
    returns why they could not be written, or None."""
    from distilled_splat.exports.web_viewer import held_out_view

    if splat_transform.find() is None:
        return splat_transform.HOW_TO_GET
    for name, page in VIEWER_PAGES.items():
        config_path = recipe.configs.method_config(name).get_base_dir() / "config.yml"
        export_compact(
            recipe.output / page, "html", ply=recipe.folder.ply_path(name), opening_view=held_out_view(config_path)
        )
    return None


def markdown(
    title: str, rows: Dict[str, Dict], ratio: Dict[str, float], views: List[str], no_pages: Optional[str]
) -> str:
    lines = [f"# {title}", "", "| model | " + " | ".join(FIELDS) + " |", "|---" * (len(FIELDS) + 1) + "|"]
    for model, row in rows.items():
        lines.append(f"| {LABELS[model]} | " + " | ".join(formatted(name, row[name]) for name in FIELDS) + " |")
    lines += ["", "Student / vanilla teacher:", ""]
    lines += [f"- {name}: {value:.3f}" for name, value in ratio.items()]
    lines += [
        "",
        "LPIPS is n/a when its AlexNet weights could not be downloaded.",
        "",
        "![PSNR vs Gaussians](report/psnr_vs_gaussians.png)",
        "",
    ]
    lines += ["## Look around", ""]
    if no_pages is None:
        lines += [
            "Single-file interactive pages (PlayCanvas's SuperSplat viewer; drag to orbit, no network needed), each "
            "opening at the first held-out view below: [the student](report/viewer/student.html), "
            "[the vanilla teacher](report/viewer/teacher.html).",
            "",
        ]
    else:
        lines += [f"No interactive pages: {no_pages}; then run `distilled-splat report` on this folder.", ""]
    lines += ["## Held-out views: ground truth | vanilla teacher | student", ""]
    lines += [f"![view {i}]({view})" for i, view in enumerate(views)]
    return "\n".join(lines) + "\n"


def plot(rows: Dict[str, Dict], path: Path) -> None:
    figure, axes = new_figure(figsize=(5.5, 3.5))
    markers = {"vanilla": "o", "noise": "s", "dropout": "^", STUDENT: "*"}
    for model, row in rows.items():
        size = 140 if model == STUDENT else 50
        axes.scatter(row["num_gaussians"], row["psnr"], s=size, marker=markers[model], label=LABELS[model])
    # A legend instead of labels beside the points (the teachers' points overlap), and plain numbers on the log
    # axis instead of matplotlib's crowded "2x10^3" minor labels.
    axes.legend(loc="lower right", fontsize="small")
    log_psnr_axes(axes)
    save_figure(figure, path)


@torch.no_grad()
def held_out_renders(config_path: Path) -> List[Dict[str, np.ndarray]]:
    """Ground truth and render of every held-out view, composited on the model's evaluation background."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config_path, test_mode="test")
    model, datamanager = pipeline.model, pipeline.datamanager
    views = []
    for index in range(len(datamanager.eval_dataset)):
        camera = datamanager.eval_dataset.cameras[index : index + 1].to(model.device)
        outputs = model.get_outputs_for_camera(camera)
        truth = model.composite_with_background(
            model.get_gt_img(datamanager.cached_eval[index]["image"]), outputs["background"]
        )
        views.append({"truth": to_uint8(truth), "render": to_uint8(outputs["rgb"])})
    return views


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def side_by_side(panels: List[np.ndarray], captions: List[str]) -> Image.Image:
    """The panels left to right at their own size (no resampling), one caption line per panel below them."""
    height, width = panels[0].shape[:2]
    line_height = 14
    sheet = Image.new("RGB", (len(panels) * width, height + line_height * len(panels) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    places = ["left", "middle", "right"] if len(panels) == 3 else [f"panel {i + 1}" for i in range(len(panels))]
    for column, (panel, caption, place) in enumerate(zip(panels, captions, places)):
        sheet.paste(Image.fromarray(panel), (column * width, 0))
        draw.text((2, height + 2 + column * line_height), f"{place}: {caption}", fill="black")
    return sheet


def report_title(recipe: Recipe) -> str:
    method = recipe.configs.method_config(STUDENT).method_name
    return f"distilled-splat report: {method} on {recipe.data.name} ({recipe.settings.student_steps:,} steps)"


def write_report(recipe: Recipe, console: Optional[Console] = None) -> Dict:
    rows = model_rows(recipe)
    ratio = ratios(rows)
    folder = recipe.output / "report"
    folder.mkdir(parents=True, exist_ok=True)
    plot(rows, folder / "psnr_vs_gaussians.png")
    teacher_views = held_out_renders(recipe.configs.method_config("vanilla").get_base_dir() / "config.yml")
    student_views = held_out_renders(recipe.configs.method_config(STUDENT).get_base_dir() / "config.yml")
    captions = [
        "ground truth",
        f"vanilla teacher, {rows['vanilla']['num_gaussians']:,} Gaussians",
        f"student, {rows[STUDENT]['num_gaussians']:,} Gaussians",
    ]
    view_files = []
    for index, (teacher, student) in enumerate(zip(teacher_views, student_views)):
        name = f"report/view_{index:03d}.png"
        sheet = side_by_side([teacher["truth"], teacher["render"], student["render"]], captions)
        write_atomically(recipe.output / name, lambda path, sheet=sheet: sheet.save(path, format="PNG"))
        view_files.append(name)
    no_pages = write_viewer_pages(recipe)
    pages = {} if no_pages else {name: page for name, page in VIEWER_PAGES.items()}
    report = {"models": rows, "student_vs_vanilla": ratio, "views": view_files, "viewer_pages": pages}
    write_atomically(recipe.output / "report.json", lambda path: path.write_text(json.dumps(report, indent=1)))
    write_atomically(
        recipe.output / "report.md",
        lambda path: path.write_text(markdown(report_title(recipe), rows, ratio, view_files, no_pages)),
    )
    if console is None:
        console = Console()
        console.width = max(console.width, 132)  # room for every column: a truncated number is worse than a wrap
    console.print(table(rows))
    console.print(
        f"student: {ratio['num_gaussians']:.1%} of the vanilla teacher's Gaussians, "
        f"{ratio['psnr_gain_db']:+.2f} dB PSNR; report: {recipe.output / 'report.md'}"
    )
    if no_pages is None:
        console.print(f"look around the student: {recipe.output / VIEWER_PAGES[STUDENT]}")
    else:
        console.print(f"no interactive pages: {no_pages}")
    if any(
        row["lpips"] is None or (isinstance(row["lpips"], float) and math.isnan(row["lpips"])) for row in rows.values()
    ):
        console.print("lpips: unavailable (its AlexNet weights could not be loaded)")
    return report
