"""VPD engine: rank-one components, causal importance, stochastic and adversarial ablation.

Public API (documented in `vpd.decomp.api`): `decompose`, `Decomposition`, `DecompositionConfig`.
"""

from vpd.decomp.api import Decomposition, decompose
from vpd.decomp.config import DecompositionConfig

__all__ = ["Decomposition", "DecompositionConfig", "decompose"]
