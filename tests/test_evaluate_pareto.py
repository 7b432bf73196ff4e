"""The Pareto table (one row per (method, setting)), VPD points by hand, and the figures."""

import math

import pandas as pd
import pytest
import torch

from test_evaluate_mask_strategies import NAMES, WINDOWS, hand_fake  # the hand-written fake decomposition
from vpd.baselines.splice import SpliceResult
from vpd.evaluate.compute_recovered import compute_recovered_table
from vpd.evaluate.mask_strategies import summarise_pgd
from vpd.evaluate.metrics import CIAccumulator
from vpd.evaluate.pareto import COLUMNS, ParetoPoint, pareto_table, transcoder_point, vpd_pareto_points
from vpd.plots import save_figure
from vpd.plots.baselines import plot_pareto
from vpd.plots.evaluate import plot_compute_recovered, plot_l0_by_layer, plot_pgd


def splice_result(ce, l0s, costs):
    return SpliceResult(target_ce=2.0, ce=ce, kl=0.1, n_tokens=10, l0_per_layer=l0s, latent_param_cost=costs)


def points():
    pts = [
        ParetoPoint("VPD", f"tau={t:g}", 3 - t, 6 - t, 100 - t, 2.1 + t, 2.0, tau=t) for t in (0.0, 0.1, 0.5)
    ]
    for kind in ("plt", "clt"):
        for n in (64, 256):
            for k in (4, 8):
                res = splice_result(2.5 - k / 100 - n / 1e4, [k, k], [32, 48] if kind == "clt" else [32, 32])
                pts.append(transcoder_point(kind, n, k, res))
    return pts


def test_pareto_table_one_row_per_method_setting():
    table = pareto_table(points())
    assert list(table.columns) == COLUMNS
    assert len(table) == 3 + 2 * 4
    assert not table.duplicated(["method", "setting"]).any()
    assert table.groupby("method").size().to_dict() == {"VPD": 3, "PLT": 4, "CLT": 4}
    clt = table[(table["method"] == "CLT") & (table["setting"] == "L=64,k=8")].iloc[0]
    assert clt["l0_per_module"] == 8 and clt["l0_per_mlp"] == 8 and clt["active_params"] == 8 * 32 + 8 * 48
    assert clt["ce_increase"] == pytest.approx(clt["ce"] - 2.0)
    with pytest.raises(ValueError, match="duplicate"):
        pareto_table(points() + [points()[0]])
    with pytest.raises(ValueError, match="unknown"):
        pareto_table([ParetoPoint("SAE", "x", 1, 1, 1, 1, 1)])


def test_vpd_points_on_fake_by_hand():
    target, decomp = hand_fake()
    decomp.shapes = {NAMES[0]: (2, 2), NAMES[1]: (3, 2)}  # (d_out, d_in)
    pts = vpd_pareto_points(decomp, target, WINDOWS, (0.0, 0.5), batch_size=1)
    by = {p.tau: p for p in pts}
    # CI > 0 reproduces the target (Δ = 0): no CE increase; L0 c_fc 5/3, down_proj 4/3 (one layer)
    assert by[0.0].ce_increase == pytest.approx(0.0, abs=1e-6)
    assert by[0.0].l0_per_module == pytest.approx(1.5) and by[0.0].l0_per_mlp == pytest.approx(3.0)
    assert by[0.0].active_params == pytest.approx(5 / 3 * 4 + 4 / 3 * 5)
    # CI > 0.5: c_fc {0},{1},{0}; down_proj {0},{1},{1}; position 2 gives logits 0 -> CE log 3 there
    assert by[0.5].l0_per_module == pytest.approx(1.0)
    tl = torch.tensor([[2.0, 0, 0], [0, 0, 2.0], [2.0, 0, 2.0]])
    y = [1, 2, 0]
    ce_t = [-torch.log_softmax(tl[i], -1)[y[i]].item() for i in range(3)]
    assert by[0.5].ce == pytest.approx((ce_t[0] + ce_t[1] + math.log(3)) / 3, abs=1e-6)
    table = pareto_table(pts)
    assert table["setting"].tolist() == ["tau=0", "tau=0.5"]


def test_figures_render(tmp_path):
    table = pareto_table(points())
    written = save_figure(plot_pareto(table, zero_ablation_ce_increase=3.0), tmp_path / "fig_pareto_mse")
    assert all(p.exists() and p.stat().st_size > 0 for p in written)
    curve = pd.DataFrame({"step": range(5), "tokens": [0, 1, 2, 3, 4], "flops": [0.0, 10, 20, 30, 40],
                          "val_ce": [8.0, 5.0, 4.0, 3.0, 2.5]})
    rec = compute_recovered_table(curve, {"unmasked": 2.6, "stochastic": 3.5, "zero": 9.0, "better": 2.0})
    save_figure(plot_compute_recovered(curve, rec), tmp_path / "fig_target_curve")
    pgd = pd.DataFrame({"batch": [0, 0, 1, 1], "steps": [20, 40, 20, 40], "kl": [0.5, 0.9, 0.7, 1.1]})
    summary = summarise_pgd(pgd, 15.0)
    assert summary["kl_mean"].tolist()[:2] == pytest.approx([0.6, 1.0])
    # s.e. over the two batches: sample std sqrt(0.02) / sqrt(2) = 0.1 at both step counts
    assert summary["kl_sem"].tolist()[:2] == pytest.approx([0.1, 0.1])
    assert summary["n_batches"].tolist() == [2, 2, 0] and summary["kl_sem"].isna().tolist()[2]
    save_figure(plot_pgd(summary), tmp_path / "fig_pgd")
    acc = CIAccumulator((0.0, 0.5))
    acc.update({"h.0.mlp.c_fc": torch.rand(2, 3, 4), "h.1.attn.q_proj": torch.rand(2, 3, 5)})
    save_figure(plot_l0_by_layer(acc.layer_table()), tmp_path / "fig_l0")
    assert len(list(tmp_path.glob("*.pdf"))) == 4
