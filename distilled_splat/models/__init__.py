"""Splat models of this package."""
