"""Compact exports (.splat, SPZ, PLY), each read back by PlayCanvas's splat-transform, a reader that is not ours."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from distilled_splat.exports import splat_transform as splat_transform_tool
from distilled_splat.exports.exporters import ENCODERS, SplatArrays, read_3dgs_ply, sigmoid, unit_quaternions
from distilled_splat.exports.writer import export_compact
from distilled_splat.rendering import gsplat_viewmats, rasterize
from tests.conftest import required_tool, run_command


@pytest.fixture(scope="session")
def splat_transform() -> Path:
    return required_tool(splat_transform_tool.find(), splat_transform_tool.HOW_TO_GET)


def read_back(reader: Path, path: Path) -> SplatArrays:
    """``path`` converted to a PLY by splat-transform, then read."""
    target = path.with_name(path.name + ".readback.ply")
    result = subprocess.run([str(reader), "-q", "-w", str(path), str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return read_3dgs_ply(target)


def random_splats(count: int = 400, degree: int = 3, seed: int = 0) -> SplatArrays:
    rng = np.random.default_rng(seed)
    return SplatArrays(
        means=rng.uniform(-5, 5, (count, 3)).astype(np.float32),
        f_dc=rng.uniform(-1.5, 1.5, (count, 3)).astype(np.float32),
        f_rest=rng.uniform(-0.4, 0.4, (count, 3, (degree + 1) ** 2 - 1)).astype(np.float32),
        opacity=rng.uniform(-4, 4, count).astype(np.float32),
        log_scales=rng.uniform(-6, -1, (count, 3)).astype(np.float32),
        quats=rng.normal(size=(count, 4)).astype(np.float32),
    )


def canonical(quats: np.ndarray) -> np.ndarray:
    """Unit quaternions (w x y z) with w >= 0: q and -q are the same rotation."""
    unit = unit_quaternions(quats)
    return unit * np.where(unit[:, :1] < 0, -1.0, 1.0)


def rotation_agreement(a: SplatArrays, b: SplatArrays) -> np.ndarray:
    return np.abs((unit_quaternions(a.quats) * unit_quaternions(b.quats)).sum(1))


def test_every_format_round_trips_through_splat_transform_within_its_quantisation(splat_transform, tmp_path):
    original = random_splats()
    for fmt, encode in ENCODERS.items():
        path = tmp_path / f"model.{fmt}"
        path.write_bytes(encode(original))
        back = read_back(splat_transform, path)
        assert len(back) == len(original), fmt
        position, log_scale, alpha, dc, rest, rotation = {
            "ply": (1e-6, 1e-6, 1e-6, 1e-6, 1e-6, 1 - 1e-6),
            "spz": (0.5 / 4096 + 1e-6, 0.5 / 16 + 1e-5, 0.5 / 255 + 1e-6, 0.5 / (0.15 * 255) + 1e-5, 0.07, None),
            # a byte per component, error <= 1/256 each: |dot| >= 0.9995 is within 3.6 degrees
            "splat": (1e-6, 1e-5, 0.5 / 255 + 1e-6, None, None, 0.9995),
        }[fmt]
        assert np.abs(back.means - original.means).max() <= position, fmt
        assert np.abs(back.log_scales - original.log_scales).max() <= log_scale, fmt
        assert np.abs(sigmoid(back.opacity) - sigmoid(original.opacity)).max() <= alpha, fmt
        if rotation is not None:
            assert rotation_agreement(back, original).min() >= rotation, fmt
        else:
            # SPZ 2 stores x, y, z of the unit quaternion with w >= 0 as round((v + 1) * 127.5) and rebuilds w: the
            # stored components are within half a step; w, rebuilt, can be further off where it is near 0.
            assert np.abs(canonical(back.quats)[:, 1:] - canonical(original.quats)[:, 1:]).max() <= 0.5 / 127.5 + 1e-6
        if dc is not None:
            assert np.abs(back.f_dc - original.f_dc).max() <= dc, fmt
            # Signs matter: SPZ flips the axes, and the SH odd in y or z change sign with them.
            assert np.abs(back.f_rest - original.f_rest).max() <= rest, fmt
        else:  # .splat keeps the base colour as bytes, clipped to [0, 1]
            colour = np.clip(0.5 + 0.28209479 * original.f_dc, 0, 1)
            assert np.abs(np.clip(0.5 + 0.28209479 * back.f_dc, 0, 1) - colour).max() <= 0.5 / 255 + 1e-5


def render(splats: SplatArrays, camera) -> torch.Tensor:
    degree = splats.sh_degree
    colours = np.concatenate([splats.f_dc[:, None, :], splats.f_rest.transpose(0, 2, 1)], axis=1)
    image, _, _ = rasterize(
        torch.from_numpy(splats.means),
        torch.from_numpy(unit_quaternions(splats.quats).astype(np.float32)),
        torch.from_numpy(np.exp(splats.log_scales)),
        torch.from_numpy(sigmoid(splats.opacity).astype(np.float32)),
        torch.from_numpy(colours.astype(np.float32)),
        viewmats=gsplat_viewmats(camera.camera_to_worlds),
        Ks=camera.get_intrinsics_matrices(),
        width=int(camera.width),
        height=int(camera.height),
        sh_degree=degree,
        packed=False,
    )
    return image[0].clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_trained_student_exports_render_like_the_model(splat_transform, trained_student, tmp_path):
    """Each format, read back by splat-transform (not our reader) and rendered at a training camera, against the
    trained model's own render of that camera: what a viewer of the file sees against what the model shows."""
    from nerfstudio.utils.eval_utils import eval_setup

    from distilled_splat.data.teacher_cache import render_premultiplied

    _, pipeline, _, _ = eval_setup(trained_student, test_mode="inference")
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    model_render = torch.from_numpy(render_premultiplied(pipeline, camera)[..., :3].astype(np.float32))
    scores = {}
    for fmt in ENCODERS:
        path = tmp_path / f"student.{fmt}"
        summary = export_compact(path, fmt, load_config=trained_student)
        assert f"{path.stat().st_size:,} bytes" in summary
        scores[fmt] = psnr(render(read_back(splat_transform, path), camera), model_render)
    print("read-back PSNR against the model's own render:", scores)
    # PLY: float32 throughout; SPZ: 8-12 bit quantisation; .splat: no view-dependent colour.
    assert scores["ply"] > 45 and scores["spz"] > 35 and scores["splat"] > 20, scores
    sizes = {fmt: (tmp_path / f"student.{fmt}").stat().st_size for fmt in ENCODERS}
    assert sizes["spz"] < sizes["splat"] < sizes["ply"], sizes


def test_export_command_reduces_sh_and_culls_and_names_bad_input(trained_student, tmp_path):
    result = run_command(
        "distilled-splat", "export", "--load-config", str(trained_student), "--output", str(tmp_path / "s.spz"),
        "--sh-degree", "0", "--min-opacity", "0.02",
    )  # fmt: skip
    assert "wrote" in result.stdout and "removed" in result.stdout
    with open(tmp_path / "s.spz", "rb") as handle:
        import gzip

        header = gzip.decompress(handle.read())[:16]
    magic, version, count, degree = np.frombuffer(header[:12], "<u4").tolist() + [header[12]]
    assert (magic, version, degree) == (0x5053474E, 2, 0) and count > 0
    too_much = run_command(
        "distilled-splat", "export", "--load-config", str(trained_student), "--output", str(tmp_path / "t.spz"),
        "--min-opacity", "1.0", check=False,
    )  # fmt: skip
    assert "removes every Gaussian" in too_much.stderr and not (tmp_path / "t.spz").exists()
    bad = run_command("distilled-splat", "export", "--ply", "x.ply", "--output", str(tmp_path / "s.xyz"), check=False)
    assert bad.returncode != 0 and "cannot tell the format" in bad.stderr and "Traceback" not in bad.stderr


def test_splat_transform_version_is_read_from_the_installed_package(tmp_path, monkeypatch, capsys):
    """The frontier's fingerprint records the installed splat-transform's version, and another version than the
    one this package is checked with is said once."""
    from distilled_splat import notices
    from distilled_splat.exports import splat_transform

    package = tmp_path / "node_modules" / "@playcanvas" / "splat-transform"
    (package / "bin").mkdir(parents=True)
    (package / "package.json").write_text('{"name": "@playcanvas/splat-transform", "version": "9.9.9"}')
    (package / "bin" / "cli.mjs").write_text("")
    monkeypatch.setenv(splat_transform.ENVIRONMENT_VARIABLE, str(package / "bin" / "cli.mjs"))
    monkeypatch.setattr(notices, "_said", set())
    assert splat_transform.installed_version() == splat_transform.installed_version() == "9.9.9"
    said = capsys.readouterr().out
    assert said.count("splat-transform 9.9.9 is installed at") == 1 and "checked with 2.7.1" in said, said
    monkeypatch.setenv(splat_transform.ENVIRONMENT_VARIABLE, str(tmp_path / "none"))
    assert splat_transform.installed_version() == "missing"
