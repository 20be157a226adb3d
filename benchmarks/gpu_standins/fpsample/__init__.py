"""Imported by nerfstudio's full-image datamanager; used only for fps camera sampling (see README.md)."""


def __getattr__(name):
    raise NotImplementedError(f"fpsample.{name}: not available in the GPU check's stand-in (see README.md)")
