"""fig:feature_splitting (alive units vs capacity) and fig:splitting-heatmap (cross-run match shares)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vpd.plots import set_theme

STYLE = {"VPD": ("C3", "o"), "PLT": ("C0", "s"), "CLT": ("C2", "^")}


def plot_alive_vs_capacity(split: pd.DataFrame) -> plt.Figure:
    """Alive units vs capacity per method (log-log), with the y = x line of "every unit alive".

    split: method, run, capacity, alive (the feature-splitting table).
    """
    set_theme()
    fig, ax = plt.subplots(figsize=(5.2, 4))
    for method, g in split.groupby("method", sort=False):
        colour, marker = STYLE.get(method, ("C7", "x"))
        g = g.sort_values("capacity")
        ax.plot(g["capacity"], g["alive"], marker=marker, color=colour, label=method)
        for _, r in g.iterrows():
            ax.annotate(str(r["run"]), (r["capacity"], r["alive"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo = max(1.0, float(min(split["capacity"].min(), split["alive"].clip(lower=1).min())))
    hi = float(split["capacity"].max())
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("capacity (subcomponents / latents)")
    ax.set_ylabel("alive on held-out tokens")
    ax.legend(frameon=False)
    ax.set_title("Feature splitting: alive units vs capacity")
    fig.tight_layout()
    return fig


def plot_splitting_heatmap(matches: pd.DataFrame, threshold: float = 0.5) -> plt.Figure:
    """One panel per method: share of alive units of the row run with a cosine > threshold match in
    the column run (diagonal blank). matches: the splitting_matches table."""
    set_theme()
    methods = list(dict.fromkeys(matches["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.9), squeeze=False, layout="constrained")
    for n, (ax, method) in enumerate(zip(axes[0], methods)):
        g = matches[matches["method"] == method]
        order = (pd.concat([g[["run_from", "capacity_from"]].set_axis(["run", "cap"], axis=1),
                            g[["run_to", "capacity_to"]].set_axis(["run", "cap"], axis=1)])
                 .drop_duplicates("run").sort_values("cap")["run"].tolist())
        grid = np.full((len(order), len(order)), np.nan)
        for r in g.itertuples(index=False):
            grid[order.index(r.run_from), order.index(r.run_to)] = r.share_matched
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
        for i in range(len(order)):
            for j in range(len(order)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{100 * grid[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] < 0.6 else "black")
        ax.set_xticks(range(len(order)), order, rotation=45, ha="right")
        ax.set_yticks(range(len(order)), order)
        ax.grid(False)
        ax.set_xlabel("matched in run")
        if n == 0:
            ax.set_ylabel("units of run")
        ax.set_title(f"{method} ({g['unit'].iloc[0]})")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"share with a cos > {threshold:g} match")
    return fig
