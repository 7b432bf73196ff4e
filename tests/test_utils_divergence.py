"""KL and cross-entropy, the output comparisons every stage uses, against hand-computed values."""

import math

import pytest
import torch

from vpd.utils.divergence import KLTarget, ce_per_token, kl_per_token, next_token_ce


def test_kl_and_ce():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert kl_per_token(logits, logits).item() == 0.0
    # KL(p || uniform) = log V - H(p)
    p = torch.softmax(logits, -1)
    expected = math.log(3) + (p * p.log()).sum().item()
    assert kl_per_token(logits, torch.zeros(1, 3)).item() == pytest.approx(expected, rel=1e-6)
    assert ce_per_token(torch.zeros(2, 4), torch.tensor([1, 3])).tolist() == pytest.approx([math.log(4)] * 2)


def test_kl_hand_computed():
    target = torch.zeros(2, 2, 2)  # p = [1/2, 1/2] everywhere
    pred = torch.zeros(2, 2, 2)
    pred[0, 0, 1] = math.log(3.0)  # q = [1/4, 3/4] at two of the four positions
    pred[1, 1, 1] = math.log(3.0)
    # KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3) at those positions, 0 elsewhere; mean over 4
    assert KLTarget(target)(pred).item() == pytest.approx(0.25 * math.log(4 / 3), rel=1e-6)
    assert KLTarget(target)(target).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_target_rows_and_log_probabilities():
    target = torch.zeros(3, 2)  # p = [1/2, 1/2] at each of 3 positions
    target[2, 0] = math.log(3.0)  # p = [3/4, 1/4] at the last
    kl = KLTarget(target)
    log_q = torch.log(torch.tensor([[0.25, 0.75]]))
    # rows 0 and 2 against q = [1/4, 3/4]: 1/2 ln(4/3) and 3/4 ln 3 + 1/4 ln(1/3) = 1/2 ln 3
    expected = [0.5 * math.log(4 / 3), 0.5 * math.log(3)]
    assert kl[torch.tensor([0, 2])].per_token_log_q(log_q).tolist() == pytest.approx(expected, rel=1e-6)
    assert kl[2].per_token(torch.tensor([0.0, math.log(3.0)])).item() == pytest.approx(expected[1], rel=1e-6)


def test_kl_target_gradient_flows_through_q_only():
    p_logits = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    q_logits = torch.zeros(1, 3, requires_grad=True)
    KLTarget(p_logits)(q_logits).backward()
    assert p_logits.grad is None
    # d KL / d q_logits = softmax(q) - p
    p = torch.softmax(p_logits.detach(), -1)
    assert q_logits.grad == pytest.approx(torch.full((1, 3), 1 / 3) - p, abs=1e-6)


def test_next_token_ce_pairs_each_position_with_the_next_id():
    logits = torch.full((1, 3, 4), -1e4)
    logits[0, 0, 2] = 0.0  # position 0 predicts id 2 with certainty
    logits[0, 1, 1] = 0.0  # position 1 predicts id 1 with certainty
    assert next_token_ce(logits, torch.tensor([[0, 2, 1]])).item() == pytest.approx(0.0, abs=1e-6)
    # predicting the wrong ids costs 1e4 nats at each of the two positions
    assert next_token_ce(logits, torch.tensor([[0, 1, 2]])).item() == pytest.approx(1e4, rel=1e-4)
