"""Writing any trained run or 3DGS PLY in any of the formats: PLY, SPZ and .splat by this package's encoders,
SOG and the interactive page through splat-transform."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from distilled_splat.exports import web_viewer
from distilled_splat.exports.exporters import ENCODERS, VIA_SPLAT_TRANSFORM, cull, encode_ply, read_3dgs_ply
from distilled_splat.files import write_atomically
from distilled_splat.training import export_ply

if TYPE_CHECKING:
    from distilled_splat.exports.web_viewer import OpeningView


def export_compact(
    target: Path,
    fmt: str,
    load_config: Optional[Path] = None,
    ply: Optional[Path] = None,
    sh_degree: Optional[int] = None,
    min_opacity: Optional[float] = None,
    opening_view: Optional["OpeningView"] = None,
) -> str:
    """Write a run (``load_config``) or a 3DGS PLY as ``fmt`` (ply, splat, spz, sog, html) at ``target``; returns
    a one-line summary. An html page opens at ``opening_view`` (a camera and background), or, for a run without
    one given, at the run's first held-out camera; sog and html go through splat-transform."""
    if load_config is not None:
        with tempfile.TemporaryDirectory() as folder:
            splats = read_3dgs_ply(export_ply(load_config, Path(folder) / "model.ply"))
        if fmt == "html" and opening_view is None:
            opening_view = web_viewer.held_out_view(load_config)
    else:
        splats = read_3dgs_ply(ply)
    total = len(splats)
    if sh_degree is not None:
        splats = splats.with_sh_degree(sh_degree)
    splats = cull(splats, min_opacity)
    if fmt in VIA_SPLAT_TRANSFORM:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "model.ply"
            source.write_bytes(encode_ply(splats))
            if fmt == "sog":
                web_viewer.write_sog(source, target)
            else:
                camera, background = opening_view if opening_view is not None else (None, (0.0, 0.0, 0.0))
                web_viewer.write_html(source, target, camera, background)
        size = target.stat().st_size
    else:
        data = ENCODERS[fmt](splats)
        write_atomically(target, lambda path: path.write_bytes(data))
        size = len(data)
    removed = f"; removed {total - len(splats):,} less opaque than {min_opacity:g}" if min_opacity is not None else ""
    per = size / max(len(splats), 1)
    return f"wrote {target}: {len(splats):,} Gaussians, {size:,} bytes ({per:.1f} per Gaussian){removed}"
