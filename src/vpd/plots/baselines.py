"""fig:pareto-mse: CE increase against three sparsity measures, VPD vs PLT and CLT transcoders."""

from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
import pandas as pd

from vpd.plots import set_theme

PANELS = (
    ("l0_per_module", "L0 per module"),
    ("l0_per_mlp", "L0 per MLP"),
    ("active_params", "active parameters per token"),
)
STYLE = {"VPD": ("C3", "o"), "PLT": ("C0", "s"), "CLT": ("C2", "^")}


def _series(table: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(method, label, rows) per curve: VPD per run (over τ), transcoders per dictionary size (over k)."""
    out = []
    for method in ("VPD", "PLT", "CLT"):
        sub = table[table["method"] == method]
        if sub.empty:
            continue
        if method == "VPD":
            runs = sorted(sub["run"].unique(), key=lambda r: (r != "main", r))  # the main run first
            for run in runs:
                g = sub[sub["run"] == run]
                out.append((method, "VPD" if run == "main" else f"VPD {run}", g))
        else:
            for n, g in sub.groupby("n_latents", sort=True):
                out.append((method, f"{method} L={int(n)}", g))
    return out


def plot_pareto(table: pd.DataFrame, zero_ablation_ce_increase: Optional[float] = None) -> plt.Figure:
    """Three panels from the Pareto table (columns as `vpd.evaluate.pareto.COLUMNS`), log x axes.

    Each VPD run is one curve over τ (annotated), each transcoder dictionary size one curve over k;
    the dashed line is the CE increase of ablating every MLP to zero.
    """
    set_theme()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    series = _series(table)
    linestyles = ["-", "--", ":", "-."]
    for ax, (col, label) in zip(axes, PANELS):
        seen: dict[str, int] = {}
        for method, name, g in series:
            colour, marker = STYLE[method]
            ls = linestyles[seen.get(method, 0) % len(linestyles)]
            seen[method] = seen.get(method, 0) + 1
            g = g.sort_values(col)
            ax.plot(g[col], g["ce_increase"], marker=marker, color=colour, ls=ls, lw=1.2, ms=5, label=name)
            if method == "VPD":
                for _, r in g.iterrows():
                    ax.annotate(f"τ={r['tau']:g}", (r[col], r["ce_increase"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
            else:
                for _, r in g.iterrows():
                    ax.annotate(f"k={int(r['k'])}", (r[col], r["ce_increase"]), fontsize=7,
                                xytext=(3, -9), textcoords="offset points", color=colour)
        if zero_ablation_ce_increase is not None:
            ax.axhline(zero_ablation_ce_increase, color="grey", ls="--", lw=1, label="zero ablation")
        if (table[col] > 0).all():
            ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("CE increase over target (nats)")
    if (table["ce_increase"] > 0).all() and (zero_ablation_ce_increase is None or zero_ablation_ce_increase > 0):
        axes[0].set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("All MLPs replaced at once: CE increase vs sparsity")
    fig.tight_layout()
    return fig
