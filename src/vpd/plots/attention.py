"""Attention figures: previous-token scores, q/k per-head norms, the q/k pair interaction grid and
attention by offset under a one-position ablation."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from vpd.plots import set_theme


def plot_prev_token_scores(df: pd.DataFrame) -> plt.Figure:
    """df: layer, head, source, score (attention at offset 1)."""
    set_theme()
    d = df.assign(unit=lambda x: "L" + x["layer"].astype(str) + "H" + x["head"].astype(str))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * d["unit"].nunique() + 2), 3.2))
    sns.barplot(data=d, x="unit", y="score", hue="source", ax=ax)
    ax.set_xlabel("layer / head")
    ax.set_ylabel("attention to the previous token")
    ax.set_ylim(0, 1)
    ax.set_title("fig:prev_token_scores")
    fig.tight_layout()
    return fig


def plot_qk_weight_norm(df: pd.DataFrame, layer: int) -> plt.Figure:
    """df: matrix (q/k), subcomponent, head, frac; one heatmap per matrix, rows sorted by main head."""
    set_theme()
    mats = [m for m in ("q", "k") if (df["matrix"] == m).any()] if len(df) else []
    fig, axes = plt.subplots(1, max(1, len(mats)), figsize=(4.2 * max(1, len(mats)), 5.0), squeeze=False)
    for ax, m in zip(axes[0], mats):
        piv = df[df["matrix"] == m].pivot(index="subcomponent", columns="head", values="frac")
        piv = piv.loc[piv.idxmax(axis=1).sort_values().index] if len(piv) else piv
        sns.heatmap(piv, ax=ax, cmap="viridis", vmin=0, vmax=1, cbar_kws={"label": "share of the norm"},
                    yticklabels=len(piv) <= 40)
        ax.set_title(f"{layer}.attn.{m}_proj: alive subcomponents ({len(piv)})")
        ax.set_xlabel("head")
        ax.set_ylabel("subcomponent")
    if not mats:
        axes[0, 0].text(0.5, 0.5, "no alive q/k subcomponents", ha="center", va="center")
    fig.suptitle("fig:qk_comp_weight_norm")
    fig.tight_layout()
    return fig


def plot_attn_contrib_grid(grid: pd.DataFrame, top: pd.DataFrame) -> plt.Figure:
    """grid: q, k, pair, head ('mean' + heads), offset, z; top-pair rows (q, k) coloured, the rest grey."""
    set_theme()
    heads = ["mean"] + sorted((h for h in grid["head"].unique() if h != "mean"), key=int)
    ncol = min(len(heads), 3)
    nrow = int(np.ceil(len(heads) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False, sharex=True)
    top_names = [f"{q} × {k}" for q, k in zip(top["q"], top["k"])]
    palette = dict(zip(top_names, sns.color_palette("tab10", len(top_names))))
    for ax, h in zip(axes.flat, heads):
        d = grid[grid["head"] == h]
        rest = d[~d["pair"].isin(top_names)]
        for _, g in rest.groupby("pair"):
            ax.plot(g["offset"], g["z"], color="0.8", lw=0.5, zorder=1)
        for name in top_names:
            g = d[d["pair"] == name]
            ax.plot(g["offset"], g["z"], color=palette[name], lw=1.6, zorder=2, label=name)
        ax.set_title("mean over heads" if h == "mean" else f"head {h}")
        ax.set_xlabel("offset τ (query - key)")
        ax.set_ylabel("z-scored interaction")
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    if top_names:
        axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle("fig:attn_contrib_grid")
    fig.tight_layout()
    return fig


def plot_attn_ablation(df: pd.DataFrame) -> plt.Figure:
    """df: q (ablated subcomponent), head, offset, before, after (attention at the ablated query)."""
    set_theme()
    qs = list(dict.fromkeys(df["q"]))
    heads = sorted(df["head"].unique())
    fig, axes = plt.subplots(len(qs), len(heads), figsize=(2.6 * len(heads), 2.2 * len(qs)), squeeze=False,
                             sharex=True, sharey=True)
    for i, q in enumerate(qs):
        for j, h in enumerate(heads):
            ax = axes[i, j]
            d = df[(df["q"] == q) & (df["head"] == h)]
            ax.plot(d["offset"], d["before"], color="0.3", lw=1.2, label="target")
            ax.plot(d["offset"], d["after"], color="#e76f51", lw=1.2, label="ablated")
            if i == 0:
                ax.set_title(f"head {h}", fontsize=9)
            if j == 0:
                ax.set_ylabel(q, fontsize=7)
    axes[0, 0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("offset")
    fig.suptitle("fig:attn_patterns_q_intv: attention by offset with one q subcomponent ablated at one position")
    fig.tight_layout()
    return fig
