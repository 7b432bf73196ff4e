"""Figures of a decomposition run, as pure functions of the metrics DataFrame (metrics.jsonl rows)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from vpd.plots import set_theme

LOSS_TERMS = ("faithfulness", "importance_minimality", "stochastic_recon", "adversarial_recon", "total")


def _train(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["phase"] == "train"].sort_values("step")


def plot_losses(df: pd.DataFrame) -> plt.Figure:
    """One panel per loss term (log y) over training steps, with the eval KLs in the last panel."""
    set_theme()
    train = _train(df)
    terms = [t for t in LOSS_TERMS if t in train.columns]
    ev = df[df["phase"] == "eval"].sort_values("step")
    ev_cols = [c for c in ev.columns if c.startswith(("eval/kl/", "eval/mse/")) and ev[c].notna().any()]
    n = len(terms) + (1 if ev_cols else 0)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
    for ax, term in zip(axes[0], terms):
        y = pd.to_numeric(train[term], errors="coerce")
        ax.plot(train["step"], y)
        ax.set_yscale("log" if (y > 0).all() else "linear")
        ax.set_title(term.replace("_", " "))
        ax.set_xlabel("step")
    if ev_cols:
        ax = axes[0][-1]
        for c in ev_cols:
            y = pd.to_numeric(ev[c], errors="coerce")
            ax.plot(ev["step"], y, marker="o", ms=3, label=c.split("/")[-1])
        ax.set_yscale("log")
        ax.set_title("eval " + ev_cols[0].split("/")[1])
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_l0(df: pd.DataFrame) -> plt.Figure:
    """Total L0 over training, and the final eval L0 per matrix."""
    set_theme()
    train = _train(df)
    ev = df[df["phase"] == "eval"].sort_values("step")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 1.6]})
    a.plot(train["step"], train["l0_total"], label="train batch")
    if "eval/l0_total" in ev:
        a.plot(ev["step"], ev["eval/l0_total"], marker="o", ms=3, label="eval batch")
    a.set_xlabel("step")
    a.set_ylabel("L0 (active subcomponents per token)")
    a.legend(fontsize=8)
    cols = [c for c in ev.columns if c.startswith("eval/l0/")]
    if cols and len(ev):
        last = ev.iloc[-1]
        names = [c[len("eval/l0/"):] for c in cols]
        b.bar(range(len(cols)), [float(last[c]) for c in cols])
        b.set_xticks(range(len(cols)), names, rotation=90, fontsize=6)
        b.set_ylabel(f"L0 at step {int(last['step'])}")
    fig.tight_layout()
    return fig
