"""A slow, per-pixel, per-Gaussian splat renderer written from the definitions, to check the fast one against.

Everything is scalar Python over torch scalars so autograd gives reference gradients. It implements gsplat's
semantics: perspective Jacobian with the view-frustum clamp, 0.3 px blur, 3-sigma square footprint,
alpha = min(0.999, o * exp(-sigma)) skipped below 1/255, and a pixel stops before transmittance would reach 1e-4.
"""

from __future__ import annotations

import math

import torch


def _rotation(q):
    w, x, y, z = q / torch.linalg.norm(q)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
        ]
    )


def project(mean, quat, scale, viewmat, K, width, height, eps2d=0.3, near=0.01):
    """Returns (depth, mean2d [2], conic [2, 2], radius) or None when culled."""
    p = viewmat[:3, :3] @ mean + viewmat[:3, 3]
    x, y, z = p
    if z <= near:
        return None
    rot = _rotation(quat)
    cov_world = rot @ torch.diag(scale * scale) @ rot.T
    cov_cam = viewmat[:3, :3] @ cov_world @ viewmat[:3, :3].T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z * torch.clamp(x / z, -(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    ty = z * torch.clamp(y / z, -(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros(())
    jac = torch.stack([torch.stack([fx / z, zero, -fx * tx / z**2]), torch.stack([zero, fy / z, -fy * ty / z**2])])
    cov2d = jac @ cov_cam @ jac.T + eps2d * torch.eye(2)
    det = cov2d[0, 0] * cov2d[1, 1] - cov2d[0, 1] * cov2d[1, 0]
    if det <= 0:
        return None
    conic = torch.stack([torch.stack([cov2d[1, 1], -cov2d[0, 1]]), torch.stack([-cov2d[1, 0], cov2d[0, 0]])]) / det
    half_trace = 0.5 * (cov2d[0, 0] + cov2d[1, 1])
    half_trace, det_value = float(half_trace.detach()), float(det.detach())
    radius = math.ceil(3 * math.sqrt(half_trace + max(half_trace**2 - det_value, 0.01) ** 0.5))
    mean2d = torch.stack([fx * x / z + cx, fy * y / z + cy])
    mx, my = float(mean2d[0]), float(mean2d[1])
    if mx + radius <= 0 or mx - radius >= width or my + radius <= 0 or my - radius >= height:
        return None
    return z, mean2d, conic, radius


def render(means, quats, scales, opacities, colors, viewmat, K, width, height, background=None, mean2d_leaves=None):
    """RGB [H, W, 3], alpha [H, W, 1] and expected depth [H, W, 1] of one camera.

    ``mean2d_leaves``, if a dict, receives each visible Gaussian's projected mean as a leaf that the image
    depends on, so callers can take per-pixel gradients with respect to it.
    """
    splats = []
    for i in range(len(means)):
        projected = project(means[i], quats[i], scales[i], viewmat, K, width, height)
        if projected is None:
            continue
        depth, mean2d, conic, radius = projected
        if mean2d_leaves is not None:
            leaf = mean2d.detach().clone().requires_grad_(True)
            mean2d_leaves[i] = leaf
            mean2d = mean2d + (leaf - leaf.detach())
        splats.append((float(depth), depth, mean2d, conic, radius, opacities[i], colors[i]))
    splats.sort(key=lambda s: s[0])
    rows_rgb, rows_alpha, rows_depth = [], [], []
    for py in range(height):
        row_rgb, row_alpha, row_depth = [], [], []
        for px in range(width):
            centre = torch.tensor([px + 0.5, py + 0.5])
            transmittance = torch.ones(())
            rgb, depth = torch.zeros(3), torch.zeros(())
            for _, z, mean2d, conic, radius, opacity, color in splats:
                if abs(px + 0.5 - float(mean2d[0])) > radius or abs(py + 0.5 - float(mean2d[1])) > radius:
                    continue
                delta = mean2d - centre
                sigma = 0.5 * delta @ conic @ delta
                alpha = torch.clamp(opacity * torch.exp(-sigma), max=0.999)
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if transmittance * (1 - alpha) <= 1e-4:
                    break
                rgb = rgb + alpha * transmittance * color
                depth = depth + alpha * transmittance * z
                transmittance = transmittance * (1 - alpha)
            accumulated = 1 - transmittance
            if background is not None:
                rgb = rgb + transmittance * background
            row_rgb.append(rgb)
            row_alpha.append(accumulated.reshape(1))
            row_depth.append((depth / torch.clamp(accumulated, min=1e-10)).reshape(1))
        rows_rgb.append(torch.stack(row_rgb))
        rows_alpha.append(torch.stack(row_alpha))
        rows_depth.append(torch.stack(row_depth))
    return torch.stack(rows_rgb), torch.stack(rows_alpha), torch.stack(rows_depth)
