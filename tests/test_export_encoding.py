"""The encoders' bytes, decoded by readers written here from the format descriptions, and the PLY reader's edges.

The round trips through splat-transform (test_exports.py) check the files a user's viewer sees; these check each
field exactly, so that a wrong scale, sign or rounding cannot hide inside a loose render tolerance.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports.exporters import encode_ply, encode_splat, encode_spz, read_3dgs_ply, to_bytes
from tests.test_exports import random_splats

# The real SH basis functions of degrees 1-3 in 3DGS's order, up to their constant factors (which signs ignore).
SH_BASIS_SHAPES = [
    lambda x, y, z: y, lambda x, y, z: z, lambda x, y, z: x,
    lambda x, y, z: x * y, lambda x, y, z: y * z, lambda x, y, z: 3 * z * z - 1, lambda x, y, z: x * z,
    lambda x, y, z: x * x - y * y,
    lambda x, y, z: y * (3 * x * x - y * y), lambda x, y, z: x * y * z, lambda x, y, z: y * (5 * z * z - 1),
    lambda x, y, z: z * (5 * z * z - 3), lambda x, y, z: x * (5 * z * z - 1), lambda x, y, z: z * (x * x - y * y),
    lambda x, y, z: x * (x * x - 3 * y * y),
]  # fmt: skip


def sh_signs_under_y_z_flip() -> np.ndarray:
    """Sign of each basis function under (x, y, z) -> (x, -y, -z), from the functions at a generic direction."""
    x, y, z = 0.3, 0.5, 0.8
    return np.array([np.sign(f(x, -y, -z) / f(x, y, z)) for f in SH_BASIS_SHAPES])


def unit_length(quats: np.ndarray) -> np.ndarray:
    """Quaternions scaled to length 1; a zero one is the identity rotation."""
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, quats / safe, np.array([1.0, 0.0, 0.0, 0.0]))


def decode_spz(data: bytes, degree: int):
    """SPZ v2 read by its published layout: header, then per-attribute streams over all Gaussians."""
    raw = gzip.decompress(data)
    magic, version, count = np.frombuffer(raw[:12], "<u4").tolist()
    header = {
        "magic": magic,
        "version": version,
        "count": count,
        "degree": raw[12],
        "bits": raw[13],
        "flags": raw[14],
        "reserved": raw[15],
    }
    stream = np.frombuffer(raw[16:], np.uint8)
    sizes = {"positions": 9, "alpha": 1, "colour": 3, "scales": 3, "rotations": 3, "sh": 3 * ((degree + 1) ** 2 - 1)}
    fields, offset = {}, 0
    for name, width in sizes.items():
        fields[name] = stream[offset : offset + count * width].reshape(count, width)
        offset += count * width
    assert offset == len(stream), "no bytes beyond the streams"
    packed = fields["positions"].reshape(count, 3, 3).astype(np.int64)
    fixed = packed[..., 0] | (packed[..., 1] << 8) | (packed[..., 2] << 16)
    fixed = np.where(fixed >= 1 << 23, fixed - (1 << 24), fixed)
    fields["positions"] = fixed / float(1 << header["bits"])
    return header, fields


def test_spz_fields_decode_to_the_gaussians_within_their_quantisation():
    splats = random_splats(count=300, degree=3, seed=4)
    splats.quats[0] = 0.0  # a degenerate rotation is written as the identity
    splats.f_rest[1, :, 0], splats.f_rest[2, :, 0] = -1.5, 1.5  # beyond SPZ's range: clipped to its ends
    header, fields = decode_spz(encode_spz(splats, antialiased=True), degree=3)
    assert header == {
        "magic": 0x5053474E,
        "version": 2,
        "count": 300,
        "degree": 3,
        "bits": 12,
        "flags": 1,
        "reserved": 0,
    }

    flip = np.array([1.0, -1.0, -1.0])  # nerfstudio's axes to SPZ's (y down, z forward)
    np.testing.assert_allclose(fields["positions"], splats.means * flip, atol=0.5 / 4096 + 1e-6)
    alpha = 1 / (1 + np.exp(-splats.opacity.astype(np.float64)))
    np.testing.assert_array_equal(fields["alpha"][:, 0], np.clip(np.round(alpha * 255), 0, 255))
    np.testing.assert_array_equal(fields["colour"], np.clip(np.round(splats.f_dc * 0.15 * 255 + 127.5), 0, 255))
    np.testing.assert_array_equal(fields["scales"], np.clip(np.round((splats.log_scales + 10) * 16), 0, 255))

    xyz = (fields["rotations"].astype(np.float64) - 127.5) / 127.5
    unit = unit_length(splats.quats) * np.array([1.0, 1.0, -1.0, -1.0])
    unit *= np.where(unit[:, :1] < 0, -1.0, 1.0)
    np.testing.assert_allclose(xyz, unit[:, 1:], atol=0.5 / 127.5 + 1e-9)
    assert np.abs(xyz[0]).max() <= 0.5 / 127.5, "the zero quaternion is stored as the identity"

    sh = fields["sh"].reshape(300, 15, 3).astype(np.float64)
    expected = (splats.f_rest * sh_signs_under_y_z_flip()).transpose(0, 2, 1)
    degree_one = 0.5 * (1 << 3) / 128 + 0.5 / 128  # 5 significant bits, then the rounding to a 1/128 step
    degree_two_three = 0.5 * (1 << 4) / 128 + 0.5 / 128  # 4 significant bits
    np.testing.assert_allclose((sh[3:, :3] - 128) / 128, expected[3:, :3], atol=degree_one + 1e-9)
    np.testing.assert_allclose((sh[3:, 3:] - 128) / 128, expected[3:, 3:], atol=degree_two_three + 1e-9)
    assert set(np.unique(sh[3:, :3] % 8)) == {0} and set(np.unique(sh[3:, 3:] % 16)) == {0}
    # The first degree-1 band changes sign with the axes: -1.5 becomes 1.5.
    assert sh[1, 0].tolist() == [255, 255, 255] and sh[2, 0].tolist() == [0, 0, 0]


def test_spz_is_byte_identical_across_runs():
    splats = random_splats(count=20)
    data = encode_spz(splats)
    assert data == encode_spz(splats) and data[4:8] == bytes(4), "gzip header without a timestamp"


def test_splat_records_decode_to_the_gaussians():
    splats = random_splats(count=30, seed=5)
    record = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
    out = np.frombuffer(encode_splat(splats), dtype=record)
    np.testing.assert_array_equal(out["position"], splats.means)
    np.testing.assert_allclose(out["scale"], np.exp(splats.log_scales), rtol=1e-6)
    colour = np.clip(np.round((0.5 + 0.28209479177387814 * splats.f_dc) * 255), 0, 255)
    np.testing.assert_array_equal(out["rgba"][:, :3], colour)
    alpha = np.round(255 / (1 + np.exp(-splats.opacity.astype(np.float64))))
    np.testing.assert_array_equal(out["rgba"][:, 3], alpha)
    np.testing.assert_allclose((out["rotation"] - 128.0) / 128, unit_length(splats.quats), atol=0.5 / 128 + 0.01)
    expected = np.clip(np.round(unit_length(splats.quats) * 128 + 128), 0, 255)
    np.testing.assert_array_equal(out["rotation"], expected)


def test_sh_degree_can_be_kept_or_lowered_but_not_raised():
    splats = random_splats(count=3, degree=2)
    assert splats.with_sh_degree(2).f_rest.shape == (3, 3, 8) and splats.with_sh_degree(1).f_rest.shape == (3, 3, 3)
    with pytest.raises(DistilledSplatError, match="between 0 and the model's 2, got 3"):
        splats.with_sh_degree(3)
    with pytest.raises(DistilledSplatError, match="got -1"):
        splats.with_sh_degree(-1)


def test_spz_of_degree_zero_has_no_sh_stream_and_is_not_antialiased_by_default():
    splats = random_splats(count=50, degree=3).with_sh_degree(0)
    header, fields = decode_spz(encode_spz(splats), degree=0)
    assert (header["degree"], header["flags"], fields["sh"].shape) == (0, 0, (50, 0))


def test_spz_refuses_positions_beyond_its_fixed_point_range():
    splats = random_splats(count=5)
    splats.means[3, 1] = -2100.0
    with pytest.raises(DistilledSplatError, match=r"within \+-2048 units; this model reaches 2100"):
        encode_spz(splats)
    splats.means[3, 1] = 2048.0  # 2^23 in fixed point: one past the largest 24-bit signed value's magnitude
    with pytest.raises(DistilledSplatError, match="this model reaches 2048"):
        encode_spz(splats)
    splats.means[3, 1] = 2047.0
    assert decode_spz(encode_spz(splats), degree=3)[1]["positions"][3, 1] == -2047.0


def test_bytes_round_to_nearest_and_clip():
    values = np.array([-3.0, 0.4, 0.6, 127.5, 254.6, 300.0])
    assert to_bytes(values).tolist() == [0, 0, 1, 128, 255, 255] and to_bytes(values).dtype == np.uint8


def test_unit_quaternions_normalise_and_make_zero_the_identity():
    from distilled_splat.exports.exporters import unit_quaternions

    quats = np.array([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 4.0]])
    np.testing.assert_allclose(unit_quaternions(quats), [[1, 0, 0, 0], [1, 0, 0, 0], [0, 0.6, 0, 0.8]])


def test_ply_reads_back_exactly_with_channel_major_sh(tmp_path):
    splats = random_splats(count=20, degree=2, seed=7)
    splats.f_rest[:] = np.arange(20 * 3 * 8, dtype=np.float32).reshape(20, 3, 8)  # every coefficient distinct
    (tmp_path / "s.ply").write_bytes(encode_ply(splats))
    back = read_3dgs_ply(tmp_path / "s.ply")
    for name in ("means", "f_dc", "f_rest", "opacity", "log_scales", "quats"):
        np.testing.assert_array_equal(getattr(back, name), getattr(splats, name), err_msg=name)
        assert getattr(back, name).dtype == np.float32, name
    assert back.sh_degree == 2


def test_ply_without_higher_sh_reads_as_degree_zero(tmp_path):
    splats = random_splats(count=4).with_sh_degree(0)
    (tmp_path / "s.ply").write_bytes(encode_ply(splats))
    back = read_3dgs_ply(tmp_path / "s.ply")
    assert back.f_rest.shape == (4, 3, 0) and back.f_rest.dtype == np.float32 and back.sh_degree == 0


def test_unreadable_or_incomplete_ply_is_named_in_one_error(tmp_path):
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(DistilledSplatError, match=r"junk\.ply is not a readable 3DGS PLY \("):
        read_3dgs_ply(tmp_path / "junk.ply")
    with pytest.raises(DistilledSplatError, match=r"missing\.ply is not a readable 3DGS PLY"):
        read_3dgs_ply(tmp_path / "missing.ply")
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
    (tmp_path / "points.ply").write_bytes((header + "end_header\n").encode() + np.zeros(2, "<f4").tobytes())
    with pytest.raises(DistilledSplatError, match=r"points\.ply is not a 3DGS PLY: it lacks \['f_dc_0', 'f_dc_1', "):
        read_3dgs_ply(tmp_path / "points.ply")
