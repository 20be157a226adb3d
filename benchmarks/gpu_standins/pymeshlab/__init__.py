"""Imported by nerfstudio's exporter utilities; used only by its mesh exports, never by `gaussian-splat` (see README.md)."""


def __getattr__(name):
    raise NotImplementedError(f"pymeshlab.{name}: not available in the GPU check's stand-in (see README.md)")
