"""Every loss term against hand-computed values on tiny tensors (2 matrices, C=3, B=T=2)."""

import math

import pytest
import torch
import torch.nn as nn

from vpd.decomp.components import MatrixComponents
from vpd.decomp.losses import (
    anneal_p,
    cosine_lr,
    faithfulness_loss,
    importance_minimality_loss,
    mse_output_loss,
    warmup_lr,
)

L2_3 = math.log2(3.0)

# CI (upper-leaky) of two matrices, shape [B=2, T=2, C=3]
G_A = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 0.0, 0.5]], [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
G_B = torch.tensor([[[1.0, 0.5, 0.0], [1.0, 0.0, 0.0]], [[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]])


def test_faithfulness_hand_computed():
    lin_a = nn.Linear(2, 2, bias=False)  # W_A = [[1, 2], [3, 4]]
    lin_b = nn.Linear(2, 3, bias=False)  # W_B = [[1, 1], [0, 0], [0, 2]]
    with torch.no_grad():
        lin_a.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        lin_b.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 2.0]]))
    a, b = MatrixComponents("a", lin_a, 3), MatrixComponents("b", lin_b, 3)
    with torch.no_grad():
        a.V.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        a.U.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))  # (VU)^T = [[1, 3], [2, 4]]
        b.V.zero_()
    # Δ_A = [[0, -1], [1, 0]] (sum of squares 2); Δ_B = W_B (sum of squares 6); 10 parameters
    assert torch.equal(a.delta(), torch.tensor([[0.0, -1.0], [1.0, 0.0]]))
    assert faithfulness_loss([a.delta(), b.delta()]).item() == pytest.approx(0.8, abs=1e-7)


def test_importance_minimality_p2_hand_computed():
    # A, p=2: s = [2, 0, 0.5], N = 4 -> (0.5 + 0.25 log2 3) + 0 + (0.125 + 0.0625 log2 1.5)
    exp_a = 0.5 + 0.25 * L2_3 + 0.125 + 0.0625 * math.log2(1.5)
    # B, p=2: s = [2, 0.5, 0] -> same numbers, permuted
    exp_b = exp_a
    got = importance_minimality_loss({"a": G_A, "b": G_B}, p=2.0, beta=0.5, eps=0.0)
    assert got.item() == pytest.approx(exp_a + exp_b, rel=1e-6)
    assert exp_a + exp_b == pytest.approx(2.1156016, abs=1e-6)


def test_importance_minimality_p1_frequency_and_world_size():
    # B, p=1: s = [2, 1, 0], mean = [0.5, 0.25, 0]
    exp = (0.5 + 0.25 * L2_3) + (0.25 + 0.125 * 1.0)
    got = importance_minimality_loss({"b": G_B}, p=1.0, beta=0.5, eps=0.0)
    assert got.item() == pytest.approx(exp, rel=1e-6) and exp == pytest.approx(1.2712406, abs=1e-6)
    # beta = 0 leaves only the importance part: sum of means = 0.75
    assert importance_minimality_loss({"b": G_B}, p=1.0, beta=0.0, eps=0.0).item() == pytest.approx(0.75)
    # world_size 2 scales the sum inside the log: log2(1 + 2 s)
    exp_ws = (0.5 + 0.25 * math.log2(5)) + (0.25 + 0.125 * L2_3)
    got_ws = importance_minimality_loss({"b": G_B}, p=1.0, beta=0.5, eps=0.0, world_size=2)
    assert got_ws.item() == pytest.approx(exp_ws, rel=1e-6)
    # the default eps (1e-12) changes nothing visible at these values
    assert importance_minimality_loss({"b": G_B}, p=1.0, beta=0.5).item() == pytest.approx(exp, rel=1e-6)


def test_p_anneal_and_loss_at_annealed_p():
    assert anneal_p(0, 5, 2.0, 0.4) == 2.0
    assert anneal_p(4, 5, 2.0, 0.4) == pytest.approx(0.4)
    p_mid = anneal_p(2, 5, 2.0, 0.4)
    assert p_mid == pytest.approx(1.2)
    # B at p = 1.2: s = [2, 2 * 0.5^1.2, 0]
    s1 = 2 * 0.5**1.2
    exp = (0.5 + 0.25 * L2_3) + (s1 / 4 + 0.5 * (s1 / 4) * math.log2(1 + s1))
    got = importance_minimality_loss({"b": G_B}, p=p_mid, beta=0.5, eps=0.0)
    assert got.item() == pytest.approx(exp, rel=1e-6)


def test_mse_and_schedules():
    assert mse_output_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])).item() == pytest.approx(2.5)
    assert cosine_lr(0, 11, 1.0, 0.1) == 1.0
    assert cosine_lr(5, 11, 1.0, 0.1) == pytest.approx(0.55)
    assert cosine_lr(10, 11, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_lr(0, 100, 0.01, 0.1) == 0.0
    assert warmup_lr(5, 100, 0.01, 0.1) == pytest.approx(0.005)
    assert warmup_lr(50, 100, 0.01, 0.1) == 0.01


def test_importance_minimality_gradient_matches_textbook_autograd():
    """The fused power-sum backward equals autograd of the plain expression, at every p."""
    g = torch.rand(4, 5, 7, generator=torch.Generator().manual_seed(0)).clamp_min(0.05)
    g[0, 0, :3] = 0.0  # exact zeros (the eps keeps the power finite)
    for p in (2.0, 1.2, 0.4):
        g1, g2 = g.clone().requires_grad_(), g.clone().requires_grad_()
        s = (g2 + 1e-12).pow(p).reshape(-1, 7).sum(0)
        ref = (s / 20 + 0.5 * (s / 20) * torch.log2(1 + s)).sum()
        ref.backward()
        out = importance_minimality_loss({"a": g1}, p, beta=0.5, eps=1e-12)
        out.backward()
        assert out.item() == pytest.approx(ref.item(), rel=1e-6)
        assert torch.allclose(g1.grad, g2.grad, rtol=1e-5, atol=0)
