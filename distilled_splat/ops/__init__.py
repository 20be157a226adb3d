"""Operations on a splat model's parameters and their optimiser state, in the style of ``gsplat.strategy.ops``."""
