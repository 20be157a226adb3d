"""The frontier's tables and plot: mean and spread per contender and budget, the compute each had, bytes."""

from __future__ import annotations

import hashlib
import json
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from distilled_splat.files import write_atomically
from distilled_splat.frontier.contenders import ALTERNATIVES, markdown_table
from distilled_splat.plots import log_psnr_axes, new_figure, save_figure


def mean_and_spread(values: List[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mean_or_none(values: List[Optional[float]]) -> Optional[float]:
    return None if any(value is None for value in values) else statistics.fmean(values)


def summarise(rows: List[Dict]) -> List[Dict]:
    """Mean and spread per method and budget, ordered by budget, then method."""
    groups: Dict[Tuple[str, float], List[Dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["budget"]), []).append(row)
    summary = []
    for (method, budget), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        psnr, psnr_std = mean_and_spread([row["psnr"] for row in group])
        ssim, ssim_std = mean_and_spread([row["ssim"] for row in group])
        seconds_total = mean_or_none([row.get("train_seconds_total") for row in group])
        summary.append(
            {
                "method": method, "budget": budget, "seeds": len(group), "start": group[0].get("start"),
                "num_gaussians": round(statistics.fmean(row["num_gaussians"] for row in group)),
                "spz_bytes": statistics.fmean(row["spz_bytes"] for row in group),
                "own_steps": group[0].get("own_steps"), "total_steps": group[0].get("total_steps"),
                # Means unrounded: the tables round once, to what they print; rounding twice can move a value.
                "psnr": psnr, "psnr_std": psnr_std,
                "ssim": round(ssim, 4), "ssim_std": round(ssim_std, 4),
                "train_seconds": statistics.fmean(row["train_seconds"] for row in group),
                "train_seconds_total": seconds_total,
            }
        )  # fmt: skip
    return summary


def verdict(lead: float, first: Dict, second: Dict) -> str:
    if min(first["seeds"], second["seeds"]) < 2:
        return "one seed: no spread"
    spread = first["psnr_std"] + second["psnr_std"]
    return f"{'beyond' if abs(lead) > spread else 'within'} the spread of {spread:.2f}"


def table(summary: List[Dict]) -> List[str]:
    lines = [
        "| budget | method | starts from | seeds | Gaussians | SPZ KB | own steps | total steps | PSNR | SSIM "
        "| train s (own / total) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        total = "?" if row["train_seconds_total"] is None else f"{row['train_seconds_total']:.0f}"
        lines.append(
            f"| {row['budget']:g} | {row['method']} | {row['start']} | {row['seeds']} | {row['num_gaussians']:,} | "
            f"{row['spz_bytes'] / 1000:.1f} | {row['own_steps']:,} | {row['total_steps']:,} | "
            f"{row['psnr']:.2f} ± {row['psnr_std']:.2f} | {row['ssim']:.4f} ± {row['ssim_std']:.4f} | "
            f"{row['train_seconds']:.0f} / {total} |"
        )
    return lines


def settings_lines(settings: Dict, vanilla: Dict) -> List[str]:
    compute = {
        "total": "matched total optimisation: a contender that uses no teacher trains the teacher's steps plus the "
        "student's; one that starts from the trained teacher (or learns from teachers' renders) trains the "
        "student's steps and counts the teachers' in its total",
        "own": "own steps: every trained contender trains the student's steps, whatever it starts from (those that "
        "start from a trained teacher have had its steps as well; see total steps)",
    }[settings["compute"]]
    return [
        f"Scene `{settings['data']}`; teachers {settings['teacher_steps']:,} steps, student "
        f"{settings['student_steps']:,} steps, on {settings['device']}; {compute}. Student teachers: "
        f"{' '.join(settings['teachers'])}; student args: `{settings['student_args'] or '(none)'}`; teacher args: "
        f"`{settings['teacher_args'] or '(none)'}`.",
        "",
        f"Vanilla teacher: {vanilla['num_gaussians']:,} Gaussians, {vanilla['psnr']:.2f} dB, SSIM "
        f"{vanilla['ssim']:.4f}, SPZ {vanilla['spz_bytes'] / 1000:.1f} KB. PSNR and SSIM on the held-out views "
        "(every 8th): mean ± sample standard deviation over seeds. Own steps: the model's own training; total "
        "steps: with the steps of every teacher it starts from or learns from.",
    ]


def markdown(record: Dict, title: str = "# Frontier") -> str:
    """frontier.md of a frontier.json ``record``, under the heading ``title`` (its sections one level below)."""
    summary, vanilla = record["summary"], record["vanilla_teacher"]
    section = "#" * (title.count("#", 0, title.index(" ")) + 1)
    lines = [f"{title}: {record['settings']['data']}", ""]
    lines += settings_lines(record["settings"], vanilla) + [""] + table(summary)
    budgets = sorted({row["budget"] for row in summary})
    lines += ["", f"{section} Best at each budget", ""]
    for budget in budgets:
        ranked = sorted((row for row in summary if row["budget"] == budget), key=lambda row: -row["psnr"])
        if len(ranked) == 1:
            lines.append(f"- {budget:g}: {ranked[0]['method']} (alone)")
            continue
        best, second = ranked[:2]
        lead = best["psnr"] - second["psnr"]
        lines.append(
            f"- {budget:g}: {best['method']} leads {second['method']} by {lead:.2f} dB ({verdict(lead, best, second)})"
        )
    lines += ["", f"{section} The student against the best alternative", ""]
    for budget in budgets:
        student = next((row for row in summary if row["budget"] == budget and row["method"] == "student"), None)
        others = [row for row in summary if row["budget"] == budget and row["method"] in ALTERNATIVES]
        if student is None or not others:
            continue
        best = max(others, key=lambda row: row["psnr"])
        lead = student["psnr"] - best["psnr"]
        lines.append(
            f"- {budget:g}: student {lead:+.2f} dB against {best['method']} ({verdict(lead, student, best)}); SSIM "
            f"{student['ssim'] - best['ssim']:+.4f}; {student['num_gaussians']:,} against {best['num_gaussians']:,} "
            f"Gaussians, {student['spz_bytes'] / 1000:.1f} against {best['spz_bytes'] / 1000:.1f} KB"
        )
    missing = [f"- {name}: not available ({reason})" for name, reason in record["unavailable"].items()]
    if missing:
        lines += ["", f"{section} Not run", "", *missing]
    lines += ["", f"{section} Contenders", "", markdown_table()]
    if record.get("other_rows"):
        lines += ["", f"{section} Results made under other settings (not comparable with the tables above)", ""]
        for settings, rows in group_by_settings(record["other_rows"]):
            lines += [f"Settings: `{json.dumps(settings, sort_keys=True)}`", "", *table(summarise(rows)), ""]
    return "\n".join(lines) + "\n"


def group_by_settings(rows: List[Dict]) -> List[Tuple[Dict, List[Dict]]]:
    groups: Dict[str, Tuple[Dict, List[Dict]]] = {}
    for row in rows:
        settings = row.get("settings", {})
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        groups.setdefault(key, (settings, []))[1].append(row)
    return list(groups.values())


def plot(summary: List[Dict], vanilla: Dict, path: Path) -> None:
    """Two panels: held-out PSNR against the Gaussian count and against the SPZ file size."""
    figure, panels = new_figure(nrows=1, ncols=2, figsize=(11, 4.2), sharey=True)
    for axes, key, label, scale in (
        (panels[0], "num_gaussians", "Gaussians", 1),
        (panels[1], "spz_bytes", "SPZ KB", 1e3),
    ):
        for method in dict.fromkeys(row["method"] for row in summary):
            points = sorted((row for row in summary if row["method"] == method), key=lambda row: row[key])
            axes.errorbar(
                [row[key] / scale for row in points], [row["psnr"] for row in points],
                yerr=[row["psnr_std"] for row in points], marker="o", markersize=4, capsize=3, label=method,
            )  # fmt: skip
        axes.scatter(vanilla[key] / scale, vanilla["psnr"], s=120, marker="*", color="black", label="vanilla teacher")
        log_psnr_axes(axes, label)
    panels[1].legend(loc="lower right", fontsize="x-small")
    save_figure(figure, path)


def write_frontier(record: Dict, folder: Path) -> str:
    """Write frontier.json, frontier.md and frontier.png of a frontier ``record`` into ``folder``; returns the
    markdown."""
    text = markdown(record)
    write_atomically(folder / "frontier.json", lambda path: path.write_text(json.dumps(record, indent=1)))
    write_atomically(folder / "frontier.md", lambda path: path.write_text(text))
    plot(record["summary"], record["vanilla_teacher"], folder / "frontier.png")
    return text
