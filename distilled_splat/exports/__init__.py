"""Compact files and pages of splat models: the encoders (PLY, SPZ, .splat), PlayCanvas's splat-transform
(SOG, decimation, the interactive page) and writing any run or PLY in any of them."""
