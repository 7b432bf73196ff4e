"""The paper's evaluation numbers (vpd-method.md section 4) and the "paper vs this run" table.

Absolute numbers are not expected to match at CPU scale (a ~1M-parameter target instead of 67M);
the table puts them side by side so the direction and size of each effect can be compared.
"""

from __future__ import annotations

from typing import Mapping, Optional

import pandas as pd

TARGET_CE = 2.71
# strategy name (ours) -> (paper label, val CE, compute recovered)
MASK_STRATEGIES: dict[str, tuple[str, float, float]] = {
    "unmasked": ("unmasked", 2.72, 0.824),
    "stochastic": ("stochastic", 2.84, 0.269),
    "rounded_ci>0": ("rounded CI>0", 2.94, 0.118),
    "rounded_ci>0.1": ("rounded CI>0.1", 2.95, 0.113),
    "ci_as_masks": ("CI as masks", 2.99, 0.094),
    "rounded_ci>0.5": ("rounded CI>0.5", 3.02, 0.080),
}
PGD_KL: dict[str, float] = {"20": 0.83, "40": 1.35, "80": 3.84, "160": 25.3, "320": 40.2, "zero_ablation": 67.2}
L0_TOTAL, L0_BY_LAYER = 205.0, (44.6, 18.9, 49.5, 92.0)
ALIVE, TOTAL_C, DENSITY = 9972, 38912, 0.021
# fig:feature_splitting: alive MLP subcomponents at 1x and 4x C; transcoder alive latents at 4k and 32k
SPLIT_VPD_ALIVE = {1.0: 6507, 4.0: 6520}
SPLIT_TRANSCODER_ALIVE = {"plt": {4096: 10229, 32768: 58765}, "clt": {4096: 10827, 32768: 61085}}


def _fmt(x: Optional[float | str], pct: bool = False) -> str:
    if isinstance(x, str):
        return x
    if x is None or x != x:
        return "—"
    return f"{100 * x:.1f}%" if pct else f"{x:.4g}"


def markdown_table(rows: list[tuple[str, Optional[float], Optional[float | str], bool]]) -> str:
    """rows of (quantity, paper, ours, as_percent) -> a markdown table (a str `ours` is shown as is)."""
    lines = ["| quantity | paper | this run |", "|---|---|---|"]
    lines += [f"| {q} | {_fmt(p, pct)} | {_fmt(o, pct)} |" for q, p, o, pct in rows]
    return "\n".join(lines) + "\n"


def _mean_sem(row) -> float | str:
    """A PGD summary row as "mean ± s.e. (n batches)", or the bare mean where there is no spread."""
    if row.n_batches > 1 and row.kl_sem == row.kl_sem:
        return f"{row.kl_mean:.4g} ± {row.kl_sem:.2g} ({row.n_batches} batches)"
    return float(row.kl_mean)


def paper_vs_ours(
    strategies: pd.DataFrame,
    recovered: pd.DataFrame,
    pgd_summary: pd.DataFrame,
    layer_table: pd.DataFrame,
    *,
    threshold: float = 0.0,
) -> str:
    """The evaluation's "paper vs this run" markdown table.

    strategies: evaluate_masks table (strategy, ce, kl); recovered: compute_recovered_table (name,
    fraction, status); pgd_summary: summarise_pgd output; layer_table: CIAccumulator.layer_table().
    An out-of-range compute-recovered value is shown with its status, never as a number.
    """
    ce: Mapping[str, float] = dict(zip(strategies["strategy"], strategies["ce"]))
    rec = {r.name: r for r in recovered.itertuples(index=False)}
    rows: list[tuple[str, Optional[float], Optional[float], bool]] = [("target val CE", TARGET_CE, ce.get("target"), False)]
    status_notes = []
    for name, (label, p_ce, p_frac) in MASK_STRATEGIES.items():
        rows.append((f"{label}: val CE", p_ce, ce.get(name), False))
        r = rec.get(name)
        ours = r.fraction if r is not None and r.status == "ok" else None
        rows.append((f"{label}: compute recovered", p_frac, ours, True))
        if r is not None and r.status != "ok":
            status_notes.append(f"- {label}: compute recovered is {r.status.replace('_', ' ')} (CE {r.ce:.4g})")
    pgd = {str(r.steps): _mean_sem(r) for r in pgd_summary.itertuples(index=False)}
    for steps, p_kl in PGD_KL.items():
        label = "zero ablation KL" if steps == "zero_ablation" else f"PGD KL after {steps} steps"
        rows.append((label, p_kl, pgd.get(steps), False))
    lt = layer_table[layer_table["threshold"] == threshold]
    total = lt[lt["layer"].astype(str) == "all"]
    if len(total):
        t = total.iloc[0]
        rows += [("L0 per token (total)", L0_TOTAL, float(t["l0"]), False),
                 ("alive subcomponents", float(ALIVE), float(t["alive"]), False),
                 ("total C", float(TOTAL_C), float(t["C"]), False),
                 ("dead subcomponents (mean CI <= eps)", 1 - ALIVE / TOTAL_C, 1 - float(t["alive"]) / float(t["C"]), True),
                 ("density (L0 / alive)", DENSITY, float(t["density"]), True)]
    for i, p in enumerate(L0_BY_LAYER):
        ours = lt[lt["layer"].astype(str) == str(i)]
        rows.append((f"L0 layer {i}", p, float(ours["l0"].iloc[0]) if len(ours) else None, False))
    text = markdown_table(rows)
    return text + ("\n" + "\n".join(status_notes) + "\n" if status_notes else "")
