"""The seeds comparison: spread of the headline numbers over decomposition seeds, and how similar
the subcomponents of different seeds are (the paper's tab:seed-mmcs).

Headline quantities are read from each seed's evaluation folder (the evaluate stage's tables),
plus each seed's Pareto points (`pareto_quantities`: VPD's from its decomposition, the seed's
transcoders' from their jobs) and its feature-splitting ratios (`splitting_quantities`, from the
alive counts of the two ends of each ratio at that seed).
MMCS (mean max cosine similarity) of run a against run b: for every alive subcomponent c of a,
the largest |cos| between its vector (U_c or V_c) and the vectors of b's alive subcomponents of
the same matrix, averaged over c (|cos| because U_c V_c^T = (-U_c)(-V_c)^T). Transcoders of
different seeds are compared the same way, latent by latent within each layer (decoder as U,
encoder as V). The reference row compares two random initialisations of the same shapes (the
paper: about 0.13 at init).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np
import pandas as pd
import torch

from vpd.evaluate.paper import (
    ALIVE,
    L0_TOTAL,
    MASK_STRATEGIES,
    PGD_KL,
    SPLIT_TRANSCODER_ALIVE,
    SPLIT_VPD_ALIVE,
    TOTAL_C,
)
from vpd.evaluate.pareto import ParetoPoint

HEADLINE_COLUMNS = ["quantity", "mean", "std", "min", "max", "n", "paper"]
MMCS_PAPER = {"U": 0.48, "V": 0.52}
MMCS_PAPER_TRANSCODER = {"plt": 0.81, "clt": 0.61}  # PLT trained on local MSE

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # matrix -> (V [d_in, C], U [C, d_out])
Quantities = dict[str, tuple[float, float]]  # quantity -> (value, paper value or NaN)


def evaluation_quantities(folder: Path, threshold: float = 0.0) -> Quantities:
    """quantity -> (value, paper value or NaN) of one evaluation folder."""
    folder = Path(folder)
    nan = float("nan")
    layers = pd.read_csv(folder / "l0_by_layer.csv")
    total = layers[(layers["layer"].astype(str) == "all") & (layers["threshold"] == threshold)].iloc[0]
    firing = pd.read_csv(folder / "firing_counts.csv")
    fire = firing[(firing["matrix"] == "all") & (firing["threshold"] == threshold)].iloc[0]
    out = {
        f"L0 (CI > {threshold:g})": (float(total["l0"]), L0_TOTAL),
        "alive": (float(total["alive"]), float(ALIVE)),
        "dead fraction": (float(fire["dead_fraction"]), 1 - ALIVE / TOTAL_C),
        f"never fire (CI > {threshold:g})": (float(fire["never_fire"]), nan),
    }
    strategies = pd.read_csv(folder / "mask_strategies.csv")
    recovered = pd.read_csv(folder / "compute_recovered.csv").set_index("name")
    for r in strategies.itertuples(index=False):
        paper = MASK_STRATEGIES.get(r.strategy)
        out[f"{r.strategy}: CE"] = (float(r.ce), paper[1] if paper else nan)
        if r.strategy != "target":
            out[f"{r.strategy}: KL"] = (float(r.kl), nan)
        if r.strategy in recovered.index:
            rec = recovered.loc[r.strategy]
            out[f"{r.strategy}: compute recovered"] = (float(rec["fraction"]) if rec["status"] == "ok" else nan,
                                                       paper[2] if paper else nan)
    pgd = pd.read_csv(folder / "pgd_steps.csv", dtype={"steps": str})
    for r in pgd.itertuples(index=False):
        label = "zero ablation KL" if r.steps == "zero_ablation" else f"PGD-{r.steps} KL"
        out[label] = (float(r.kl_mean), PGD_KL.get(r.steps, nan))
    return out


def pareto_quantities(points: Iterable[ParetoPoint]) -> Quantities:
    """CE increase and L0 per module of each Pareto point, labelled by method and setting (the
    paper gives these as a figure, so no paper value)."""
    nan = float("nan")
    out = {}
    for p in points:
        out[f"{p.method} Pareto {p.setting}: CE increase"] = (p.ce_increase, nan)
        out[f"{p.method} Pareto {p.setting}: L0 per module"] = (p.l0_per_module, nan)
    return out


def splitting_quantities(vpd_alive: Mapping[float, int], transcoder_alive: Mapping[str, Mapping[int, int]]) -> Quantities:
    """One seed's feature-splitting ratios. VPD: alive subcomponents at the largest C multiplier over
    alive at 1x C (vpd_alive: multiplier -> alive). Each transcoder kind: alive latents at its largest
    dictionary over its smallest (transcoder_alive: kind -> {n_latents: alive}). The paper's value is
    given where its figure has the same two capacities (4x / 1x C; its dictionaries span 8x)."""
    nan = float("nan")

    def ratio(a: float, b: float) -> float:
        return a / b if b else nan

    hi = max(vpd_alive)
    paper_vpd = ratio(SPLIT_VPD_ALIVE[hi], SPLIT_VPD_ALIVE[1.0]) if hi in SPLIT_VPD_ALIVE else nan
    out = {f"feature splitting VPD: alive({hi:g}x C) / alive(1x C)": (ratio(vpd_alive[hi], vpd_alive[1.0]), paper_vpd)}
    for kind, by_n in transcoder_alive.items():
        lo, top = min(by_n), max(by_n)
        paper = SPLIT_TRANSCODER_ALIVE.get(kind, {})
        same_span = paper and max(paper) * lo == min(paper) * top
        out[f"feature splitting {kind.upper()}: alive(L{top}) / alive(L{lo})"] = (
            ratio(by_n[top], by_n[lo]), ratio(paper[max(paper)], paper[min(paper)]) if same_span else nan)
    return out


def headline_table(folders: Mapping[int, Path], threshold: float = 0.0,
                   extra: Optional[Mapping[int, Quantities]] = None) -> pd.DataFrame:
    """One row per quantity over the seeds' evaluation folders (and `extra` quantities per seed):
    mean, sample std, min, max, n, paper."""
    per_seed = {seed: {**evaluation_quantities(f, threshold), **(extra or {}).get(seed, {})} for seed, f in folders.items()}
    quantities = list(dict.fromkeys(q for values in per_seed.values() for q in values))
    rows = []
    for q in quantities:
        v = np.array([per_seed[s][q][0] for s in per_seed if q in per_seed[s]], dtype=float)
        v = v[~np.isnan(v)]
        paper = next(per_seed[s][q][1] for s in per_seed if q in per_seed[s])
        rows.append({"quantity": q, "mean": v.mean() if len(v) else np.nan,
                     "std": v.std(ddof=1) if len(v) > 1 else np.nan, "min": v.min() if len(v) else np.nan,
                     "max": v.max() if len(v) else np.nan, "n": len(v), "paper": paper})
    return pd.DataFrame(rows, columns=HEADLINE_COLUMNS)


def mmcs(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the rows of a [n, d] of the largest |cos| with a row of b [m, d]; NaN if either is empty."""
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return float((a @ b.T).abs().max(dim=1).values.mean())


def factors_mmcs(a: Factors, b: Factors, alive_a: Mapping[str, torch.Tensor], alive_b: Mapping[str, torch.Tensor]) -> dict:
    """MMCS of run a against run b for U and for V over the matrices both decompose, weighted by a's
    alive subcomponents per matrix: {"U": x, "V": y, "n": alive subcomponents of a compared}."""
    sums, n = {"U": 0.0, "V": 0.0}, 0
    for name in a.keys() & b.keys():
        ka, kb = alive_a[name], alive_b[name]  # [C] bool
        (Va, Ua), (Vb, Ub) = a[name], b[name]
        count = int(ka.sum())
        if count == 0 or int(kb.sum()) == 0:
            continue
        sums["U"] += count * mmcs(Ua[ka], Ub[kb])
        sums["V"] += count * mmcs(Va.T[ka], Vb.T[kb])
        n += count
    return {k: v / n if n else float("nan") for k, v in sums.items()} | {"n": n}


def random_factors(like: Factors, seed: int) -> Factors:
    """Gaussian factors of the same shapes (the initialisation's distribution up to scale, which |cos| ignores)."""
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(V.shape, generator=g), torch.randn(U.shape, generator=g)) for n, (V, U) in like.items()}


def transcoder_factors(tc, dead_tokens: int) -> tuple[Factors, dict[str, torch.Tensor]]:
    """A transcoder in the Factors layout, per layer i: V = encoder W_enc[i] [d_in, L] (the input
    direction, as VPD's V), U = decoder W_dec[i] flattened over its target layers [L, n_t * d_out]
    (the output direction, as VPD's U); and its alive latents per layer (fired within the last
    `dead_tokens` training tokens, the training's own dead criterion, kept in the checkpoint)."""
    factors = {f"layer {i}": (tc.W_enc[i].detach().cpu(), tc.W_dec[i].detach().flatten(1).cpu())
               for i in range(tc.n_layer)}
    alive = {f"layer {i}": tc.since_fired[i].cpu() < dead_tokens for i in range(tc.n_layer)}
    return factors, alive


def pairwise_rows(method: str, runs: Mapping[int, Factors], alive: Mapping[int, Mapping[str, torch.Tensor]],
                  paper: Mapping[str, float]) -> list[dict]:
    """One row per ordered pair of seeds of one method."""
    rows = []
    for a in runs:
        for b in runs:
            if a != b:
                m = factors_mmcs(runs[a], runs[b], alive[a], alive[b])
                rows.append({"method": method, "run_a": f"seed {a}", "run_b": f"seed {b}", "U": m["U"], "V": m["V"],
                             "n_alive": m["n"], "paper_U": paper.get("U", np.nan), "paper_V": paper.get("V", np.nan)})
    return rows


MMCS_COLUMNS = ["method", "run_a", "run_b", "U", "V", "n_alive", "paper_U", "paper_V"]


def seed_mmcs_table(runs: Mapping[int, Factors], alive: Mapping[int, Mapping[str, torch.Tensor]],
                    transcoders: Mapping[str, tuple[Mapping[int, Factors], Mapping[int, Mapping[str, torch.Tensor]]]] = {},
                    ) -> pd.DataFrame:
    """Rows (method, run_a, run_b, U, V, n_alive, paper_U, paper_V) for every ordered pair of VPD
    seeds, then of each transcoder kind's seeds (U: decoder, V: encoder; the paper gives one number
    per kind, listed under U), plus a "random init" row comparing two random draws of the first VPD
    seed's shapes on its alive set."""
    rows = pairwise_rows("VPD", runs, alive, MMCS_PAPER)
    for kind, (tc_runs, tc_alive) in transcoders.items():
        rows += pairwise_rows(kind.upper(), tc_runs, tc_alive, {"U": MMCS_PAPER_TRANSCODER.get(kind, np.nan)})
    first = next(iter(runs))
    m = factors_mmcs(random_factors(runs[first], 1), random_factors(runs[first], 2), alive[first], alive[first])
    rows.append({"method": "random init", "run_a": "random init", "run_b": "random init", "U": m["U"], "V": m["V"],
                 "n_alive": m["n"], "paper_U": 0.13, "paper_V": 0.13})
    return pd.DataFrame(rows, columns=MMCS_COLUMNS)
