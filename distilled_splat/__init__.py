"""distilled-splat: Distilled-3DGS (arXiv 2508.14037) as a nerfstudio plugin."""

from distilled_splat.compat import install_compat

__version__ = "0.1.0"

# Every ns-* command imports this package through the method entry points, so this is the one place that runs
# early enough to fix checkpoint loading and error printing for all of them.
install_compat()
