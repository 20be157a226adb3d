"""Compact files for splat viewers, written from a standard 3DGS PLY (what ``ns-export gaussian-splat`` writes).

- ``.splat``: antimatter15's layout, 32 bytes per Gaussian (float32 position and linear scale, RGBA and the
  rotation as bytes); no view-dependent colour.
- ``.spz``: Niantic's SPZ, version 2 (https://github.com/nianticlabs/spz, README "File Format"): a gzipped
  16-byte header and the attributes as streams, positions in 24-bit fixed point with 12 fractional bits, alpha,
  colour and log-scale in 8 bits, rotation as 3 bytes (x y z of the unit quaternion with w >= 0), higher SH in
  8 bits with 5 significant bits for degree 1 and 4 beyond. SPZ's axes are right-up-back where a 3DGS PLY's
  are right-down-front, so y and z flip (positions, rotations, and the SH coefficients odd in y or z), as
  readers such as PlayCanvas's splat-transform expect.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from distilled_splat.errors import DistilledSplatError

SH_C0 = 0.28209479177387814
"""Degree-0 spherical harmonic: colour = 0.5 + SH_C0 * f_dc."""
SPZ_MAGIC = 0x5053474E
SPZ_VERSION = 2
SPZ_FRACTIONAL_BITS = 12
SPZ_COLOUR_SCALE = 0.15
"""SPZ stores f_dc * 0.15 + 0.5 in a byte (not 0.282): room for base colours the higher SH bring into range."""
Format = Literal["ply", "splat", "spz", "sog", "html"]
VIA_SPLAT_TRANSFORM = ("sog", "html")
"""Formats written by PlayCanvas's splat-transform (distilled_splat.exports.web_viewer) from our PLY."""
SH_SIGNS_Y_Z_FLIPPED = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=np.float32)
"""Sign of each real SH basis function of degrees 1-3 (3DGS order) under (x, y, z) -> (x, -y, -z)."""


@dataclass
class SplatArrays:
    """The Gaussians of a 3DGS PLY, as stored there (raw, before activation)."""

    means: np.ndarray  # [N, 3]
    f_dc: np.ndarray  # [N, 3] degree-0 SH
    f_rest: np.ndarray  # [N, 3, K] higher SH per colour channel, K = (degree + 1)^2 - 1
    opacity: np.ndarray  # [N] logit
    log_scales: np.ndarray  # [N, 3]
    quats: np.ndarray  # [N, 4] w x y z, not necessarily normalised

    def __len__(self) -> int:
        return len(self.means)

    @property
    def sh_degree(self) -> int:
        return int(round(np.sqrt(self.f_rest.shape[2] + 1))) - 1

    def with_sh_degree(self, degree: int) -> "SplatArrays":
        """The same Gaussians with view-dependent colour cut to ``degree`` (0 keeps only the base colour)."""
        if not 0 <= degree <= self.sh_degree:
            raise DistilledSplatError(f"--sh-degree must be between 0 and the model's {self.sh_degree}, got {degree}")
        keep = (degree + 1) ** 2 - 1
        return SplatArrays(self.means, self.f_dc, self.f_rest[:, :, :keep], self.opacity, self.log_scales, self.quats)

    def subset(self, keep: np.ndarray) -> "SplatArrays":
        return SplatArrays(*(getattr(self, name)[keep] for name in SplatArrays.__dataclass_fields__))


def read_3dgs_ply(path: Path) -> SplatArrays:
    """A standard 3DGS PLY (x y z, f_dc_*, f_rest_*, opacity, scale_*, rot_*)."""
    from plyfile import PlyData, PlyParseError

    try:
        vertex = PlyData.read(str(path))["vertex"]
    except (OSError, ValueError, KeyError, PlyParseError) as err:
        raise DistilledSplatError(f"{path} is not a readable 3DGS PLY ({err})") from None
    names = set(vertex.data.dtype.names)
    needed = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2"}
    needed |= {f"rot_{i}" for i in range(4)}  # every column read below: a missing one is this error, not a KeyError
    if not needed <= names:
        raise DistilledSplatError(f"{path} is not a 3DGS PLY: it lacks {sorted(needed - names)}")

    def columns(prefix: str, count: int) -> np.ndarray:
        return np.stack([np.asarray(vertex[f"{prefix}{i}"], dtype=np.float32) for i in range(count)], axis=1)

    rest = sum(1 for name in names if name.startswith("f_rest_"))
    count = len(vertex.data)
    f_rest = columns("f_rest_", rest).reshape(count, 3, rest // 3) if rest else np.zeros((count, 3, 0), np.float32)
    return SplatArrays(
        means=np.stack([np.asarray(vertex[axis], dtype=np.float32) for axis in "xyz"], axis=1),
        f_dc=columns("f_dc_", 3),
        f_rest=f_rest,
        opacity=np.asarray(vertex["opacity"], dtype=np.float32),
        log_scales=columns("scale_", 3),
        quats=columns("rot_", 4),
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def to_bytes(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def unit_quaternions(quats: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    return np.where(norms > 0, quats / np.maximum(norms, 1e-12), np.array([1.0, 0.0, 0.0, 0.0]))


def encode_splat(splats: SplatArrays) -> bytes:
    """antimatter15 ``.splat``: per Gaussian 3 float32 position, 3 float32 scale, RGBA bytes, wxyz rotation bytes."""
    rgba = np.concatenate([0.5 + SH_C0 * splats.f_dc, sigmoid(splats.opacity)[:, None]], axis=1) * 255
    record = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
    out = np.empty(len(splats), dtype=record)
    out["position"] = splats.means
    out["scale"] = np.exp(splats.log_scales)
    out["rgba"] = to_bytes(rgba)
    out["rotation"] = to_bytes(unit_quaternions(splats.quats) * 128 + 128)
    return out.tobytes()


def quantise_sh(values: np.ndarray, significant_bits: int) -> np.ndarray:
    """SH coefficient in [-1, 1] to a byte around 128, rounded to a multiple of 2^(8 - bits) (SPZ's default)."""
    bucket = 1 << (8 - significant_bits)
    q = np.round(values * 128.0) + 128.0
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def encode_spz(splats: SplatArrays, antialiased: bool = False) -> bytes:
    """SPZ version 2 (see the module docstring), gzipped."""
    count = len(splats)
    flip = np.array([1.0, -1.0, -1.0])
    fixed = np.round(splats.means.astype(np.float64) * flip * (1 << SPZ_FRACTIONAL_BITS)).astype(np.int64)
    if np.abs(fixed).max(initial=0) >= 1 << 23:
        raise DistilledSplatError(
            f"SPZ stores positions within +-{(1 << 23) / (1 << SPZ_FRACTIONAL_BITS):g} units; this model reaches "
            f"{np.abs(splats.means).max():g}"
        )
    positions = (fixed & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(count, 3, 4)[:, :, :3]
    quats = unit_quaternions(splats.quats) * np.array([1.0, 1.0, -1.0, -1.0])  # the same rotation in flipped axes
    quats = np.where(quats[:, :1] < 0, -quats, quats)  # w >= 0, so x y z determine it
    degree = splats.sh_degree
    signs = SH_SIGNS_Y_Z_FLIPPED[: splats.f_rest.shape[2]]
    sh = (splats.f_rest * signs).transpose(0, 2, 1)  # [N, K, 3]: SPZ puts the colour channel innermost
    sh_bytes = np.concatenate([quantise_sh(sh[:, :3], 5), quantise_sh(sh[:, 3:], 4)], axis=1) if degree else sh
    header = struct.pack("<IIIBBBB", SPZ_MAGIC, SPZ_VERSION, count, degree, SPZ_FRACTIONAL_BITS, int(antialiased), 0)
    streams = [
        positions,
        to_bytes(sigmoid(splats.opacity) * 255),
        to_bytes(splats.f_dc * (SPZ_COLOUR_SCALE * 255) + 0.5 * 255),
        to_bytes((splats.log_scales + 10.0) * 16.0),
        to_bytes(quats[:, 1:] * 127.5 + 127.5),
        np.asarray(sh_bytes, dtype=np.uint8),
    ]
    return gzip.compress(header + b"".join(np.ascontiguousarray(s).tobytes() for s in streams), mtime=0)


def encode_ply(splats: SplatArrays) -> bytes:
    """A standard binary 3DGS PLY (the layout ns-export writes: f_rest channel-major)."""
    columns = {f"{axis}": splats.means[:, i] for i, axis in enumerate("xyz")}
    columns.update({f"f_dc_{i}": splats.f_dc[:, i] for i in range(3)})
    rest = splats.f_rest.reshape(len(splats), -1)
    columns.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
    columns["opacity"] = splats.opacity
    columns.update({f"scale_{i}": splats.log_scales[:, i] for i in range(3)})
    columns.update({f"rot_{i}": splats.quats[:, i] for i in range(4)})
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(splats)}"]
    header += [f"property float {name}" for name in columns] + ["end_header"]
    body = np.stack([np.asarray(c, dtype="<f4") for c in columns.values()], axis=1)
    return ("\n".join(header) + "\n").encode() + body.tobytes()


def cull(splats: SplatArrays, min_opacity: Optional[float]) -> SplatArrays:
    """Drop Gaussians whose opacity is below ``min_opacity`` (they add at most that much to any pixel)."""
    if min_opacity is None:
        return splats
    kept = splats.subset(sigmoid(splats.opacity) >= min_opacity)
    if len(kept) == 0:
        raise DistilledSplatError(f"--min-opacity {min_opacity:g} removes every Gaussian; lower it")
    return kept


ENCODERS = {"ply": encode_ply, "splat": encode_splat, "spz": encode_spz}
