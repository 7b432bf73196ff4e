"""The "paper vs this run" markdown table."""

import pandas as pd
import torch

from vpd.evaluate.compute_recovered import compute_recovered_table
from vpd.evaluate.mask_strategies import summarise_pgd
from vpd.evaluate.metrics import CIAccumulator
from vpd.evaluate.paper import paper_vs_ours


def test_paper_vs_ours_table():
    strategies = pd.DataFrame({"strategy": ["target", "unmasked", "stochastic", "rounded_ci>0"],
                               "ce": [3.0, 3.1, 3.6, 9.0], "kl": [0.0, 0.1, 0.5, 5.0]})
    curve = pd.DataFrame({"step": [0, 1, 2], "tokens": [0, 1, 2], "flops": [0.0, 50.0, 100.0], "val_ce": [8.0, 4.0, 3.0]})
    rec = compute_recovered_table(curve, dict(zip(strategies["strategy"][1:], strategies["ce"][1:])))
    pgd = summarise_pgd(pd.DataFrame({"batch": [0], "steps": [20], "kl": [1.5]}), 12.0)
    acc = CIAccumulator((0.0,))
    acc.update({"h.0.mlp.c_fc": torch.tensor([[[0.0, 1.0]]]), "h.1.mlp.c_fc": torch.tensor([[[0.5, 0.5]]])})
    md = paper_vs_ours(strategies, rec, pgd, acc.layer_table())
    assert "| unmasked: val CE | 2.72 | 3.1 |" in md
    assert "| stochastic: compute recovered | 26.9% | 70.0% |" in md  # 50 + 0.4 * 50 of 100
    assert "| rounded CI>0: compute recovered | 11.8% | — |" in md
    assert "rounded CI>0: compute recovered is worse than init" in md
    assert "| PGD KL after 20 steps | 0.83 | 1.5 |" in md and "| zero ablation KL | 67.2 | 12 |" in md
    two = summarise_pgd(pd.DataFrame({"batch": [0, 1], "steps": [20, 20], "kl": [1.0, 2.0]}))
    assert "| PGD KL after 20 steps | 0.83 | 1.5 ± 0.5 (2 batches) |" in paper_vs_ours(strategies, rec, two, acc.layer_table())
    assert "| L0 per token (total) | 205 | 3 |" in md and "| L0 layer 1 | 18.9 | 2 |" in md
    assert "| L0 layer 2 | 49.5 | — |" in md
