"""fig:adv-vs-no-adv: CE at fixed source values, VPD against the same run without the adversary."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from vpd.plots import set_theme


def plot_adv_vs_no_adv(table: pd.DataFrame, target_ce: float) -> plt.Figure:
    """CE against the fixed source value r, one line per run, the target's CE dashed.

    table: run, r, ce (the `ce_vs_source.csv` of the adversary_ablation stage)."""
    set_theme()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (run, rows) in enumerate(table.groupby("run", sort=True)):
        rows = rows.sort_values("r")
        ax.plot(rows["r"], rows["ce"], marker="o", color=f"C{i}", label=run)
    ax.axhline(target_ce, color="black", ls="--", lw=1, label="target")
    ax.set_xlabel("fixed source value r (mask = CI + (1 - CI) r)")
    ax.set_ylabel("CE on held-out windows (nats)")
    ax.set_title("VPD with and without the adversary")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
