"""Sparsity vs reconstruction: one Pareto point per (method, setting), VPD against transcoders.

Protocol (paper, fig:pareto-mse): all MLPs replaced at once, errors propagating; y = CE increase
over the target on the shared eval windows. VPD side: only the MLP matrices use binary masks
CI > τ, attention runs its original weights, Δ is dropped. x-axes:
  l0_per_module  mean per-token L0 of one module (VPD: an MLP matrix; transcoder: one layer's latents)
  l0_per_mlp     per-token L0 of one whole MLP (VPD: c_fc + down_proj of a layer; transcoder: = per module)
  active_params  parameters used per token over all MLPs (VPD subcomponent: d_in + d_out of its
                 matrix; PLT latent: d_in + d_out; CLT latent of layer i: d_in + (n - i) d_out)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from vpd.baselines.splice import SpliceResult
from vpd.evaluate.mask_strategies import DecompositionLike, evaluate_masks, restrict, rounded_name, standard_strategies
from vpd.evaluate.metrics import split_name
from vpd.utils.io import read_json

METHODS = ("VPD", "PLT", "CLT")
COLUMNS = [
    "method", "setting", "run", "tau", "n_latents", "k",
    "l0_per_module", "l0_per_mlp", "active_params", "ce", "target_ce", "ce_increase", "kl",
]


@dataclass(frozen=True)
class ParetoPoint:
    method: str  # VPD | PLT | CLT
    setting: str  # "tau=0.1" (VPD) or "L=4096,k=16" (transcoders); prefixed by the run if not "main"
    l0_per_module: float
    l0_per_mlp: float
    active_params: float
    ce: float
    target_ce: float
    kl: float = float("nan")
    run: str = "main"
    tau: Optional[float] = None
    n_latents: Optional[int] = None
    k: Optional[int] = None

    @property
    def ce_increase(self) -> float:
        return self.ce - self.target_ce


def is_mlp_matrix(name: str) -> bool:
    return split_name(name)[1].startswith("mlp.")


def transcoder_point(kind: str, n_latents: int, k: int, result: SpliceResult, run: str = "main") -> ParetoPoint:
    """A PLT/CLT point from its splice result (one transcoder module per MLP)."""
    setting = f"L={n_latents},k={k}"
    return ParetoPoint(
        method=kind.upper(), setting=setting if run == "main" else f"{run},{setting}",
        l0_per_module=result.l0_per_module, l0_per_mlp=result.l0_per_module, active_params=result.active_params,
        ce=result.ce, target_ce=result.target_ce, kl=result.kl, run=run, n_latents=n_latents, k=k,
    )


def read_transcoder_point(folder: Path) -> ParetoPoint:
    """The Pareto point a transcoder job wrote (<folder>/pareto_point.json)."""
    data = read_json(Path(folder) / "pareto_point.json")
    kind, n_latents, k = data.pop("kind"), data.pop("n_latents"), data.pop("k")
    return transcoder_point(kind, n_latents, k, SpliceResult(**data))


def vpd_pareto_points(
    decomp: DecompositionLike,
    target: torch.nn.Module,
    windows: torch.Tensor,
    thresholds: Iterable[float] = (0.0, 0.1, 0.5),
    *,
    batch_size: int,
    run: str = "main",
    select: Callable[[str], bool] = is_mlp_matrix,
    dtype: torch.dtype = torch.float32,
) -> list[ParetoPoint]:
    """One VPD point per τ: selected (MLP) matrices masked with CI > τ, Δ dropped, the rest original."""
    thresholds = [float(t) for t in thresholds]
    fns = standard_strategies(thresholds)
    strategies = {rounded_name(t): restrict(fns[rounded_name(t)], select) for t in thresholds}
    table, acc = evaluate_masks(decomp, target, windows, strategies, batch_size=batch_size, thresholds=thresholds, dtype=dtype)
    target_ce = float(table.loc[table["strategy"] == "target", "ce"].iloc[0])
    names = [n for n in acc.names if select(n)]
    if not names:
        raise ValueError(f"no decomposed matrix is selected for the VPD Pareto points (matrices: {acc.names})")
    layers = {split_name(n)[0] for n in names}
    shapes = getattr(decomp, "shapes", None) or {n: tuple(target.get_submodule(n).weight.shape) for n in names}
    cost = {n: shapes[n][0] + shapes[n][1] for n in names}  # d_out + d_in
    points = []
    for t in thresholds:
        l0 = acc.l0_per_matrix(t)
        row = table.loc[table["strategy"] == rounded_name(t)].iloc[0]
        setting = f"tau={t:g}"
        points.append(ParetoPoint(
            method="VPD", setting=setting if run == "main" else f"{run},{setting}",
            l0_per_module=sum(l0[n] for n in names) / len(names),
            l0_per_mlp=sum(l0[n] for n in names) / len(layers),
            active_params=float(sum(l0[n] * cost[n] for n in names)),
            ce=float(row["ce"]), target_ce=target_ce, kl=float(row["kl"]), run=run, tau=t,
        ))
    return points


def pareto_table(points: Sequence[ParetoPoint]) -> pd.DataFrame:
    """The tidy Pareto table: one row per (method, setting); duplicates or unknown methods raise."""
    rows = []
    for p in points:
        if p.method not in METHODS:
            raise ValueError(f"unknown Pareto method {p.method!r} (expected one of {METHODS})")
        rows.append({**asdict(p), "ce_increase": p.ce_increase})
    df = pd.DataFrame(rows, columns=COLUMNS)
    dup = df.duplicated(["method", "setting"], keep=False)
    if dup.any():
        raise ValueError(f"duplicate Pareto points: {df.loc[dup, ['method', 'setting']].values.tolist()}")
    return df


def frontier(points: pd.DataFrame, x: str = "l0_per_module", y: str = "ce_increase") -> pd.DataFrame:
    """The non-dominated points (no other point has both lower x and lower y), sorted by x."""
    pts = points.sort_values([x, y])
    keep, best = [], float("inf")
    for i, v in zip(pts.index, pts[y]):
        if v < best:
            keep.append(i)
            best = v
    return pts.loc[keep]


def interpolate_frontier(points: pd.DataFrame, at: float, x: str = "l0_per_module", y: str = "ce_increase") -> float:
    """y of the piecewise-linear frontier of `points` at x = `at`; NaN outside its x range (no
    extrapolation): below the sparsest point the frontier is unmeasured."""
    f = frontier(points, x, y)
    if f.empty or not f[x].min() <= at <= f[x].max():
        return float("nan")
    return float(np.interp(at, f[x].to_numpy(float), f[y].to_numpy(float)))


def with_frontier_columns(table: pd.DataFrame, x: str = "l0_per_module") -> pd.DataFrame:
    """Add, for each transcoder kind, `<kind>_frontier_ce_increase`: that kind's frontier CE increase
    interpolated at each VPD row's x (NaN on transcoder rows and outside the measured range), and
    `below_<kind>_frontier` (VPD's CE increase is lower; empty where not comparable)."""
    out = table.copy()
    vpd = out["method"] == "VPD"
    for kind in ("PLT", "CLT"):
        pts = out[out["method"] == kind]
        col = f"{kind.lower()}_frontier_ce_increase"
        out[col] = [interpolate_frontier(pts, v, x) if is_vpd else float("nan") for v, is_vpd in zip(out[x], vpd)]
        out[f"below_{kind.lower()}_frontier"] = [
            (bool(ce < f) if f == f else pd.NA) if is_vpd else pd.NA for ce, f, is_vpd in zip(out["ce_increase"], out[col], vpd)
        ]
    return out
