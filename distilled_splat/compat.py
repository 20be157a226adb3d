"""Process-wide fixes that every ns-* command needs once this plugin is installed."""

from __future__ import annotations

import numpy as np
import torch

from distilled_splat.errors import install_one_line_errors


def allow_numpy_in_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read nerfstudio checkpoints.

    nerfstudio 1.1.5 saves numpy scalars in its checkpoints, and torch >= 2.6 refuses them by default, which
    breaks ``ns-eval``, ``ns-export``, ``ns-viewer`` and resuming (nerfstudio issue #3683).
    """
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar
    dtype_classes = [type(np.dtype(kind)) for kind in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    torch.serialization.add_safe_globals([scalar, np.dtype, *dtype_classes])


def install_compat() -> None:
    allow_numpy_in_checkpoints()
    install_one_line_errors()
