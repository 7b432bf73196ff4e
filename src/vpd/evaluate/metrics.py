"""Pure metrics shared by VPD and the baselines: L0, alive, density, KL and CE.

CI tensors come as a dict {matrix name: g [..., C]} (lower-leaky CI in [0, 1]); every leading dim
is a token dim. A subcomponent is active on a token when g > threshold (0 by default, as in the
paper's L0). L0 per token sums the active subcomponents; alive means a mean CI over the eval
tokens above `alive_eps` (1e-6); density = L0 / alive. Sums over batches go through
`CIAccumulator`, so a whole eval set never has to sit in memory at once.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional

import pandas as pd
import torch

ALIVE_EPS = 1e-6
_LAYER = re.compile(r"^h\.(\d+)\.(.+)$")


def split_name(name: str) -> tuple[Optional[int], str]:
    """`h.2.mlp.down_proj` -> (2, "mlp.down_proj"); a name without a layer -> (None, name)."""
    m = _LAYER.match(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


# ---------------------------------------------------------------- sparsity
class CIAccumulator:
    """Running per-subcomponent sums of CI and of activity (g > threshold) over eval batches."""

    def __init__(self, thresholds: Iterable[float] = (0.0,)):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.n_tokens = 0
        self.ci_sum: dict[str, torch.Tensor] = {}  # name -> [C] float64
        self.active: dict[float, dict[str, torch.Tensor]] = {t: {} for t in self.thresholds}  # [C] int64

    def update(self, ci: Mapping[str, torch.Tensor]) -> None:
        n = None
        for name, g in ci.items():
            g = g.detach().float().reshape(-1, g.shape[-1])  # [N, C]
            if n is None:
                n = g.shape[0]
            elif g.shape[0] != n:
                raise ValueError(f"CI of {name} has {g.shape[0]} tokens, other matrices {n}")
            s = g.sum(0).double().cpu()
            self.ci_sum[name] = self.ci_sum[name] + s if name in self.ci_sum else s
            for t in self.thresholds:
                a = (g > t).sum(0).cpu()
                prev = self.active[t].get(name)
                self.active[t][name] = a if prev is None else prev + a
        self.n_tokens += n or 0

    @property
    def names(self) -> list[str]:
        return list(self.ci_sum)

    def _check(self, threshold: float) -> float:
        if self.n_tokens == 0:
            raise ValueError("CIAccumulator has seen no tokens")
        threshold = float(threshold)
        if threshold not in self.active:
            raise KeyError(f"threshold {threshold} was not accumulated (have {self.thresholds})")
        return threshold

    def mean_ci(self) -> dict[str, torch.Tensor]:
        """Mean CI per subcomponent over all tokens seen: name -> [C]."""
        if self.n_tokens == 0:
            raise ValueError("CIAccumulator has seen no tokens")
        return {n: s / self.n_tokens for n, s in self.ci_sum.items()}

    def l0_per_matrix(self, threshold: float = 0.0) -> dict[str, float]:
        t = self._check(threshold)
        return {n: a.sum().item() / self.n_tokens for n, a in self.active[t].items()}

    def alive_per_matrix(self, eps: float = ALIVE_EPS) -> dict[str, int]:
        return {n: int((m > eps).sum().item()) for n, m in self.mean_ci().items()}

    def matrix_table(self, alive_eps: float = ALIVE_EPS) -> pd.DataFrame:
        """One row per (matrix, threshold): layer, module, C, l0 (per token), alive, density."""
        alive = self.alive_per_matrix(alive_eps)
        rows = []
        for t in self.thresholds:
            for name, l0 in self.l0_per_matrix(t).items():
                layer, module = split_name(name)
                a = alive[name]
                rows.append({
                    "matrix": name, "layer": layer, "module": module, "C": int(self.ci_sum[name].numel()),
                    "threshold": t, "l0": l0, "alive": a, "density": l0 / a if a else float("nan"),
                })
        return pd.DataFrame(rows, columns=["matrix", "layer", "module", "C", "threshold", "l0", "alive", "density"])

    def layer_table(self, alive_eps: float = ALIVE_EPS) -> pd.DataFrame:
        """Per (layer, threshold) sums of C, l0 and alive, plus a row with layer "all"."""
        return aggregate_layers(self.matrix_table(alive_eps))

    def firing_table(self, rare_tokens: int, alive_eps: float = ALIVE_EPS) -> pd.DataFrame:
        """Dead and rarely firing subcomponents, one row per (matrix, threshold) plus matrix "all".

        never_fire: CI > threshold on no eval token; rare: on 1..rare_tokens of them; dead: mean
        CI <= alive_eps (the complement of alive); dead_fraction = dead / C.
        """
        mean = self.mean_ci()
        rows = []
        for t in self.thresholds:
            per = []
            for name, count in self.active[t].items():
                per.append({
                    "matrix": name, "C": int(count.numel()), "threshold": t, "n_tokens": self.n_tokens,
                    "never_fire": int((count == 0).sum()), "rare": int(((count > 0) & (count <= rare_tokens)).sum()),
                    "dead": int((mean[name] <= alive_eps).sum()),
                })
            total = {k: sum(r[k] for r in per) for k in ("C", "never_fire", "rare", "dead")}
            rows += per + [{"matrix": "all", "threshold": t, "n_tokens": self.n_tokens, **total}]
        out = pd.DataFrame(rows, columns=["matrix", "C", "threshold", "n_tokens", "never_fire", "rare", "dead"])
        out["rare_tokens"] = rare_tokens
        out["dead_fraction"] = out["dead"] / out["C"]
        return out


def aggregate_layers(matrix_table: pd.DataFrame) -> pd.DataFrame:
    """Sum a `matrix_table` by layer (and over everything, layer "all"); density = l0 / alive."""
    rows = []
    for t, sub in matrix_table.groupby("threshold", sort=True):
        groups = [(layer, g) for layer, g in sub.groupby("layer", sort=True, dropna=False)] + [("all", sub)]
        for layer, g in groups:
            l0, alive = float(g["l0"].sum()), int(g["alive"].sum())
            rows.append({
                "layer": layer, "threshold": t, "C": int(g["C"].sum()), "l0": l0, "alive": alive,
                "density": l0 / alive if alive else float("nan"),
            })
    return pd.DataFrame(rows, columns=["layer", "threshold", "C", "l0", "alive", "density"])


def l0_per_matrix(ci: Mapping[str, torch.Tensor], threshold: float = 0.0) -> dict[str, float]:
    """Mean over tokens of the number of subcomponents with g > threshold, per matrix."""
    acc = CIAccumulator((threshold,))
    acc.update(ci)
    return acc.l0_per_matrix(threshold)


def l0_per_layer(ci: Mapping[str, torch.Tensor], threshold: float = 0.0) -> dict[Optional[int], float]:
    out: dict[Optional[int], float] = {}
    for name, l0 in l0_per_matrix(ci, threshold).items():
        layer = split_name(name)[0]
        out[layer] = out.get(layer, 0.0) + l0
    return out


def l0_total(ci: Mapping[str, torch.Tensor], threshold: float = 0.0) -> float:
    return float(sum(l0_per_matrix(ci, threshold).values()))


def alive_per_matrix(ci: Mapping[str, torch.Tensor], eps: float = ALIVE_EPS) -> dict[str, int]:
    """Subcomponents whose mean CI over all tokens exceeds eps, per matrix."""
    acc = CIAccumulator(())
    acc.update(ci)
    return acc.alive_per_matrix(eps)


def density(ci: Mapping[str, torch.Tensor], threshold: float = 0.0, eps: float = ALIVE_EPS) -> float:
    """Total L0 per token / total alive subcomponents."""
    alive = sum(alive_per_matrix(ci, eps).values())
    return l0_total(ci, threshold) / alive if alive else float("nan")
