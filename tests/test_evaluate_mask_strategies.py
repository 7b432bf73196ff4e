"""Mask strategies and the PGD eval against a hand-written fake decomposition.

The fake: a 2-matrix linear LM, logits = ((E[idx] W1^T) W2^T), with W = (V U)^T + Δ per matrix,
CIs looked up per token from fixed tables, and the masked forward of the method doc:
y = ((x V) * m) U + m_Δ (x Δ^T). Small enough that the outputs can be written down by hand.
"""

import math

import pandas as pd
import pytest
import torch
import torch.nn as nn

from vpd.evaluate.mask_strategies import (
    evaluate_masks, evaluate_pgd, fixed_source, pgd_attack, restrict, rounded_name, source_name, standard_strategies,
    summarise_pgd,
)

NAMES = ("h.0.mlp.c_fc", "h.0.mlp.down_proj")


class FakeTarget(nn.Module):
    def __init__(self, E, W1, W2):
        super().__init__()
        self.E, self.W1, self.W2 = nn.Parameter(E), nn.Parameter(W1), nn.Parameter(W2)

    def forward(self, idx):
        return (self.E[idx] @ self.W1.T) @ self.W2.T


class FakeDecomposition:
    def __init__(self, target, comps, ci_tables):
        self.target, self.comps, self.ci_tables = target, comps, ci_tables  # comps: name -> (V, U)
        self.names = list(NAMES)

    def delta(self, name):
        W = self.target.W1 if name == NAMES[0] else self.target.W2
        V, U = self.comps[name]
        return W.detach() - (V @ U).T

    def ci(self, batch):
        return {n: self.ci_tables[n][batch] for n in self.names}

    def _matrix(self, name, x, masks, dmasks):
        W = self.target.W1 if name == NAMES[0] else self.target.W2
        if name not in masks:
            return x @ W.detach().T
        V, U = self.comps[name]
        dm = torch.zeros(x.shape[:-1]) if dmasks is None or name not in dmasks else dmasks[name]
        return ((x @ V) * masks[name]) @ U + dm.unsqueeze(-1) * (x @ self.delta(name).T)

    def masked_forward(self, batch, masks, delta_masks=None):
        h = self._matrix(NAMES[0], self.target.E.detach()[batch], masks, delta_masks)
        return self._matrix(NAMES[1], h, masks, delta_masks)


def hand_fake(delta=0.0):
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 3 tokens, d = 2
    V1, U1 = torch.eye(2), torch.eye(2)
    V2, U2 = torch.eye(2), torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # logits [2,0,0] / [0,0,2]
    W1 = (V1 @ U1).T + torch.tensor([[0.0, delta], [0.0, 0.0]])
    W2 = (V2 @ U2).T
    ci = {
        NAMES[0]: torch.tensor([[1.0, 0.0], [0.3, 0.7], [0.7, 0.05]]),
        NAMES[1]: torch.tensor([[0.6, 0.0], [0.0, 1.0], [0.2, 0.9]]),
    }
    target = FakeTarget(E, W1, W2)
    return target, FakeDecomposition(target, {NAMES[0]: (V1, U1), NAMES[1]: (V2, U2)}, ci)


WINDOWS = torch.tensor([[0, 1, 2, 0]])  # inputs 0,1,2 -> next tokens 1,2,0


def kl_to_uniform(logits):
    p = torch.softmax(logits, -1)
    return math.log(len(logits)) + (p * p.log()).sum().item()


def kl(p_logits, q_logits):
    p, lq = torch.softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    return (p * (p.log() - lq)).sum().item()


def run(decomp, target, strategies=None, seed=0):
    table, acc = evaluate_masks(decomp, target, WINDOWS, strategies or standard_strategies(), batch_size=1, seed=seed)
    return table.set_index("strategy"), acc


def test_strategies_by_hand():
    target, decomp = hand_fake()
    t, acc = run(decomp, target)
    tl = torch.tensor([[2.0, 0, 0], [0, 0, 2.0], [2.0, 0, 2.0]])  # target logits at positions 0..2
    y = [1, 2, 0]
    target_ce = sum(-torch.log_softmax(tl[i], -1)[y[i]].item() for i in range(3)) / 3
    assert t.loc["target", "ce"] == pytest.approx(target_ce, abs=1e-6)
    # Δ = 0 here, so all-ones masks are the target exactly, and so is CI > 0 (see tables)
    assert t.loc["unmasked", "kl"] == 0.0 and t.loc["rounded_ci>0", "kl"] == 0.0
    assert t.loc["unmasked", "ce"] == pytest.approx(target_ce, abs=1e-6)
    # zero masks: logits 0 everywhere -> CE = log 3, KL = mean KL(p_target || uniform)
    assert t.loc["zero", "ce"] == pytest.approx(math.log(3), abs=1e-6)
    assert t.loc["zero", "kl"] == pytest.approx(sum(kl_to_uniform(tl[i]) for i in range(3)) / 3, abs=1e-6)
    # CI > 0.5: positions 0, 1 reproduce the target; position 2 keeps c_fc:0 and down_proj:1 -> logits 0
    assert t.loc["rounded_ci>0.5", "kl"] == pytest.approx(kl_to_uniform(tl[2]) / 3, abs=1e-6)
    # CI as masks at position 2: h = [0.7, 0.05] -> [0.14, 0.045] -> logits [0.28, 0, 0.09]
    ci_logits = [torch.tensor([2.0 * 0.6, 0, 0]), torch.tensor([0, 0, 2 * 0.7]), torch.tensor([0.28, 0, 0.09])]
    expected = sum(kl(tl[i], ci_logits[i]) for i in range(3)) / 3
    assert t.loc["ci_as_masks", "kl"] == pytest.approx(expected, abs=1e-6)
    # L0 over the 3 tokens (CI > 0): c_fc 1 + 2 + 2, down_proj 1 + 1 + 2
    assert acc.l0_per_matrix(0.0) == {NAMES[0]: pytest.approx(5 / 3), NAMES[1]: pytest.approx(4 / 3)}
    assert set(t.index) == {"target", "unmasked", "stochastic", "rounded_ci>0", "rounded_ci>0.1", "rounded_ci>0.5",
                            "ci_as_masks", "random", "zero", "stochastic_with_delta"}


def test_delta_excluded_except_stochastic_with_delta():
    target, decomp = hand_fake(delta=0.5)
    t, _ = run(decomp, target)
    assert t.loc["unmasked", "kl"] > 0  # Δ dropped
    # only stochastic_with_delta lets Δ back in, so it differs from stochastic
    assert t.loc["stochastic_with_delta", "kl"] != pytest.approx(t.loc["stochastic", "kl"])


def test_fixed_source_masks_by_hand():
    ci = {"a": torch.tensor([[[0.2, 0.6]]]), "b": torch.tensor([[[1.0, 0.0, 0.5]]])}
    masks, dmasks = fixed_source(0.5)(ci, torch.Generator())
    assert masks["a"].flatten().tolist() == pytest.approx([0.6, 0.8])
    assert masks["b"].flatten().tolist() == pytest.approx([1.0, 0.5, 0.75])
    assert dmasks["a"].tolist() == [[0.5]] and dmasks["b"].shape == (1, 1)
    # r = 0 is CI as masks without Δ; r = 1 is everything on, Δ included: the target's weights
    target, decomp = hand_fake(delta=0.5)
    t, _ = run(decomp, target, strategies={**standard_strategies(), source_name(0): fixed_source(0.0),
                                           source_name(1): fixed_source(1.0)})
    assert t.loc["source_0", "kl"] == pytest.approx(t.loc["ci_as_masks", "kl"], abs=1e-7)
    assert t.loc["source_1", "kl"] == pytest.approx(0.0, abs=1e-7)
    assert t.loc["source_1", "ce"] == pytest.approx(t.loc["target", "ce"], abs=1e-6)
    assert t.loc["unmasked", "kl"] > 1e-3  # while all-ones masks without Δ are not the target


def test_seeded_and_restricted():
    target, decomp = hand_fake(delta=0.5)
    a, _ = run(decomp, target, seed=3)
    b, _ = run(decomp, target, seed=3)
    pd.testing.assert_frame_equal(a, b)
    # zero masks on down_proj only, c_fc original: logits 0 again
    only = {"zero_down": restrict(standard_strategies()["zero"], lambda n: n.endswith("down_proj"))}
    t, _ = run(decomp, target, only)
    assert t.loc["zero_down", "ce"] == pytest.approx(math.log(3), abs=1e-6)
    # rounded CI>0 on c_fc only with Δ(c_fc) dropped differs from the target; on nothing it equals it
    none = {"none": restrict(standard_strategies()[rounded_name(0.0)], lambda n: False)}
    assert run(decomp, target, none)[0].loc["none", "kl"] == 0.0


def random_fake(seed=0, n_tok=6, d=4, C=6):
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(n_tok, d, generator=g)
    V1, U1 = torch.randn(d, C, generator=g) / 2, torch.randn(C, d, generator=g) / 2
    V2, U2 = torch.randn(d, C, generator=g) / 2, torch.randn(C, n_tok, generator=g)
    W1 = (V1 @ U1).T + 0.1 * torch.randn(d, d, generator=g)
    W2 = (V2 @ U2).T + 0.1 * torch.randn(n_tok, d, generator=g)
    ci = {NAMES[0]: torch.rand(n_tok, C, generator=g) * (torch.rand(n_tok, C, generator=g) > 0.5),
          NAMES[1]: torch.rand(n_tok, C, generator=g) * (torch.rand(n_tok, C, generator=g) > 0.5)}
    target = FakeTarget(E, W1, W2)
    return target, FakeDecomposition(target, {NAMES[0]: (V1, U1), NAMES[1]: (V2, U2)}, ci)


def test_pgd_cannot_move_fully_important_exact_decomposition():
    target, decomp = hand_fake()
    decomp.ci_tables = {n: torch.ones_like(t) for n, t in decomp.ci_tables.items()}
    x = WINDOWS[:, :-1]
    out = pgd_attack(decomp, x, target(x), steps=(0, 20), generator=torch.Generator().manual_seed(0))
    assert out == {0: 0.0, 20: 0.0}


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_pgd_increases_and_beats_stochastic(one_thread):
    steps = (20, 40, 80, 160, 320)  # the paper's list, one continuous attack per batch
    pgd_means, stoch = [], []
    for seed in range(3):
        target, decomp = random_fake(seed)
        windows = torch.randint(0, 6, (4, 9), generator=torch.Generator().manual_seed(seed))
        per_batch = evaluate_pgd(decomp, target, windows, batch_size=2, n_batches=2, steps=steps, seed=seed)
        assert len(per_batch) == 2 * len(steps)
        for _, g in per_batch.groupby("batch"):
            kls = g.sort_values("steps")["kl"].tolist()
            assert all(b >= a - 1e-6 for a, b in zip(kls, kls[1:])), kls
        table, _ = evaluate_masks(decomp, target, windows[:4], standard_strategies(), batch_size=2, seed=seed)
        zero_kl = float(table.set_index("strategy").loc["zero", "kl"])
        summary = summarise_pgd(per_batch, zero_kl)
        assert summary["steps"].tolist() == [str(s) for s in steps] + ["zero_ablation"]
        pgd_means.append(summary["kl_mean"].iloc[0])  # after 20 steps
        stoch.append(float(table.set_index("strategy").loc["stochastic_with_delta", "kl"]))
    assert sum(pgd_means) / 3 >= sum(stoch) / 3
