"""The seeds comparison by hand: headline mean/std over evaluation folders, and MMCS."""

import math

import pandas as pd
import pytest
import torch

from vpd.evaluate.seeds import factors_mmcs, headline_table, mmcs, seed_mmcs_table


def write_eval(folder, l0, alive, dead_fraction, stochastic_ce, pgd20):
    folder.mkdir(parents=True)
    pd.DataFrame({"layer": ["0", "all"], "threshold": [0.0, 0.0], "C": [10, 10], "l0": [l0, l0],
                  "alive": [alive, alive], "density": [l0 / alive] * 2}).to_csv(folder / "l0_by_layer.csv", index=False)
    pd.DataFrame({"matrix": ["all"], "C": [10], "threshold": [0.0], "n_tokens": [100], "never_fire": [2], "rare": [1],
                  "dead": [int(10 * dead_fraction)], "rare_tokens": [10], "dead_fraction": [dead_fraction]}
                 ).to_csv(folder / "firing_counts.csv", index=False)
    pd.DataFrame({"strategy": ["target", "stochastic"], "ce": [2.0, stochastic_ce], "kl": [0.0, stochastic_ce - 2.0],
                  "n_tokens": [100, 100]}).to_csv(folder / "mask_strategies.csv", index=False)
    pd.DataFrame({"name": ["stochastic"], "ce": [stochastic_ce], "fraction": [0.5], "status": ["ok"], "flops": [1.0],
                  "step": [1]}).to_csv(folder / "compute_recovered.csv", index=False)
    pd.DataFrame({"steps": ["20", "zero_ablation"], "kl_mean": [pgd20, 9.0], "kl_sem": [0.1, float("nan")],
                  "kl_min": [pgd20, 9.0], "kl_max": [pgd20, 9.0], "n_batches": [16, 0]}
                 ).to_csv(folder / "pgd_steps.csv", index=False)


def test_headline_mean_std_min_max_over_seeds(tmp_path):
    write_eval(tmp_path / "a", l0=10.0, alive=8, dead_fraction=0.2, stochastic_ce=2.5, pgd20=1.0)
    write_eval(tmp_path / "b", l0=14.0, alive=6, dead_fraction=0.4, stochastic_ce=2.7, pgd20=3.0)
    t = headline_table({0: tmp_path / "a", 1: tmp_path / "b"}).set_index("quantity")
    l0 = t.loc["L0 (CI > 0)"]
    assert (l0["mean"], l0["min"], l0["max"], l0["n"], l0["paper"]) == (12.0, 10.0, 14.0, 2, 205.0)
    assert l0["std"] == pytest.approx(math.sqrt(8))  # sample std of (10, 14)
    assert t.loc["dead fraction", "mean"] == pytest.approx(0.3)
    assert t.loc["PGD-20 KL", "mean"] == 2.0 and t.loc["PGD-20 KL", "paper"] == 0.83
    assert t.loc["stochastic: CE", "paper"] == 2.84 and t.loc["stochastic: KL", "mean"] == pytest.approx(0.6)
    assert t.loc["stochastic: compute recovered", "mean"] == 0.5
    assert t.loc["zero ablation KL", "std"] == 0.0


def test_mmcs_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[-3.0, 0.0], [1.0, 1.0]])
    # row 1 of a: |cos| 1 with b0 (sign ignored); row 2: max(0, 1/sqrt2)
    assert mmcs(a, b) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    assert mmcs(a, a) == pytest.approx(1.0)
    assert math.isnan(mmcs(a[:0], b))


def test_factors_mmcs_uses_alive_sets_and_weights_matrices_by_them():
    V = torch.eye(3)  # [d_in, C]: subcomponent c's V is e_c
    U = torch.eye(3)  # [C, d_out]
    a = {"m": (V, U)}
    b = {"m": (V[:, [1, 0, 2]], U[[1, 0, 2]])}  # the same subcomponents in another order
    alive_all = {"m": torch.tensor([True, True, True])}
    assert factors_mmcs(a, b, alive_all, alive_all) == {"U": 1.0, "V": 1.0, "n": 3}
    # b keeps only its first subcomponent alive (= a's second): a's 0 and 2 find cos 0
    alive_b = {"m": torch.tensor([True, False, False])}
    out = factors_mmcs(a, b, alive_all, alive_b)
    assert out["U"] == pytest.approx(1 / 3) and out["n"] == 3
    table = seed_mmcs_table({0: a, 1: b}, {0: alive_all, 1: alive_all})
    assert table["run_a"].tolist() == ["seed 0", "seed 1", "random init"]
    assert table.loc[0, "U"] == 1.0 and table.loc[0, "paper_U"] == 0.48
    assert 0 < table.loc[2, "U"] < 1  # two random draws of 3-vectors
