"""Evaluation figures: mask strategies on the target's training curve, PGD KL vs steps, L0 by layer."""

from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
import pandas as pd

from vpd.plots import set_theme


def plot_compute_recovered(curve: pd.DataFrame, recovered: pd.DataFrame) -> plt.Figure:
    """fig:target-curve: the target's val CE vs fraction of its training compute, with each mask
    strategy's CE as a horizontal line and its first crossing marked.

    curve: step, flops, val_ce; recovered: the `compute_recovered_table` (name, ce, fraction, status).
    """
    set_theme()
    fig, ax = plt.subplots(figsize=(7, 4))
    curve = curve.sort_values("step")
    final = float(curve["flops"].iloc[-1])
    trained = curve[curve["flops"] > 0]
    ax.plot(trained["flops"] / final, trained["val_ce"], color="black", lw=1.5, marker=".", label="target")
    for i, row in enumerate(recovered.itertuples(index=False)):
        colour = f"C{i % 10}"
        ax.axhline(row.ce, color=colour, ls=":", lw=1)
        if row.status == "ok" and row.fraction > 0:
            ax.plot([row.fraction], [row.ce], "o", color=colour, label=f"{row.name}: {100 * row.fraction:.1f}%")
        else:
            ax.plot([], [], "o", color=colour, label=f"{row.name}: {row.status.replace('_', ' ')}")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the target's training compute")
    ax.set_ylabel("validation CE (nats/token)")
    lo = min(float(curve["val_ce"].min()), float(recovered["ce"].min()) if len(recovered) else float("inf"))
    hi = max(float(recovered["ce"].max()) if len(recovered) else lo, float(trained["val_ce"].iloc[0]) if len(trained) else lo)
    ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    ax.set_title("Pretraining compute recovered per mask strategy")
    fig.tight_layout()
    return fig


def plot_pgd(summary: pd.DataFrame) -> plt.Figure:
    """tab:vpd-pgd-ce as a figure: mean KL (band: mean ± s.e., and min-max, over batches) vs PGD steps, log y, with
    the zero-ablation KL as a dashed line. summary: `summarise_pgd` output."""
    set_theme()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    zero = summary[summary["steps"] == "zero_ablation"]
    pts = summary[summary["steps"] != "zero_ablation"].copy()
    pts["n"] = pts["steps"].astype(int)
    pts = pts.sort_values("n")
    ax.plot(pts["n"], pts["kl_mean"], marker="o", color="C3", label="PGD (shared sources)")
    ax.fill_between(pts["n"], pts["kl_min"], pts["kl_max"], color="C3", alpha=0.15, lw=0)
    sem = pts["kl_sem"].fillna(0.0)
    ax.fill_between(pts["n"], pts["kl_mean"] - sem, pts["kl_mean"] + sem, color="C3", alpha=0.3, lw=0)
    if len(zero):
        ax.axhline(float(zero["kl_mean"].iloc[0]), color="grey", ls="--", label="zero ablation")
    if (pts["kl_mean"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("PGD sign-ascent steps")
    ax.set_ylabel("KL to target (nats/token)")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_l0_by_layer(layer_table: pd.DataFrame, threshold: Optional[float] = None) -> plt.Figure:
    """tab:num-components-per-layer as bars: L0 and alive per layer (one threshold, default the lowest)."""
    set_theme()
    t = float(layer_table["threshold"].min()) if threshold is None else float(threshold)
    sub = layer_table[(layer_table["threshold"] == t) & (layer_table["layer"] != "all")]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    labels = [str(x) for x in sub["layer"]]
    axes[0].bar(labels, sub["l0"], color="C0")
    axes[0].set_ylabel(f"L0 per token (CI > {t:g})")
    axes[1].bar(labels, sub["alive"], color="C1", label="alive")
    axes[1].bar(labels, sub["C"], color="none", edgecolor="grey", label="C")
    axes[1].set_ylabel("subcomponents")
    axes[1].legend(frameon=False)
    for ax in axes:
        ax.set_xlabel("layer")
    fig.tight_layout()
    return fig
