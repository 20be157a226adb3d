"""Splat rendering that runs on any torch device: gsplat's CUDA kernels where they can run, PyTorch elsewhere."""

from distilled_splat.rendering.backend import rasterize, uses_gsplat
from distilled_splat.rendering.viewmats import gsplat_viewmats

__all__ = ["gsplat_viewmats", "rasterize", "uses_gsplat"]
