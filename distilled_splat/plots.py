"""The house style of the PSNR plots (report.png and frontier.png): a log count axis with plain labels, and PNGs
written atomically."""

from __future__ import annotations

from pathlib import Path

from distilled_splat.files import write_atomically


def new_figure(**subplots):
    """``matplotlib.pyplot.subplots(**subplots)`` on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**subplots)


def log_psnr_axes(axes, xlabel: str = "Gaussians") -> None:
    """Held-out PSNR against a count on a log axis with plain tick labels (not matplotlib's crowded 2x10^3)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(xlabel)
    axes.set_ylabel("held-out PSNR (dB)")
    axes.grid(alpha=0.3)


def save_figure(figure, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically, and free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    plt.close(figure)
