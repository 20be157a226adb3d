"""The one exception type for problems a user can fix, and how it is shown to them."""

from __future__ import annotations

import sys


class DistilledSplatError(Exception):
    """Bad input or an impossible setting. The message names the file or setting; it is shown as one line."""


def install_one_line_errors() -> None:
    """Print uncaught :class:`DistilledSplatError` as a single line instead of a traceback.

    ns-* commands have no error handling of their own, so without this a missing file surfaces as a
    forty-line traceback. Other exceptions keep the previous hook's output.
    """
    previous = sys.excepthook
    if getattr(previous, "_distilled_splat", False):
        return

    def hook(kind, value, traceback):
        if issubclass(kind, DistilledSplatError):
            print(f"distilled-splat: error: {value}", file=sys.stderr)
        else:
            previous(kind, value, traceback)

    hook._distilled_splat = True  # type: ignore[attr-defined]
    sys.excepthook = hook
