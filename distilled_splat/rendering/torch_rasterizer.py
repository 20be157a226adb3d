"""A differentiable 3D Gaussian splat rasteriser in plain PyTorch, for devices gsplat's kernels cannot run on.

It follows gsplat 1.4's CUDA semantics: EWA projection with an ``eps2d`` screen-space blur, 3-sigma square
footprints, ``alpha = min(0.999, opacity * exp(-sigma))`` with a 1/255 cutoff, front-to-back compositing that
stops before transmittance drops to 1e-4, and background blending with the final transmittance. Projection and
spherical harmonics are gsplat's own PyTorch reference functions, so those parts are identical by construction.

The one deliberate difference: gsplat lets a Gaussian touch every pixel of the 16x16 tiles its footprint
overlaps; here it touches only pixels whose centres lie inside its ``radius`` square. The two differ only at
pixels beyond three standard deviations, where alpha is at most ``opacity * exp(-4.5)``. Within that square,
pairs are only generated inside the bounding box of the ellipse where alpha reaches the 1/255 cutoff, since
gsplat skips every pair outside it.

Compositing works on a flat list of (Gaussian, pixel) pairs sorted by pixel, then depth; transmittance is a
segmented cumulative sum of ``log(1 - alpha)``. The image is processed in bands of rows holding at most
``max_pairs_per_chunk`` candidate pairs; when there is more than one band and gradients are needed, each band
is recomputed in the backward pass (activation checkpointing), so memory stays bounded by one band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Protocol, Tuple

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_to_rotmat, _spherical_harmonics
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from typing_extensions import Literal


@dataclass
class PairRecord:
    """What one band composites, for callers that need per-pixel gradients of single Gaussians (PUP's Fisher):
    the gradient of an image sum with respect to ``rows`` holds, per (Gaussian, pixel) pair, that pixel's
    derivative with respect to that Gaussian's render inputs, which a per-Gaussian gradient would sum away."""

    table: Tensor  # [M, 6 + D] per visible Gaussian: means2d (2), conic (3), opacity, colour (D)
    rows: Tensor  # [P, 6 + D] the table's row of each composited pair
    gaussian: Tensor  # [P] index of each pair's Gaussian in the camera's full set
    pixel: Tensor  # [P] index of each pair's pixel in the image, row-major
    table_ids: Tensor  # [M] index of each table row's Gaussian in the camera's full set


PairObserver = Callable[[PairRecord], None]


class Kernels(Protocol):
    """Faster implementations of three steps of :func:`rasterize_torch`, with the same results (the C++ ones are
    :class:`distilled_splat.rendering.cpp_backend.CppKernels`)."""

    def project(self, means, quats, scales, viewmat, K, width, height, eps2d, near_plane, far_plane):
        """One camera's ``(radii [N], means2d [N, 2], depths [N], conics [N, 3])``, as gsplat's classic
        ``_fully_fused_projection``; ``viewmat`` and ``K`` carry no gradient."""

    def spherical_harmonics(self, degree, means, coeffs, campos):
        """Colours [N, 3] of SH ``coeffs`` [N, K, 3] seen from ``campos`` [3], + 0.5 and clamped at 0."""

    def composite(self, means2d, conics, opacities, colors, half_x, half_y, width, height, absgrad_sink, global_ids):
        """One camera's colours [H, W, D] and alphas [H, W, 1] from its visible Gaussians sorted front to back,
        as :func:`_composite_camera` composites them."""


ALPHA_MAX = 0.999
ALPHA_MIN = 1.0 / 255.0
TRANSMITTANCE_MIN = 1e-4
DEFAULT_MAX_PAIRS_PER_CHUNK = 1 << 23


class _GatherWithAbsGrad(torch.autograd.Function):
    """``source[index]`` whose backward also adds the ``|grad|`` of the first two columns (the screen-space
    means) into ``sink[sink_index]`` (gsplat's absgrad)."""

    @staticmethod
    def forward(ctx, source: Tensor, index: Tensor, sink: Tensor, sink_index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index, sink_index)
        ctx.source_shape = source.shape
        ctx.sink = sink
        return source[index]

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        index, sink_index = ctx.saved_tensors
        ctx.sink.index_add_(0, sink_index, grad[:, :2].abs())
        return grad.new_zeros(ctx.source_shape).index_add_(0, index, grad), None, None, None


def _pixel_span(centre: Tensor, radius: Tensor, size: int) -> Tuple[Tensor, Tensor]:
    """First and last pixel index whose centre (index + 0.5) lies within ``centre +- radius``, clipped."""
    first = torch.ceil(centre - radius - 0.5).clamp(min=0).long()
    last = torch.floor(centre + radius - 0.5).clamp(max=size - 1).long()
    return first, last


def _footprint(conics: Tensor, opacities: Tensor, radii: Tensor) -> Tuple[Tensor, Tensor]:
    """Half-width and half-height of the box around the ellipse where ``alpha >= 1/255``, within ``radii``.

    Pixels outside it would be culled by the alpha cutoff anyway, so generating pairs only inside it changes no
    output; for elongated or faint splats it is much smaller than the 3-sigma square.
    """
    a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
    # The covariance is the conic's inverse: its diagonal is (c, a) / det. The level set 0.5 d^T conic d = s,
    # with s = log(255 opacity), reaches sqrt(2 s cov_xx) along x; the 1e-3 slack keeps boundary pixels.
    level = 2.0 * torch.log(opacities * 255.0).clamp(min=0.0) * (1.0 + 1e-3) / (a * c - b * b)
    # fmin falls back to the radius where a degenerate conic makes the square root NaN.
    return torch.fmin(torch.sqrt(level * c), radii), torch.fmin(torch.sqrt(level * a), radii)


def _row_bands(y_first: Tensor, y_last: Tensor, widths: Tensor, height: int, max_pairs: int) -> List[Tuple[int, int]]:
    """Split image rows into consecutive bands of at most ``max_pairs`` candidate pairs (a row is never split)."""
    rows = torch.zeros(height + 1, dtype=torch.long, device=y_first.device)
    live = y_last >= y_first
    rows.index_add_(0, y_first[live], widths[live])
    rows.index_add_(0, y_last[live] + 1, -widths[live])
    per_row = torch.cumsum(rows[:height], 0).tolist()
    bands, start, acc = [], 0, 0
    for row, pairs in enumerate(per_row):
        if acc and acc + pairs > max_pairs:
            bands.append((start, row))
            start, acc = row, 0
        acc += pairs
    bands.append((start, height))
    return bands


def _composite_band(
    means2d: Tensor,  # [M, 2] visible Gaussians, sorted front to back
    conics: Tensor,  # [M, 3]
    opacities: Tensor,  # [M]
    colors: Tensor,  # [M, D]
    half_x: Tensor,  # [M] footprint half-width, see _footprint
    half_y: Tensor,  # [M]
    width: int,
    row_start: int,
    row_stop: int,
    absgrad_sink: Optional[Tensor],  # [N, 2] per-camera buffer, or None
    global_ids: Tensor,  # [M] index of each visible Gaussian in the camera's full set
    pair_observer: Optional[PairObserver] = None,
) -> Tuple[Tensor, Tensor]:
    """Composite rows ``[row_start, row_stop)``; returns colours [rows*W, D] and alphas [rows*W]."""
    n_pixels = (row_stop - row_start) * width
    # Per-pair attributes come from one gather of a per-Gaussian table: one index op (and one index_add in
    # backward) instead of one per attribute, which is where most of the time goes.
    geometry = torch.cat([means2d, conics, opacities[:, None]], dim=1)
    table = torch.cat([geometry, colors], dim=1)
    with torch.no_grad():
        x_first, x_last = _pixel_span(means2d[:, 0], half_x, width)
        y_first, y_last = _pixel_span(means2d[:, 1], half_y, row_stop)
        y_first = y_first.clamp(min=row_start)
        spans_x = (x_last - x_first + 1).clamp(min=0)
        counts = spans_x * (y_last - y_first + 1).clamp(min=0)
        gid = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        offsets = torch.arange(len(gid), device=counts.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        first_x, first_y, span = torch.stack([x_first, y_first, spans_x], 1)[gid].unbind(1)
        px = first_x + offsets % span
        py = first_y + torch.div(offsets, span, rounding_mode="floor")

        # Drop pairs gsplat would skip before any autograd graph is built for them.
        keep = _pair_alpha(geometry[gid], px + 0.5, py + 0.5)[1]
        gid, pix = gid[keep], ((py - row_start) * width + px)[keep]
        # Pairs are generated Gaussian-major in depth order, so a stable sort by pixel keeps depth order.
        pix, order = torch.sort(pix, stable=True)
        gid = gid[order]

    if absgrad_sink is not None:
        pairs = _GatherWithAbsGrad.apply(table, gid, absgrad_sink, global_ids[gid])
    else:
        pairs = table[gid]
    if pair_observer is not None:
        pair_observer(PairRecord(table, pairs, global_ids[gid], pix + row_start * width, global_ids))
    # split/unbind rather than column indexing: their backward is one cat, not a full-size zero tensor per column.
    pair_geometry, pair_colors = pairs.split([geometry.shape[1], colors.shape[1]], dim=1)
    pixel_y = torch.div(pix, width, rounding_mode="floor") + row_start + 0.5
    alpha = _pair_alpha(pair_geometry, pix % width + 0.5, pixel_y)[0]

    # Exclusive per-pixel cumulative sum of log(1 - alpha), in float64 because the running total spans the
    # whole band and float32 would lose the small per-pixel differences.
    log_keep = torch.log1p(-alpha).double()
    inclusive = torch.cumsum(log_keep, 0)
    exclusive = inclusive - log_keep
    segment_start = torch.ones_like(pix, dtype=torch.bool)
    segment_start[1:] = pix[1:] != pix[:-1]
    segment_id = torch.cumsum(segment_start.long(), 0) - 1
    log_t = exclusive - exclusive[segment_start][segment_id]
    transmittance = torch.exp(log_t).float()

    # gsplat stops a pixel at the first Gaussian that would take transmittance to 1e-4 or below, exclusive.
    alive = (transmittance * (1 - alpha)).detach() > TRANSMITTANCE_MIN
    weights = alpha * transmittance * alive
    rgba = torch.cat([weights[:, None] * pair_colors, weights[:, None]], dim=1)
    out = table.new_zeros(n_pixels, rgba.shape[1]).index_add(0, pix, rgba)
    return out[:, :-1], out[:, -1]


def _pair_alpha(pair_geometry: Tensor, centre_x: Tensor, centre_y: Tensor) -> Tuple[Tensor, Tensor]:
    """Alpha of each (Gaussian, pixel) pair from gathered rows of (mean x, mean y, conic a, b, c, opacity), and
    whether gsplat would composite the pair."""
    mean_x, mean_y, a, b, c, opacity = pair_geometry.unbind(1)
    dx, dy = mean_x - centre_x, mean_y - centre_y
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacity * torch.exp(-sigma), ALPHA_MAX)
    return alpha, (sigma >= 0) & (alpha >= ALPHA_MIN)


def _composite_camera(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D]
    radii: Tensor,  # [N]
    depths: Tensor,  # [N]
    width: int,
    height: int,
    absgrad_sink: Optional[Tensor],  # [N, 2]
    max_pairs_per_chunk: int,
    pair_observer: Optional[PairObserver] = None,
    kernels: Optional[Kernels] = None,
) -> Tuple[Tensor, Tensor]:
    """Render one camera; returns colours [H, W, D] and alphas [H, W, 1] (no background)."""
    visible = torch.nonzero(radii > 0).squeeze(1)
    visible = visible[torch.argsort(depths[visible].detach(), stable=True)]
    v_means2d, v_conics, v_opacities, v_colors = means2d[visible], conics[visible], opacities[visible], colors[visible]

    with torch.no_grad():
        half_x, half_y = _footprint(v_conics, v_opacities, radii[visible].to(means2d.dtype))
    if kernels is not None:
        return kernels.composite(
            v_means2d, v_conics, v_opacities, v_colors, half_x, half_y, width, height, absgrad_sink, visible
        )
    with torch.no_grad():
        x_first, x_last = _pixel_span(v_means2d[:, 0], half_x, width)
        y_first, y_last = _pixel_span(v_means2d[:, 1], half_y, height)
        bands = _row_bands(y_first, y_last, (x_last - x_first + 1).clamp(min=0), height, max_pairs_per_chunk)

    # An observer holds on to each band's pairs for its own gradients, which recomputation would not keep.
    recompute = len(bands) > 1 and torch.is_grad_enabled() and pair_observer is None
    pieces = []
    for row_start, row_stop in bands:
        # The absgrad sink is written during backward, so it is bound here rather than passed as a tracked input.
        band = partial(
            _composite_band,
            width=width,
            row_start=row_start,
            row_stop=row_stop,
            absgrad_sink=absgrad_sink,
            global_ids=visible,
            pair_observer=pair_observer,
        )
        args = (v_means2d, v_conics, v_opacities, v_colors, half_x, half_y)
        pieces.append(checkpoint(band, *args, use_reentrant=False) if recompute else band(*args))
    out_colors = torch.cat([p[0] for p in pieces]).reshape(height, width, -1)
    out_alphas = torch.cat([p[1] for p in pieces]).reshape(height, width, 1)
    return out_colors, out_alphas


def rasterize_torch(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or [N, K, 3] SH coefficients
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,  # [C, D]
    render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
    sparse_grad: bool = False,
    absgrad: bool = False,
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    channel_chunk: int = 32,
    distributed: bool = False,
    camera_model: Literal["pinhole", "ortho", "fisheye"] = "pinhole",
    covars: Optional[Tensor] = None,  # [N, 3, 3]
    max_pairs_per_chunk: int = DEFAULT_MAX_PAIRS_PER_CHUNK,
    pair_observer: Optional[PairObserver] = None,
    kernels: Optional[Kernels] = None,
) -> Tuple[Tensor, Tensor, Dict]:
    """Rasterise Gaussians with the arguments and return values of ``gsplat.rasterization``.

    Returns ``(render_colors [C, H, W, X], render_alphas [C, H, W, 1], meta)``. ``meta`` has gsplat's keys;
    ``means2d`` [C, N, 2] carries the screen-space gradient (and ``.absgrad`` after backward when
    ``absgrad=True``), ``radii`` [C, N] int32 is zero for culled Gaussians. gsplat's tile-intersection buffers
    (``isect_ids``, ``flatten_ids``, ``isect_offsets``) have no counterpart here and are ``None``.
    ``channel_chunk`` and ``sparse_grad`` are accepted for signature compatibility and have no effect.
    Only the unpacked, single-process, pinhole path is implemented. ``pair_observer`` (not in gsplat) is called
    with a :class:`PairRecord` per band of rows composited. ``kernels`` (not in gsplat) replace the PyTorch
    compositing step, and projection and SH where no camera parameter needs a gradient, ``covars`` is not given
    and ``rasterize_mode`` is classic; they cannot be combined with ``pair_observer``.
    """
    if kernels is not None and pair_observer is not None:
        raise ValueError("pair_observer needs the PyTorch compositing step; pass no kernels")
    if packed or distributed or camera_model != "pinhole":
        raise ValueError("the PyTorch rasteriser supports packed=False, distributed=False, camera_model='pinhole'")
    if render_mode not in ("RGB", "D", "ED", "RGB+D", "RGB+ED"):
        raise ValueError(f"unknown render_mode {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"unknown rasterize_mode {rasterize_mode!r}")
    n_cameras = viewmats.shape[0]

    fixed_cameras = not (viewmats.requires_grad or Ks.requires_grad)
    if kernels is not None and fixed_cameras and covars is None and rasterize_mode == "classic":
        per_camera = [
            kernels.project(means, quats, scales, viewmats[c], Ks[c], width, height, eps2d, near_plane, far_plane)
            for c in range(n_cameras)
        ]
        radii, means2d, depths, conics = (torch.stack(parts) for parts in zip(*per_camera))
        compensations = None
    else:
        if covars is None:
            rotations = _quat_to_rotmat(quats)  # normalises the quaternions
            scaled = rotations * scales[:, None, :]
            covars = scaled @ scaled.transpose(-1, -2)
        radii, means2d, depths, conics, compensations = _fully_fused_projection(
            means,
            covars,
            viewmats,
            Ks,
            width,
            height,
            eps2d=eps2d,
            near_plane=near_plane,
            far_plane=far_plane,
            calc_compensations=rasterize_mode == "antialiased",
        )
    if radius_clip > 0:
        radii = torch.where(radii.float() <= radius_clip, torch.zeros_like(radii), radii)
    camera_opacities = opacities[None].expand(n_cameras, -1)
    if compensations is not None:
        camera_opacities = camera_opacities * compensations

    if sh_degree is None:
        camera_colors = colors[None].expand(n_cameras, -1, -1) if colors.dim() == 2 else colors
    else:
        camera_centres = torch.inverse(viewmats)[:, :3, 3]
        if kernels is not None and fixed_cameras and colors.dim() == 3:
            camera_colors = torch.stack(
                [kernels.spherical_harmonics(sh_degree, means, colors, centre) for centre in camera_centres]
            )
        else:
            directions = means[None] - camera_centres[:, None]  # [C, N, 3]
            coeffs = colors[None].expand(n_cameras, -1, -1, -1) if colors.dim() == 3 else colors
            camera_colors = torch.clamp_min(_spherical_harmonics(sh_degree, directions, coeffs) + 0.5, 0.0)

    if render_mode in ("RGB+D", "RGB+ED"):
        camera_colors = torch.cat([camera_colors, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(n_cameras, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        camera_colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(n_cameras, 1)

    absgrad_buffer = torch.zeros_like(means2d) if absgrad else None
    renders, alphas = [], []
    for c in range(n_cameras):
        image, alpha = _composite_camera(
            means2d[c],
            conics[c],
            camera_opacities[c],
            camera_colors[c],
            radii[c],
            depths[c],
            width,
            height,
            None if absgrad_buffer is None else absgrad_buffer[c],
            max_pairs_per_chunk,
            pair_observer,
            kernels,
        )
        if backgrounds is not None:
            image = image + (1.0 - alpha) * backgrounds[c]
        renders.append(image)
        alphas.append(alpha)
    render_colors, render_alphas = torch.stack(renders), torch.stack(alphas)

    if render_mode in ("ED", "RGB+ED"):
        expected_depth = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], expected_depth], dim=-1)
    if absgrad_buffer is not None:
        means2d.absgrad = absgrad_buffer  # type: ignore[attr-defined]

    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    meta = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": camera_opacities,
        "tile_width": tile_width,
        "tile_height": tile_height,
        "tiles_per_gauss": _tiles_per_gaussian(means2d.detach(), radii, tile_size, tile_width, tile_height),
        "isect_ids": None,
        "flatten_ids": None,
        "isect_offsets": None,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": n_cameras,
    }
    return render_colors, render_alphas, meta


def _tiles_per_gaussian(means2d: Tensor, radii: Tensor, tile_size: int, tile_width: int, tile_height: int) -> Tensor:
    """Number of tiles each Gaussian's footprint overlaps, as gsplat's ``isect_tiles`` counts them. [C, N]."""
    r = radii.to(means2d.dtype)
    x_min = torch.floor((means2d[..., 0] - r) / tile_size).clamp(0, tile_width)
    x_max = torch.ceil((means2d[..., 0] + r) / tile_size).clamp(0, tile_width)
    y_min = torch.floor((means2d[..., 1] - r) / tile_size).clamp(0, tile_height)
    y_max = torch.ceil((means2d[..., 1] + r) / tile_size).clamp(0, tile_height)
    return torch.where(radii > 0, (x_max - x_min) * (y_max - y_min), torch.zeros_like(r)).int()
