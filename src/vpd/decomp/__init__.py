"""VPD engine: rank-one components, causal importance, stochastic and adversarial ablation.

Public API (documented in `vpd.decomp.api`): `decompose`, `Decomposition`, `DecompositionConfig`.
The names load on first use, so importing `vpd.decomp.config` (as `vpd.config` does when the
Snakemake DAG is built) does not import torch.
"""

import importlib

_EXPORTS = {"Decomposition": "vpd.decomp.api", "decompose": "vpd.decomp.api", "DecompositionConfig": "vpd.decomp.config"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vpd.decomp' has no attribute {name!r}")
