"""Writing output files whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from distilled_splat.errors import DistilledSplatError


def write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` with a temporary path beside ``target`` and move the result into place when it succeeds.

    A failed write (disk full, no permission) leaves ``target`` as it was and raises a one-line error.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
        os.close(handle)
    except OSError as err:
        raise DistilledSplatError(f"cannot write {target}: {err.strerror or err}") from None
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp makes files only their owner can read
        os.replace(temporary, target)
    except OSError as err:
        raise DistilledSplatError(f"cannot write {target}: {err.strerror or err}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target
