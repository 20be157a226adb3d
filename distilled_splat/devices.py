"""Which torch device a command runs on: the one asked for, or a one-line error where it does not exist."""

from __future__ import annotations

from typing import Union

import torch

from distilled_splat.errors import DistilledSplatError


def require_device(device: Union[torch.device, str]) -> torch.device:
    """The device, or a one-line error when it does not exist on this machine."""
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise DistilledSplatError(f"unknown device {device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistilledSplatError("--machine.device-type cuda was asked for but no CUDA device is available; use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DistilledSplatError("--machine.device-type mps was asked for but MPS is not available; use cpu")
    return device


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` where a CUDA device exists and ``cpu`` elsewhere; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return require_device(device).type
