"""Hand-computed firing counts, final-loss tables, greedy generations and the transcoder frontier."""

import math

import pandas as pd
import pytest
import torch

from test_evaluate_mask_strategies import WINDOWS, hand_fake  # the hand-written fake decomposition
from vpd.evaluate.generations import generations_markdown, generations_table, greedy, showcase_models
from vpd.evaluate.loss_tables import eval_loss_rows, loss_table, train_loss_rows
from vpd.evaluate.mask_strategies import pgd_ascent, pgd_attack, standard_strategies, summarise_pgd
from vpd.evaluate.metrics import CIAccumulator
from vpd.evaluate.pareto import frontier, interpolate_frontier, with_frontier_columns


def test_firing_table_counts_by_hand():
    acc = CIAccumulator((0.0, 0.5))
    # 4 tokens, C = 4: c0 never > 0; c1 fires once (0.3); c2 fires on all tokens (0.6); c3 twice (0.9)
    g = torch.tensor([[0.0, 0.3, 0.6, 0.9], [0.0, 0.0, 0.6, 0.9], [0.0, 0.0, 0.6, 0.0], [0.0, 0.0, 0.6, 0.0]])
    acc.update({"h.0.mlp.c_fc": g})
    t = acc.firing_table(rare_tokens=2, alive_eps=0.1)
    row0 = t[(t["matrix"] == "h.0.mlp.c_fc") & (t["threshold"] == 0.0)].iloc[0]
    assert (row0.never_fire, row0.rare, row0.n_tokens) == (1, 2, 4)  # c1 (1 token) and c3 (2 tokens) are rare
    # mean CI: c0 0, c1 0.075, c2 0.6, c3 0.45 -> dead at eps 0.1: c0, c1
    assert row0.dead == 2 and row0.dead_fraction == 0.5
    row5 = t[(t["matrix"] == "h.0.mlp.c_fc") & (t["threshold"] == 0.5)].iloc[0]
    assert (row5.never_fire, row5.rare) == (2, 1)  # at 0.5: c0, c1 never; c3 twice; c2 4 times
    total = t[(t["matrix"] == "all") & (t["threshold"] == 0.0)].iloc[0]
    assert (total.C, total.never_fire, total.dead) == (4, 1, 2)


def test_train_loss_rows_mean_the_last_window():
    records = [{"step": -1, "phase": "faithfulness_warmup", "faithfulness": 9.0}]
    records += [{"step": s, "phase": "train", "faithfulness": float(s), "adversarial_recon": 1.0} for s in range(0, 100, 10)]
    records += [{"step": 95, "phase": "eval", "eval/l0_total": 3.0}]
    rows = {r["term"]: r for r in train_loss_rows(records, window=30)}
    # steps 70, 80, 90 are within the last 30 steps of 90
    assert rows["Δ-L2 faithfulness"]["ours"] == pytest.approx(80.0)
    assert rows["Δ-L2 faithfulness"]["n"] == 3
    assert rows["Δ-L2 faithfulness"]["ours_sem"] == pytest.approx(10.0 / math.sqrt(3))
    assert rows["persistent PGD recon KL"]["paper"] == 0.573
    assert "stochastic recon KL (Δ sampled)" not in rows  # a term absent from the log is left out
    with pytest.raises(ValueError, match="no training records"):
        train_loss_rows(records[:1], window=30)


def test_eval_loss_rows_report_delta_both_ways_and_pgd_spread():
    strategies = pd.DataFrame({"strategy": ["target", "unmasked", "stochastic", "stochastic_with_delta"],
                               "ce": [2.0, 2.1, 2.2, 2.3], "kl": [0.0, 0.01, 0.2, 0.25], "n_tokens": [64] * 4})
    per_batch = pd.DataFrame({"batch": [0, 1, 0, 1], "steps": [20, 20, 40, 40], "kl": [1.0, 3.0, 5.0, 5.0]})
    rows = {r["term"]: r for r in eval_loss_rows(strategies, summarise_pgd(per_batch))}
    assert rows["stochastic KL (Δ sampled)"]["ours"] == 0.25 and rows["stochastic KL (Δ dropped)"]["ours"] == 0.2
    pgd = rows["PGD-20 KL"]
    assert (pgd["ours"], pgd["n"]) == (2.0, 2) and pgd["ours_sem"] == pytest.approx(math.sqrt(2) / math.sqrt(2))
    table = loss_table([{"step": 0, "phase": "train", "faithfulness": 1e-6}], 10, strategies, summarise_pgd(per_batch))
    assert list(table["phase"]) == ["train", "eval", "eval", "eval", "eval"]


def test_greedy_follows_the_argmax_from_the_last_context_tokens():
    seen = []

    def next_logits(x):  # next token = (sum of the visible prefix) mod 5
        seen.append(x.shape[1])
        return torch.nn.functional.one_hot(x.sum() % 5, 5).float()

    assert greedy(next_logits, [1, 2], 3, context=2) == [3, 0, 3]  # 1+2=3; 2+3=5->0; 3+0=3
    assert seen == [2, 2, 2]


def test_showcase_of_an_exact_fully_important_decomposition_matches_the_target():
    target, decomp = hand_fake()
    decomp.ci_tables = {n: torch.ones_like(t) for n, t in decomp.ci_tables.items()}
    models = showcase_models(decomp, target, standard_strategies((0.0,)), pgd_steps=3, pgd_step_size=0.1, seed=0,
                             dtype=torch.float32)
    assert set(models) == {"target", "unmasked", "stochastic", "rounded", "CI-masked", "PGD-3"}
    table = generations_table(models, ["ab"], encode=lambda s: [ord(c) - ord("a") for c in s],
                              decode=lambda ids: " ".join(map(str, ids)), n_new=4, context=WINDOWS.shape[1] - 1)
    # CI = 1 makes every mask 1 and the decomposition is exact: every model writes the target's text
    assert table["agrees_with_target"].tolist() == [1.0] * 6
    assert table["continuation"].nunique() == 1
    md = generations_markdown(table)
    assert md.count("| PGD-3 |") == 1 and '## "ab"' in md


def test_pgd_ascent_yields_every_step_and_agrees_with_pgd_attack():
    target, decomp = hand_fake()
    x = WINDOWS[:, :-1]
    steps = list(pgd_ascent(decomp, x, target(x), steps=5, generator=torch.Generator().manual_seed(0)))
    assert [s for s, *_ in steps] == list(range(6))
    kl = pgd_attack(decomp, x, target(x), steps=(0, 5), generator=torch.Generator().manual_seed(0))
    assert kl == {0: steps[0][1].item(), 5: steps[-1][1].item()}
    assert all(((m >= 0) & (m <= 1)).all() for m in steps[-1][3].values())


def test_frontier_interpolation_by_hand():
    t = pd.DataFrame({
        "method": ["PLT", "PLT", "PLT", "CLT", "VPD", "VPD", "VPD"],
        "l0_per_module": [2.0, 4.0, 3.0, 1.0, 3.0, 1.0, 4.0],
        "ce_increase": [1.0, 0.5, 2.0, 0.3, 0.6, 0.1, 0.2],
    })
    f = frontier(t[t["method"] == "PLT"])
    assert f["l0_per_module"].tolist() == [2.0, 4.0]  # (3, 2.0) is dominated by (2, 1.0)
    assert interpolate_frontier(t[t["method"] == "PLT"], 3.0) == pytest.approx(0.75)
    assert math.isnan(interpolate_frontier(t[t["method"] == "PLT"], 1.0))  # outside the measured range
    out = with_frontier_columns(t)
    vpd = out[out["method"] == "VPD"]
    assert vpd["plt_frontier_ce_increase"].tolist()[0] == pytest.approx(0.75)
    assert vpd["below_plt_frontier"].tolist()[0] is True  # 0.6 < 0.75
    assert vpd["below_plt_frontier"].tolist()[2] is True  # at L0 4: 0.2 < 0.5
    assert pd.isna(vpd["below_plt_frontier"].tolist()[1])
    assert vpd["clt_frontier_ce_increase"].tolist()[1] == pytest.approx(0.3)  # a one-point frontier at its x
    assert out.loc[out["method"] == "PLT", "plt_frontier_ce_increase"].isna().all()
