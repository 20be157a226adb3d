"""distilled-splat: Distilled-3DGS (arXiv 2508.14037) as a nerfstudio plugin."""

import os
import warnings

# PyTorch's OpenMP threads spin for a while after each parallel op before they sleep (libgomp's default). With two
# trainings on one CPU (a frontier's --jobs, a test beside a benchmark) each spinning thread takes a core from the
# other process: on the 2-core machine two 300-step demo teachers took 156 s each, against 9 s alone. Spinning
# briefly keeps a process alone as fast (8.2 s) and two side by side at 12 s each (README, "When things go wrong").
# libgomp reads this when torch loads, so it only works where this package is imported first: the distilled-splat
# command and its tests, not ns-train (set it in the shell there). A value the user set is kept.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")

# Third-party deprecation notices that say nothing to a user of these commands (nerfstudio 1.1.5 on torch 2.14).
for _message, _category in (
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
    (r".*torch\.cuda\.amp\.GradScaler.*is deprecated", FutureWarning),
    (r"Converting a tensor with requires_grad=True to a scalar", UserWarning),
):
    warnings.filterwarnings("ignore", message=_message, category=_category)

from distilled_splat.compat import install_compat  # noqa: E402

__version__ = "0.1.0"

# Every ns-* command imports this package through the method entry points, so this is the one place that runs
# early enough to fix checkpoint loading and error printing for all of them.
install_compat()
