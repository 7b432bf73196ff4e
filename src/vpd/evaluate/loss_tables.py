"""The paper's tab:vpd-train-losses and tab:vpd-eval-losses: a decomposition's final loss terms.

Training terms are means over the last `window` optimisation steps of metrics.jsonl (records every
`log_every` steps); evaluation terms come from the evaluate stage's tables on held-out windows.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import pandas as pd

COLUMNS = ["phase", "term", "ours", "ours_sem", "n", "paper", "note"]

# metrics.jsonl column -> (label, paper value or NaN)
TRAIN_TERMS = {
    "faithfulness": ("Δ-L2 faithfulness", 2.4e-6),
    "stochastic_recon": ("stochastic recon KL (Δ sampled)", float("nan")),
    "adversarial_recon": ("persistent PGD recon KL", 0.573),
    "importance_minimality": ("importance minimality", float("nan")),
    "l0_total": ("L0 (CI > 0, all matrices)", float("nan")),
}


def train_loss_rows(records: Iterable[Mapping], window: int) -> list[dict]:
    """Means (and standard errors over the logged records) of each training term over the last
    `window` steps of the "train" records; an empty log is a ValueError."""
    df = pd.DataFrame([r for r in records if r.get("phase") == "train"])
    if df.empty:
        raise ValueError("metrics.jsonl holds no training records")
    last = df[df["step"] > df["step"].max() - window]
    rows = []
    for col, (label, paper) in TRAIN_TERMS.items():
        if col not in last:
            continue
        v = last[col].astype(float)
        rows.append({"phase": "train", "term": label, "ours": v.mean(),
                     "ours_sem": v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan"), "n": len(v),
                     "paper": paper,
                     "note": f"mean over steps {int(last['step'].min())}-{int(last['step'].max())}"})
    return rows


def eval_loss_rows(strategies: pd.DataFrame, pgd_summary: pd.DataFrame, pgd_steps: int = 20) -> list[dict]:
    """KL to the target on held-out tokens: stochastic with Δ dropped and with Δ sampled, unmasked,
    and PGD-`pgd_steps` (mean ± s.e. over the attacked batches)."""
    kl = dict(zip(strategies["strategy"], strategies["kl"]))
    n_tokens = int(strategies["n_tokens"].iloc[0])
    rows = [
        {"phase": "eval", "term": "stochastic KL (Δ sampled)", "ours": kl["stochastic_with_delta"], "ours_sem": float("nan"),
         "n": n_tokens, "paper": 0.238, "note": "m = g + (1-g) r, m_Δ ~ U(0,1) per token"},
        {"phase": "eval", "term": "stochastic KL (Δ dropped)", "ours": kl["stochastic"], "ours_sem": float("nan"),
         "n": n_tokens, "paper": float("nan"), "note": "m = g + (1-g) r, m_Δ = 0"},
        {"phase": "eval", "term": "unmasked KL (Δ dropped)", "ours": kl["unmasked"], "ours_sem": float("nan"),
         "n": n_tokens, "paper": float("nan"), "note": "m = 1, m_Δ = 0"},
    ]
    pgd = pgd_summary[pgd_summary["steps"] == str(pgd_steps)]
    if len(pgd):
        r = pgd.iloc[0]
        rows.append({"phase": "eval", "term": f"PGD-{pgd_steps} KL", "ours": float(r["kl_mean"]),
                     "ours_sem": float(r["kl_sem"]), "n": int(r["n_batches"]), "paper": 0.927,
                     "note": "n = attacked batches, sources shared per batch"})
    return rows


def loss_table(records: Iterable[Mapping], window: int, strategies: pd.DataFrame, pgd_summary: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(train_loss_rows(records, window) + eval_loss_rows(strategies, pgd_summary), columns=COLUMNS)
