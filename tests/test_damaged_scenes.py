"""Scene folders that are not what they claim (both kinds), damaged in random combinations: each either trains
(the damage is harmless) or fails in one line naming the file or frame, with no output folder created."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nerfstudio.data.utils import colmap_parsing_utils as colmap
from PIL import Image

from distilled_splat.cli import Run
from distilled_splat.data.scene_checks import check_frames
from distilled_splat.data.scene_inputs import find_scene
from distilled_splat.errors import DistilledSplatError
from distilled_splat.method_configs import distilled_splatfacto, distilled_teacher
from distilled_splat.run_configs import RecipeSettings
from tests.conftest import run_command
from tests.helpers import train_run
from tests.scene_builders import write_colmap
from tests.test_nerfstudio_commands import assert_one_line_error


def image_file(folder: Path, index: int) -> Path:
    return folder / "images" / f"frame_{index:05d}.png"


def change_transforms(folder: Path, change) -> None:
    meta = json.loads((folder / "transforms.json").read_text())
    change(meta)
    (folder / "transforms.json").write_text(json.dumps(meta))


def change_colmap(folder: Path, change) -> None:
    model = folder / "sparse" / "0"
    cameras, images, points = colmap.read_model(str(model), ext=".bin")
    change(cameras, images)
    colmap.write_model(cameras, images, points, str(model), ext=".bin")


def set_pose(kind: str, folder: Path, index: int, value: float) -> None:
    if kind == "transforms":
        change_transforms(folder, lambda m: m["frames"][index]["transform_matrix"][0].__setitem__(0, value))
    else:

        def change(cameras, images):
            image = images[index + 1]
            images[index + 1] = image._replace(qvec=np.array([value, 0.0, 0.0, 0.0]))

        change_colmap(folder, change)


def text_image(kind, folder, index):
    image_file(folder, index).write_bytes(b"this is not an image")


def truncated_image(kind, folder, index):
    path = image_file(folder, index)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def convert(mode: str, image_format: str = "PNG"):
    def damage(kind, folder, index):
        path = image_file(folder, index)
        try:
            with Image.open(path) as image:
                converted = image.convert("RGB").convert(mode)
        except OSError:  # already damaged beyond reading by another damage: write a plain image instead
            converted = Image.new("RGB", (48, 40), "grey").convert(mode)
        converted.save(path, format=image_format)

    return damage


def nan_pose(kind, folder, index):
    set_pose(kind, folder, index, float("nan"))


def singular_pose(kind, folder, index):
    if kind == "transforms":
        change_transforms(
            folder, lambda m: m["frames"][index].update(transform_matrix=[[0.0] * 4] * 3 + [[0, 0, 0, 1]])
        )
    else:
        set_pose(kind, folder, index, 0.0)  # a zero quaternion


def zero_focal(kind, folder, index):
    if kind == "transforms":
        change_transforms(folder, lambda m: m.update(fl_x=0.0))
    else:
        change_colmap(folder, lambda cameras, images: cameras[1].params.__setitem__(0, 0.0))


def duplicate_frame(kind, folder, index):
    if kind == "transforms":
        change_transforms(folder, lambda m: m["frames"].append(dict(m["frames"][index])))
    else:

        def change(cameras, images):
            images[len(images) + 1] = images[index + 1]._replace(id=len(images) + 1)

        change_colmap(folder, change)


def missing_image(kind, folder, index):
    image_file(folder, index).unlink()


def unsupported_camera(kind, folder, index):
    if kind == "transforms":
        change_transforms(folder, lambda m: m.update(camera_model="EQUIRECTANGULAR"))
    else:
        change_colmap(folder, lambda c, i: c.__setitem__(1, c[1]._replace(model="FOV", params=c[1].params[:5])))


def frame(kind: str, index: int) -> str:
    """How the one-line error names frame ``index`` of a scene of ``kind`` (a regular expression)."""
    return (
        rf"frame {index} of \S+transforms\.json"
        if kind == "transforms"
        else rf"image frame_{index:05d}\.png \(id {index + 1}\) of \S+"
    )


def image(index: int) -> str:
    return rf"images/frame_{index:05d}\.png"


# name: (damage, the one-line error as a regular expression of (scene kind, damaged frame), or None where the
# damage is harmless). Each names the damage and where it is, so that no damage's message passes for another's.
DAMAGES = {
    "text instead of an image": (text_image, lambda k, i: rf"{image(i)} is unreadable \(cannot identify image file"),
    "truncated image": (truncated_image, lambda k, i: rf"{image(i)} is unreadable \(image file is truncated\)"),
    "greyscale image": (convert("L"), None),  # nerfstudio repeats the grey channel: harmless
    "palette image": (convert("P"), lambda k, i: rf"{image(i)} has mode P, "),
    "16-bit image": (convert("I;16"), lambda k, i: rf"{image(i)} has mode I;16, "),
    "CMYK image": (convert("CMYK", "TIFF"), lambda k, i: rf"{image(i)} has mode CMYK, "),
    "NaN in a pose": (nan_pose, lambda k, i: rf"{frame(k, i)}: the pose has non-finite values"),
    "singular pose": (singular_pose, lambda k, i: rf"{frame(k, i)}: the pose's rotation is singular"),
    "zero focal length": (zero_focal, lambda k, i: rf"{frame(k, 0)}: 'fl_x' must be positive, got 0"),
    "duplicate frame": (duplicate_frame, lambda k, i: rf"repeats the image of {frame(k, i)}"),
    "image missing on disk": (missing_image, lambda k, i: rf"image missing: \S+{image(i)}"),
    "camera model nerfstudio cannot undistort": (
        unsupported_camera,
        lambda k, i: (
            "camera model EQUIRECTANGULAR is not one nerfstudio can undistort"
            if k == "transforms"
            else "COLMAP camera 1 in \\S+ uses the FOV model, which nerfstudio cannot undistort"
        ),
    ),
}


@pytest.mark.parametrize("kind", ["transforms", "colmap"])
@pytest.mark.parametrize("name", [name for name, (_, message) in DAMAGES.items() if message is not None])
def test_each_damage_has_its_own_message(scene_kinds, tmp_path, kind, name):
    """Alone, each damage fails with its own message: none matches another damage's."""
    folder = shutil.copytree(scene_kinds[kind], tmp_path / "scene")
    DAMAGES[name][0](kind, folder, 3)
    with pytest.raises(DistilledSplatError) as raised:
        check_frames(find_scene(folder), None)
    message = str(raised.value)
    matches = [other for other, (_, pattern) in DAMAGES.items() if pattern and re.search(pattern(kind, 3), message)]
    assert matches == [name], (message, matches)


@pytest.fixture(scope="module")
def scene_kinds(tiny_scene, tmp_path_factory):
    return {"transforms": tiny_scene, "colmap": write_colmap(tiny_scene, tmp_path_factory.mktemp("colmap") / "s")}


@settings(max_examples=24, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    kind=st.sampled_from(["transforms", "colmap"]),
    damages=st.lists(st.sampled_from(sorted(DAMAGES)), max_size=2, unique=True),
    index=st.integers(0, 15),
)
def test_damaged_scene_trains_or_fails_in_one_line(scene_kinds, tmp_path_factory, kind, damages, index):
    # Folders stay until the session ends: nerfstudio's event writer may still flush into the last run folder.
    temporary = tmp_path_factory.mktemp("damaged")
    folder = shutil.copytree(scene_kinds[kind], temporary / "scene")
    for name in damages:
        DAMAGES[name][0](kind, folder, index)
    expected = [DAMAGES[name][1](kind, index) for name in damages if DAMAGES[name][1] is not None]
    output = temporary / "out"
    if expected:
        with pytest.raises(DistilledSplatError) as raised:
            Run(folder, output, RecipeSettings(steps=2, device="cpu")).main()
        message = str(raised.value)
        # The first damage found is reported: its own message, naming the frame, not just any failure.
        assert "\n" not in message and any(re.search(pattern, message) for pattern in expected), (damages, message)
        assert not output.exists()
    else:  # harmless (or no damage): the scene trains
        config = train_run(distilled_teacher.config, folder, temporary / "runs", 2)
        assert (config.parent / "nerfstudio_models" / "step-000000001.ckpt").is_file()


def test_damaged_image_fails_in_one_line_from_the_command_line(tiny_scene, tmp_path):
    folder = shutil.copytree(tiny_scene, tmp_path / "scene")
    text_image("transforms", folder, 3)
    result = run_command(
        "distilled-splat", "run", "--data", str(folder), "--output", str(tmp_path / "out"), "--steps", "10",
        check=False,
    )  # fmt: skip
    assert_one_line_error(result, "frame_00003.png is unreadable", tmp_path / "out")


def truncate(run: Path) -> None:
    text = (run / "config.yml").read_text()
    (run / "config.yml").write_text(text[: len(text) // 2])


def other_method(run: Path) -> None:
    import yaml
    from nerfstudio.configs.method_configs import method_configs

    (run / "config.yml").write_text(yaml.dump(method_configs["nerfacto"]))


@pytest.mark.parametrize(
    "damage, message",
    [
        (truncate, "unreadable"),
        (lambda run: (run / "config.yml").write_text("method_name: nerfacto\n"), "not a nerfstudio run config"),
        (other_method, "trained with nerfacto, not a Gaussian splat method"),
        (lambda run: shutil.rmtree(run / "nerfstudio_models"), "has no checkpoint"),
    ],
    ids=["truncated yaml", "not a run config", "another method", "checkpoint folder missing"],
)
def test_damaged_teacher_run_is_named(tiny_scene, teacher_runs, tmp_path, damage, message):
    broken = shutil.copytree(teacher_runs[1].parent, tmp_path / "broken")
    damage(broken)
    datamanager = copy.deepcopy(distilled_splatfacto.config.pipeline.datamanager)
    datamanager.data = tiny_scene
    datamanager.teachers = (teacher_runs[0], broken)
    with pytest.raises(DistilledSplatError, match=message) as raised:
        datamanager.prepare_run(tmp_path / "run")
    assert str(broken) in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "run").exists()
