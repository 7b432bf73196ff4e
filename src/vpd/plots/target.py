"""The target's validation curve: val CE against training FLOPs and tokens (log x)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import NullFormatter

from vpd.plots import set_theme


def plot_target_curve(curve: pd.DataFrame) -> plt.Figure:
    """Two panels from curve.csv's columns (step, tokens, flops, val_ce).

    Step 0 (no tokens yet) cannot sit on a log axis, so the initial CE is a dashed reference line.
    """
    set_theme()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    trained = curve[curve["tokens"] > 0]
    initial = curve.loc[curve["step"] == 0, "val_ce"]
    for ax, col, label in ((axes[0], "flops", "training FLOPs"), (axes[1], "tokens", "training tokens")):
        ax.plot(trained[col], trained["val_ce"], marker="o", markersize=3, lw=1.2)
        if len(initial):
            ax.axhline(float(initial.iloc[0]), ls="--", lw=0.8, color="grey", label="step 0")
            ax.legend(loc="lower left", frameon=False)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones collide
        ax.set_xlabel(label)
    axes[0].set_ylabel("validation CE (nats/token)")
    if len(curve):
        fig.suptitle(f"Target LM: validation CE {curve['val_ce'].iloc[0]:.3f} -> {curve['val_ce'].iloc[-1]:.3f}")
    fig.tight_layout()
    return fig
