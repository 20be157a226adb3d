"""Splat rendering that runs on any torch device: gsplat's CUDA kernels where they can run, PyTorch elsewhere."""

from distilled_splat.rendering.backend import rasterize, uses_gsplat

__all__ = ["rasterize", "uses_gsplat"]
