"""`python -m distilled_splat ...` is the `distilled-splat` command."""

from distilled_splat.cli import entrypoint

entrypoint()
