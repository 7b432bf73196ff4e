"""Hand-computed L0, alive and density."""


import pytest
import torch

from vpd.evaluate.metrics import (
    CIAccumulator, aggregate_layers, alive_per_matrix, density, l0_per_layer, l0_per_matrix, l0_total,
    split_name,
)


def hand_ci():
    # 2 tokens (B=1, T=2); matrix a: C=3, matrix b: C=2
    a = torch.tensor([[[0.0, 0.05, 1.0], [0.0, 0.6, 0.0]]])
    b = torch.tensor([[[0.2, 0.0], [0.0, 0.0]]])
    return {"h.0.mlp.c_fc": a, "h.1.mlp.down_proj": b}


def test_split_name():
    assert split_name("h.2.mlp.down_proj") == (2, "mlp.down_proj")
    assert split_name("embed") == (None, "embed")


def test_l0_alive_density_by_hand():
    ci = hand_ci()
    # CI > 0: token 1 has a:{1,2} b:{0} -> 3; token 2 has a:{1} -> 1; mean 2 (a 1.5, b 0.5)
    assert l0_per_matrix(ci) == {"h.0.mlp.c_fc": 1.5, "h.1.mlp.down_proj": 0.5}
    assert l0_total(ci) == 2.0
    assert l0_per_layer(ci) == {0: 1.5, 1: 0.5}
    # CI > 0.1: a {2}, {1}; b {0} -> mean (2 + 1) / 2
    assert l0_total(ci, 0.1) == 1.5
    assert l0_total(ci, 0.5) == 1.0
    # alive: mean CI a = [0, 0.325, 0.5], b = [0.1, 0] -> a 2 alive, b 1 alive
    assert alive_per_matrix(ci) == {"h.0.mlp.c_fc": 2, "h.1.mlp.down_proj": 1}
    assert density(ci) == pytest.approx(2.0 / 3)
    # a tiny mean CI counts as dead
    assert alive_per_matrix({"m": torch.tensor([[1e-7, 2e-6]])}) == {"m": 1}


def test_accumulator_over_batches_equals_one_pass():
    torch.manual_seed(0)
    ci = {"h.0.attn.q_proj": torch.rand(4, 5, 7).clamp(0.3, 1) - 0.3, "h.1.mlp.c_fc": torch.rand(4, 5, 3)}
    acc = CIAccumulator((0.0, 0.1))
    acc.update({n: g[:2] for n, g in ci.items()})
    acc.update({n: g[2:] for n, g in ci.items()})
    assert acc.n_tokens == 20
    for t in (0.0, 0.1):
        for n, v in l0_per_matrix(ci, t).items():
            assert acc.l0_per_matrix(t)[n] == pytest.approx(v)
    mt = acc.matrix_table()
    assert len(mt) == 4 and set(mt["threshold"]) == {0.0, 0.1}
    lt = aggregate_layers(mt)
    total = lt[(lt["layer"] == "all") & (lt["threshold"] == 0.0)].iloc[0]
    assert total["l0"] == pytest.approx(l0_total(ci)) and total["C"] == 10
    assert total["density"] == pytest.approx(total["l0"] / total["alive"])
