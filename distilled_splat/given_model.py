"""A splat model the user already has, as ``compact --teacher`` or ``--ply`` names it: which file holds it, its
SH degree, and its Gaussians read as splatfacto holds them, in the model's own frame."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional

import torch
from nerfstudio.models.splatfacto import SH2RGB, SplatfactoModelConfig
from torch import Tensor

from distilled_splat.decimation import gaussians_from_ply
from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports.exporters import read_3dgs_ply
from distilled_splat.teachers import final_checkpoint, fingerprint, load_gaussians, read_config, teacher_config_path

GivenKind = Literal["run", "ply"]
Frame = Literal["auto", "normalised", "world"]


@dataclass(frozen=True)
class GivenModel:
    """What ``compact --teacher`` or ``--ply`` was given, and the frame the user says a PLY is in."""

    kind: GivenKind
    path: Path
    frame: Frame = "auto"
    sh_degree: Optional[int] = None
    """The SH degree asked for; None takes the model's own."""

    def source_file(self) -> Path:
        """The file holding the Gaussians: the run's final checkpoint, or the PLY."""
        if self.kind == "ply":
            if not self.path.is_file():
                raise DistilledSplatError(f"--ply {self.path}: no such file")
            return self.path
        config_path = teacher_config_path(self.path)
        config = read_config(config_path)
        if not isinstance(config.pipeline.model, SplatfactoModelConfig):
            raise DistilledSplatError(
                f"--teacher {self.path} was trained with {config.method_name}, not a Gaussian splat method "
                "(splatfacto, splatfacto-big or one of distilled-splat's)"
            )
        return final_checkpoint(config_path, config)

    def own_sh_degree(self) -> int:
        """The SH degree the model holds (a PLY's is read from its header)."""
        if self.kind == "run":
            return int(read_config(teacher_config_path(self.path)).pipeline.model.sh_degree)
        rest = sum(1 for name in ply_properties(self.path) if name.startswith("f_rest_"))
        degree = int(round(math.sqrt(rest // 3 + 1))) - 1
        if rest % 3 or (degree + 1) ** 2 - 1 != rest // 3:
            raise DistilledSplatError(f"--ply {self.path}: {rest} f_rest fields make no whole SH degree")
        return degree

    def degree(self) -> int:
        """The SH degree the teacher and the student use: the model's own, which must be the one asked for."""
        own = self.own_sh_degree()
        if self.sh_degree is not None and self.sh_degree != own:
            raise DistilledSplatError(
                f"{self.describe()} holds SH degree {own}, not the --sh-degree {self.sh_degree} asked for"
            )
        return own

    def steps(self) -> Optional[int]:
        """Training steps of a run (None for a PLY: the file does not say)."""
        if self.kind == "ply":
            return None
        return int(read_config(teacher_config_path(self.path)).max_num_iterations)

    def run_name(self, source_sha256: str) -> str:
        """The imported run's folder name: another model, or another frame asked for, is another run."""
        digest = hashlib.sha256(f"{source_sha256}:{self.kind}:{self.frame}".encode()).hexdigest()
        return f"given-{self.kind}-{digest[:12]}"

    def describe(self) -> str:
        return f"--{'teacher' if self.kind == 'run' else 'ply'} {self.path}"

    def to_record(self) -> Dict:
        return {"kind": self.kind, "path": str(self.path), "frame": self.frame, "sh_degree": self.sh_degree}

    @staticmethod
    def from_record(record: Dict) -> "GivenModel":
        return GivenModel(record["kind"], Path(record["path"]), record["frame"], record.get("sh_degree"))


@dataclass(frozen=True)
class GivenTeacher:
    """A given model as a recipe's vanilla teacher: the model, the name of the run it becomes and its SH degree,
    settled once (naming the run reads the whole source file)."""

    model: GivenModel
    source_sha256: str
    sh_degree: int

    @staticmethod
    def of(model: GivenModel) -> "GivenTeacher":
        # Reading the source refuses a missing file, a method that is not a splat and an unfinished run.
        return GivenTeacher(model, fingerprint(model.source_file()), model.degree())

    @property
    def run_name(self) -> str:
        return self.model.run_name(self.source_sha256)

    def to_record(self) -> Dict:
        return {**self.model.to_record(), "source_sha256": self.source_sha256, "sh_degree_used": self.sh_degree}

    @staticmethod
    def from_record(record: Dict) -> "GivenTeacher":
        return GivenTeacher(GivenModel.from_record(record), record["source_sha256"], int(record["sh_degree_used"]))


def ply_properties(path: Path) -> List[str]:
    """The vertex property names in a PLY's header."""
    names = []
    try:
        with open(path, "rb") as handle:
            for _ in range(10_000):
                line = handle.readline().decode("ascii", errors="replace").strip()
                if line.startswith("property"):
                    names.append(line.split()[-1])
                if line == "end_header" or not line:
                    break
    except OSError as err:
        raise DistilledSplatError(f"--ply {path}: {err.strerror or err}") from None
    return names


def read_gaussians(given: GivenModel, sh_degree: int) -> Dict[str, Tensor]:
    """The given model's Gaussians as splatfacto holds them, in the model's own frame."""
    if given.kind == "run":
        return load_gaussians(given.source_file())
    gaussians = gaussians_from_ply(read_3dgs_ply(given.path))
    if sh_degree == 0:
        # Splatfacto keeps a degree-0 model's colour as a logit (see DistilledSplatfactoModel.start_from).
        colour = SH2RGB(gaussians["features_dc"]).clamp(1e-4, 1 - 1e-4)
        gaussians["features_dc"] = torch.logit(colour)
    return gaussians
