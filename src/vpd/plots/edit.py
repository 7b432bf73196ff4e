"""Emoticon-edit figures: fig:model-editing-pareto and fig:model-editing-heatmap."""

from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt
import pandas as pd

from vpd.plots import set_theme

PAPER_TEXT = ("paper (67M model): edit α=3: P('o') 0.881, KL surr. 0.018 / global 0.0027;\n"
              "LoRA n=947 λ=10: 0.964, 0.0077 / 0.0023")


def _positive(x: pd.Series, floor: float) -> pd.Series:
    return x.clip(lower=floor)


def plot_editing_pareto(results: pd.DataFrame) -> plt.Figure:
    """P('o') at firing positions vs surrounding KL (left) and vs global KL (right).

    results: edit_results.csv rows (method target/edit/lora, alpha, lambda, n_train, p_o,
    kl_surrounding, kl_global). KLs are drawn on a log axis (values below 1e-7 at 1e-7).
    """
    set_theme()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    base = results[results["method"] == "target"]
    edits = results[results["method"] == "edit"].sort_values("alpha")
    lora = results[results["method"] == "lora"]
    floor = 1e-7
    for ax, col, label in ((axes[0], "kl_surrounding", "KL on surrounding tokens (±20, non-firing)"),
                           (axes[1], "kl_global", "KL on ordinary val batches (global)")):
        ax.plot(_positive(edits[col], floor), edits["p_o"], "-o", color="C3", label="subcomponent edit (α)")
        for _, r in edits.iterrows():
            ax.annotate(f"{r['alpha']:g}", (max(r[col], floor), r["p_o"]), textcoords="offset points",
                        xytext=(4, 3), fontsize=7, color="C3")
        for j, (n, g) in enumerate(sorted(lora.groupby("n_train"), key=lambda kv: kv[0])):
            g = g.sort_values("lambda")
            colour = ["C0", "C2", "C4"][j % 3]
            ax.plot(_positive(g[col], floor), g["p_o"], "--s", color=colour, label=f"rank-1 LoRA, n={n} (λ)")
            for _, r in g.iterrows():
                ax.annotate(f"{r['lambda']:g}", (max(r[col], floor), r["p_o"]),
                            textcoords="offset points", xytext=(4, -9), fontsize=7, color=colour)
        if len(base):
            ax.axhline(float(base["p_o"].iloc[0]), color="grey", ls=":", label="target (unedited)")
        ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel("P('o') at firing positions (held out)")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    sub = results["subcomponent"].iloc[0] if "subcomponent" in results and len(results) else "?"
    n_eval = int(results["n_eval_windows"].iloc[0]) if "n_eval_windows" in results and len(results) else 0
    fig.suptitle(f"Emoticon edit of {sub} vs rank-1 LoRA ({n_eval} held-out windows)", fontsize=11)
    fig.text(0.01, -0.06, PAPER_TEXT, fontsize=8, color="dimgrey", ha="left")
    fig.tight_layout()
    return fig


def plot_editing_heatmap(tokens: pd.DataFrame, alpha: float, lam: float) -> plt.Figure:
    """Per-token KL and P('o') on a few held-out windows: edit (alpha) vs LoRA (lambda).

    tokens: heatmap_tokens.csv (window, t, token, firing, eye, p_o_target, p_o_edit, p_o_lora,
    kl_edit, kl_lora). One pair of panels per window: KL rows (edit, LoRA) and P('o') rows
    (target, edit, LoRA); firing tokens are marked with a dot, the eye with a triangle.
    """
    set_theme()
    windows = sorted(tokens["window"].unique())
    methods = [m for m in ("edit", "lora") if f"kl_{m}" in tokens]
    names = {"edit": f"edit α={alpha:g}", "lora": f"LoRA λ={lam:g}"}
    p_rows = ["target"] + methods
    T = int(tokens.groupby("window").size().max()) if len(tokens) else 1
    fig, axes = plt.subplots(
        2 * len(windows), 2, figsize=(max(8, 0.3 * T + 2.5), 2.9 * len(windows) + 0.6), squeeze=False,
        gridspec_kw={"width_ratios": [60, 1], "hspace": 0.75, "height_ratios": [len(methods), len(p_rows) + 1.6] * len(windows)},
    )
    kl_max = max([float(tokens[f"kl_{m}"].max()) for m in methods] + [1e-9])
    # P('o') colour scale: up to the largest value shown, so small probabilities stay visible
    p_max = max([float(tokens[f"p_o_{m}"].max()) for m in p_rows] + [1e-9])
    for k, w in enumerate(windows):
        g = tokens[tokens["window"] == w].sort_values("t")
        ax_kl, ax_p = axes[2 * k, 0], axes[2 * k + 1, 0]
        kl = np.array([g[f"kl_{m}"].to_numpy() for m in methods])
        im_kl = ax_kl.imshow(kl, aspect="auto", cmap="Reds", vmin=0, vmax=kl_max, interpolation="nearest")
        ax_kl.set_yticks(range(len(methods)), [f"KL {names[m]}" for m in methods], fontsize=7)
        ax_kl.set_xticks([])
        p = np.array([g[f"p_o_{m}"].to_numpy() for m in p_rows])
        im_p = ax_p.imshow(p, aspect="auto", cmap="Blues", vmin=0, vmax=p_max, interpolation="nearest")
        ax_p.set_yticks(range(len(p_rows)), [f"P('o') {names.get(m, m)}" for m in p_rows], fontsize=7)
        labels = [repr(str(t))[1:-1] for t in g["token"]]
        ax_p.set_xticks(range(len(g)), labels, rotation=90, fontsize=7, family="monospace")
        for t_i, (fire, eye) in enumerate(zip(g["firing"], g["eye"])):
            if fire:
                ax_p.plot(t_i, -0.5, "o", color="C3", ms=3, clip_on=False)
            if eye:
                ax_kl.plot(t_i, -0.5, "v", color="black", ms=5, clip_on=False)
        ax_kl.grid(False)
        ax_p.grid(False)
        ax_kl.set_title(f"held-out window {w} (▼ eye, • subcomponent firing)", fontsize=8, loc="left")
        fig.colorbar(im_kl, cax=axes[2 * k, 1]).set_label("KL", fontsize=7)
        fig.colorbar(im_p, cax=axes[2 * k + 1, 1]).set_label("P('o')", fontsize=7)
        for cax in (axes[2 * k, 1], axes[2 * k + 1, 1]):
            cax.tick_params(labelsize=6)
    fig.suptitle("Per-token effect of the edit vs LoRA (fig:model-editing-heatmap)", fontsize=10)
    return fig
