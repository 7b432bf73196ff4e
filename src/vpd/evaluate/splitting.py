"""Feature splitting: do more units mean more (split) features? VPD at several C vs transcoders.

VPD: the MLP matrices are decomposed at c x C for each multiplier c of `feature_splitting`; a
subcomponent is alive if its mean CI over the held-out windows exceeds `evaluate.alive_eps`.
Transcoders: the baselines' PLT/CLT at several dictionary sizes (same k); a latent is alive if it
fires on the held-out windows. Alive count vs capacity (C summed over matrices, latents summed
over layers) goes to splitting.csv.

Matches: a unit of run A has a match in run B if some alive unit of B in the same matrix (VPD)
or layer (transcoders) has cosine > threshold with it. Units compared:
  VPD          the rank-one matrix U_c V_c^T flattened. This is what the subcomponent adds to the
               weights; U_c and V_c alone are defined only up to a rescaling u -> a u, v -> v / a
               (and a joint sign flip), the matrix is not. Its cosine factorises,
               cos(U_c V_c^T, U_d V_d^T) = cos(U_c, U_d) cos(V_c, V_d), so a match needs both the
               read and the write direction to agree, and no [d_out x d_in] vector is ever built.
  transcoders  the latent's decoder vector (its unit-norm write directions, concatenated over the
               layers it writes to for a CLT), the usual object of dictionary comparisons.
splitting_matches.csv holds every ordered pair of runs of a method: the share of alive units of
A with at least one match in B, and with more than one (split) match.
"""

from __future__ import annotations

from typing import Mapping

import pandas as pd
import torch
import torch.nn.functional as F

from vpd.baselines.transcoders import mlp_activations
from vpd.evaluate.mask_strategies import iter_batches
from vpd.evaluate.metrics import CIAccumulator

VPD_UNIT = "rank_one_UV"
TRANSCODER_UNIT = "decoder"
MATCH_COLUMNS = [
    "method", "unit", "run_from", "run_to", "capacity_from", "capacity_to", "n_units",
    "share_matched", "share_multi_matched", "largest_to_smallest",
]
SPLIT_COLUMNS = ["method", "run", "scale", "capacity", "alive", "alive_fraction"]


# ---------------------------------------------------------------- cosine matching
def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines between the rows of a [n, d] and b [m, d]: [n, m] (a zero row has cosine 0)."""
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


def rank_one_cosines(v1: torch.Tensor, u1: torch.Tensor, v2: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Cosines between the flattened rank-one matrices u v^T of two sets of subcomponents.

    v1 [d_in, n], u1 [n, d_out] (the engine's V and U layout), likewise v2, u2 with m columns/rows;
    returns [n, m] = cos(u1_i, u2_j) * cos(v1_i, v2_j).
    """
    return cosine_matrix(u1, u2) * cosine_matrix(v1.T, v2.T)


def match_counts(cos: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per row of cos [n, m]: how many columns have cosine > threshold ([n] int64)."""
    return (cos > threshold).sum(-1)


def share_from_cosines(cosines: list[torch.Tensor], threshold: float) -> tuple[int, float, float]:
    """(units, share with >= 1 match, share with > 1 match) pooled over per-matrix cosines [n_i, m_i]."""
    return _shares([match_counts(c, threshold) for c in cosines])


def _shares(counts: list[torch.Tensor]) -> tuple[int, float, float]:
    allc = torch.cat([c.reshape(-1) for c in counts]) if counts else torch.zeros(0, dtype=torch.long)
    n = int(allc.numel())
    if n == 0:
        return 0, float("nan"), float("nan")
    return n, float((allc >= 1).double().mean()), float((allc >= 2).double().mean())


# ---------------------------------------------------------------- units of each method
def vpd_units(dec, alive: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Alive subcomponents per matrix: name -> (V [d_in, n_alive], U [n_alive, d_out])."""
    out = {}
    for name in dec.names:
        V, U = dec.components(name)
        keep = alive[name].to(V.device)
        out[name] = (V[:, keep].float().cpu(), U[keep].float().cpu())
    return out


def transcoder_units(tc, alive: torch.Tensor) -> dict[int, torch.Tensor]:
    """Alive latents' decoder vectors per layer: layer -> [n_alive, n_targets * d_out]."""
    return {i: tc.W_dec[i].detach().flatten(1)[alive[i].to(tc.W_dec[i].device)].float().cpu() for i in range(tc.n_layer)}


def pair_table(
    method: str, unit: str, runs: dict[str, dict], capacities: dict[str, int], cosine_fn, threshold: float,
) -> pd.DataFrame:
    """Match shares for every ordered pair of runs of one method.

    runs: run name -> {group (matrix or layer): units}; cosine_fn(units_a, units_b) -> [n_a, n_b].
    Runs are ordered by capacity; the row from the largest to the smallest run is flagged.
    """
    names = sorted(runs, key=lambda r: capacities[r])
    rows = []
    for a in names:
        for b in names:
            if a == b:
                continue
            groups = [g for g in runs[a] if g in runs[b]]
            cos = [cosine_fn(runs[a][g], runs[b][g]) for g in groups]
            n, share, multi = share_from_cosines(cos, threshold)
            rows.append({
                "method": method, "unit": unit, "run_from": a, "run_to": b, "capacity_from": capacities[a],
                "capacity_to": capacities[b], "n_units": n, "share_matched": share, "share_multi_matched": multi,
                "largest_to_smallest": a == names[-1] and b == names[0],
            })
    return pd.DataFrame(rows, columns=MATCH_COLUMNS)


def vpd_cosines(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return rank_one_cosines(a[0], a[1], b[0], b[1])


# ---------------------------------------------------------------- alive counts on eval windows
@torch.no_grad()
def vpd_alive(dec, windows: torch.Tensor, batch_size: int, eps: float) -> dict[str, torch.Tensor]:
    """name -> [C] bool: mean CI over the windows' tokens > eps."""
    acc = CIAccumulator(())
    for x, _ in iter_batches(windows, batch_size, dec.device):
        acc.update(dec.ci(x))
    return {n: m > eps for n, m in acc.mean_ci().items()}


def total_alive(alive: Mapping[str, torch.Tensor]) -> int:
    """Alive units over every matrix of a `vpd_alive` result."""
    return int(sum(int(a.sum()) for a in alive.values()))


@torch.no_grad()
def transcoder_alive(target, tc, windows: torch.Tensor, batch_size: int, mode: str, dtype: torch.dtype) -> torch.Tensor:
    """[n_layer, L] bool: the latent fired on at least one token of the windows."""

    fired = torch.zeros(tc.n_layer, tc.n_latents, dtype=torch.bool)
    for start in range(0, len(windows), batch_size):
        xs, _ = mlp_activations(target, windows[start : start + batch_size, :-1], dtype)
        _, acts, _ = tc(xs, mode=mode)
        for i, a in enumerate(acts):
            fired[i] |= (a > 0).any(0).cpu()
    return fired


# ---------------------------------------------------------------- the stage
