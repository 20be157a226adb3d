"""The structural loss: the marginal mode is exactly the reference formula; the joint mode is a real 3D measure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distilled_splat.losses import StructureLoss, structure_loss


def reference_grid_loss(student, teacher, grid_size, sigma=0.5, margin=0.01):
    """The reference formula, literally: full grid^3 outer product of soft marginals, normalised, cosine."""
    points = torch.cat([student, teacher])
    lower, upper = points.min(0).values - margin, points.max(0).values + margin
    voxel = (upper - lower) / grid_size
    centres = torch.arange(grid_size, dtype=student.dtype)

    def histogram(cloud):
        coords = (cloud - lower) / voxel
        axes = [torch.exp(-((coords[:, a : a + 1] - centres) ** 2) / (2 * sigma**2)).sum(0) for a in range(3)]
        grid = (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).reshape(-1)
        return grid / (grid.sum() + 1e-8)

    return 1 - F.cosine_similarity(histogram(student), histogram(teacher), dim=0)


@pytest.mark.parametrize("grid_size", [4, 16, 48])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_marginal_mode_equals_the_reference_grid_computation(grid_size, dtype):
    torch.manual_seed(grid_size)
    student = torch.randn(700, 3, dtype=dtype) * torch.tensor([1.0, 0.5, 2.0], dtype=dtype)
    teacher = torch.randn(400, 3, dtype=dtype) * 1.3 + 0.2
    expected = reference_grid_loss(student.double(), teacher.double(), grid_size)
    actual = structure_loss(student, teacher, mode="marginal", grid_size=grid_size)
    assert actual.dtype == dtype
    # float64 agrees to rounding; float32 to its own resolution (the reference in float32 is no closer).
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(actual.double(), expected, atol=tolerance, rtol=tolerance)


def test_marginal_gradient_flows_to_the_student_means_only():
    torch.manual_seed(0)
    student = (torch.randn(300, 3, dtype=torch.float64)).requires_grad_(True)
    teacher = torch.randn(300, 3, dtype=torch.float64) + 0.5
    loss = structure_loss(student, teacher, grid_size=32)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    # A small step against the gradient lowers the loss: the gradient is the loss's, not just non-zero.
    with torch.no_grad():
        moved = structure_loss(student - 1e-2 * student.grad / student.grad.norm(), teacher, grid_size=32)
    assert moved < loss


def test_joint_mode_is_zero_for_identical_sets_and_grows_with_separation():
    torch.manual_seed(0)
    teacher = torch.rand(2000, 3)
    losses = [
        float(structure_loss(teacher + shift, teacher, mode="joint", grid_size=64)) for shift in (0, 0.02, 0.1, 0.3)
    ]
    assert losses[0] == pytest.approx(0.0, abs=5e-5)  # float32 cosine over 64^3 bins
    assert losses[0] < losses[1] < losses[2] < losses[3]


def test_joint_mode_sees_what_the_marginals_cannot():
    # Two clouds with identical per-axis marginals: points on the diagonal vs on the anti-diagonal.
    t = torch.linspace(0, 1, 500)
    diagonal = torch.stack([t, t, t], 1)
    anti = torch.stack([t, t.flip(0), t], 1)
    assert float(structure_loss(diagonal, anti, mode="marginal", grid_size=32)) == pytest.approx(0.0, abs=1e-6)
    assert float(structure_loss(diagonal, anti, mode="joint", grid_size=32)) > 0.5


def test_joint_gradient_matches_finite_differences():
    torch.manual_seed(1)
    student = (torch.rand(40, 3, dtype=torch.float64)).requires_grad_(True)
    # Teacher points span the box, so moving the student does not move the (constant) box.
    corners = torch.tensor([[-0.2] * 3, [1.2] * 3], dtype=torch.float64)
    teacher = torch.cat([torch.rand(60, 3, dtype=torch.float64), corners])
    torch.autograd.gradcheck(lambda s: structure_loss(s, teacher, mode="joint", grid_size=8), (student,))


def test_bad_mode_and_grid_are_refused():
    points = torch.rand(10, 3)
    with pytest.raises(ValueError, match="mode"):
        structure_loss(points, points, mode="cubic")
    with pytest.raises(ValueError, match="grid_size"):
        structure_loss(points, points, grid_size=1)


@pytest.mark.parametrize("mode", ["marginal", "joint"])
def test_kept_loss_reuses_the_teacher_histogram_only_while_the_box_is_unchanged(mode):
    torch.manual_seed(3)
    teacher = torch.randn(500, 3, dtype=torch.float64)
    kept = StructureLoss(teacher, mode=mode, grid_size=24)
    student = teacher[:60].clone() * 0.5  # inside the teacher's box
    histograms = []
    for move in (0.0, 0.1, 5.0, 0.0):  # the third step leaves the box, the fourth returns inside it
        points = (student + move).requires_grad_(True)
        fresh = points.detach().clone().requires_grad_(True)
        value = kept(points)
        expected = structure_loss(fresh, teacher, mode=mode, grid_size=24)
        value.backward()
        expected.backward()
        torch.testing.assert_close(value, expected, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(points.grad, fresh.grad, atol=1e-12, rtol=1e-12)
        histograms.append(kept.cached_teacher[2])
    assert histograms[1] is histograms[0], "same box: the teacher histogram must be reused"
    assert histograms[2] is not histograms[1], "a student outside the teacher's box changes the box"
    assert histograms[3] is not histograms[2] and torch.equal(histograms[3], histograms[0])
