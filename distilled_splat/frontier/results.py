"""A frontier's result store: one small JSON file per finished model under OUTPUT/frontier/models, written when
its evaluation is done, with the training time spent so far beside it; and the record its tables are made from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from distilled_splat.exports.writer import export_compact
from distilled_splat.files import write_atomically
from distilled_splat.frontier.configs import ModelConfigs
from distilled_splat.frontier.contenders import CONTENDERS
from distilled_splat.frontier.plan import FrontierPlan, ModelSpec
from distilled_splat.frontier.report import summarise
from distilled_splat.training import evaluate, gaussian_count


@dataclass
class ResultStore:
    """The results of ``configs``' models, read and written."""

    configs: ModelConfigs

    @property
    def plan(self) -> FrontierPlan:
        return self.configs.plan

    @property
    def folder(self) -> Path:
        return self.plan.recipe.output / "frontier"

    def result_path(self, spec: ModelSpec) -> Path:
        return self.folder / "models" / f"{self.configs.stem(spec)}.json"

    def record(self, rows: List[Dict], other_rows: List[Dict]) -> Dict:
        """What frontier.json holds for ``rows`` (and ``other_rows``, made under other settings, where asked for):
        everything its tables and plot are made from."""
        record = {
            "settings": self.configs.settings_record(),
            "frontier": {name: getattr(self.plan.settings, name) for name in self.plan.settings.__dataclass_fields__},
            "vanilla_teacher": self.vanilla_result(),
            # The plan of the command that wrote this file; "rows" holds every model of these settings the folder
            # has, whichever command made it.
            "this_command": {"models_planned": len(self.plan.specs()), "models_finished": self.finished_count()},
            "rows_count": len(rows),
            "unavailable": self.plan.unavailable,
            "rows": rows,
            "summary": summarise(rows),
        }
        if self.plan.settings.other_settings:
            record["other_rows"] = other_rows
        return record

    def vanilla_result(self) -> Dict:
        """The vanilla teacher's count, held-out metrics and SPZ size (evaluated and exported once)."""
        config = self.plan.vanilla_config()
        config_path = config.get_base_dir() / "config.yml"
        evaluation = self.folder / "evals" / "vanilla.json"
        metrics = (
            json.loads(evaluation.read_text())["results"] if evaluation.is_file() else evaluate(config_path, evaluation)
        )
        spz = self.folder / "exports" / "vanilla.spz"
        if not spz.is_file():
            export_compact(spz, "spz", load_config=config_path)
        return {
            "num_gaussians": gaussian_count(config), "psnr": metrics["psnr"], "ssim": metrics["ssim"],
            "spz_bytes": spz.stat().st_size,
        }  # fmt: skip

    def seconds_path(self, stem: str) -> Path:
        return self.folder / "models" / f"{stem}.train-seconds"

    def read_seconds(self, stem: str) -> float:
        """Training time spent before an interruption (the model resumes; its time adds up)."""
        try:
            return float(self.seconds_path(stem).read_text())
        except (OSError, ValueError):
            return 0.0

    def write_seconds(self, stem: str, seconds: float) -> None:
        write_atomically(self.seconds_path(stem), lambda path: path.write_text(f"{seconds}"))

    def write_row(self, spec: ModelSpec, row: Dict) -> None:
        """The model's result, written last: its file existing is what makes the model finished."""
        write_atomically(self.result_path(spec), lambda path: path.write_text(json.dumps(row, indent=1)))

    def rows(self) -> Tuple[List[Dict], List[Dict]]:
        """(current, other): the results in this output folder made under this frontier's settings (its own and
        earlier frontiers' with more seeds or budgets), and the rest, made under other settings."""
        current, other = [], []
        for path in sorted((self.folder / "models").glob("*.json")):
            row = json.loads(path.read_text())
            spec = ModelSpec(row["method"], row["budget"], row["seed"])
            fingerprint = self.configs.fingerprint_if_buildable(spec)
            belongs = row["method"] in CONTENDERS and row.get("fingerprint") == fingerprint
            (current if belongs else other).append(row)
        key = lambda row: (row["budget"], row["method"], row["seed"])  # noqa: E731
        return sorted(current, key=key), sorted(other, key=key)

    def finished_count(self) -> int:
        return sum(1 for spec in self.plan.specs() if self.result_path(spec).is_file())
