"""Solvers: from similarity matrices to assignments of units to merged units.

Pure numerics on similarity matrices over the concatenated units of all models; no
models. Every solver returns a :class:`Solution` whose ``objective`` is
:func:`pair_objective`.
"""
from .assignment import solve_permute
from .heads import solve_heads
from .solution import Solution, pair_objective
from .zip import solve_zip

__all__ = ["Solution", "pair_objective", "solve_heads", "solve_permute", "solve_zip"]
