"""A run's output folder: where its models' evaluations, exports and training times are kept."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

from distilled_splat.exports import splat_transform
from distilled_splat.files import write_atomically

COMPACT_FORMATS = ("spz", "splat", "sog")
"""Written for every model next to its PLY (see distilled_splat/exports/exporters.py); sog where splat-transform is."""


@dataclass
class RunFolder:
    output: Path

    @property
    def runs(self) -> Path:
        """Where the models' nerfstudio runs are."""
        return self.output.resolve() / "runs"

    @property
    def record_path(self) -> Path:
        return self.output / "recipe.json"

    def eval_path(self, name: str) -> Path:
        return self.output / "evals" / f"{name}.json"

    def ply_path(self, name: str) -> Path:
        return self.export_path(name, "ply")

    def export_path(self, name: str, fmt: str) -> Path:
        return self.output / "exports" / f"{name}.{fmt}"

    def outputs_of(self, name: str) -> Tuple[Path, ...]:
        """Everything evaluated or exported from the model ``name``."""
        return (self.eval_path(name), self.ply_path(name), *(self.export_path(name, f) for f in COMPACT_FORMATS))

    @staticmethod
    def compact_formats() -> Tuple[str, ...]:
        """The compact formats this machine can write: SOG needs splat-transform."""
        return (
            COMPACT_FORMATS if splat_transform.find() is not None else tuple(f for f in COMPACT_FORMATS if f != "sog")
        )

    def timings_path(self) -> Path:
        return self.output / "timings.json"

    def read_timings(self) -> Dict[str, float]:
        """Seconds each model trained, over every run of the recipe that trained it."""
        try:
            return json.loads(self.timings_path().read_text())
        except (OSError, ValueError):
            return {}

    def add_training_time(self, name: str, seconds: float) -> None:
        timings = self.read_timings()
        timings[name] = timings.get(name, 0.0) + seconds
        write_atomically(self.timings_path(), lambda path: path.write_text(json.dumps(timings, indent=1)))
