"""Persistent adversary: sources stay in [0, 1], only sources move in ascents, ascent raises the KL."""

import pytest
import torch

from vpd.config import TargetModelConfig
from vpd.decomp import Decomposition, DecompositionConfig
from vpd.decomp.adversary import PersistentAdversary, pgd_attack
from vpd.utils.divergence import KLTarget
from vpd.decomp.masks import stochastic_masks_flat
from vpd.decomp.trainer import Trainer
from vpd.target.model import TargetLM


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: tests stay fast when other jobs share the cores (OpenMP spin-waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    target = TargetLM(TargetModelConfig(n_layer=2, d_model=16, n_head=2, d_mlp=32, context=8, vocab_size=300))
    cfg = DecompositionConfig.from_dict(dict(
        matrices=[{"pattern": "h.*.attn.*", "C": 8}, {"pattern": "h.*.mlp.*", "C": 12}],
        ci_fn=dict(d_model=16, n_blocks=1, n_heads=2, d_mlp=32), steps=10, batch_size=4, seq_len=8,
        faithfulness_warmup_steps=100))
    dec = Decomposition(target, cfg)
    Trainer(dec, lambda g: None, progress=False).faithfulness_warmup()
    ids = torch.randint(0, 300, (4, 8), generator=torch.Generator().manual_seed(2))
    return dec, ids


def _loss_fn(dec, ids, clean):
    return lambda m, d: KLTarget(clean)(dec.masked_forward_flat(ids, m, d, detach_components=True))


def _flat_ci(dec, ids):
    clean, inputs = dec.matrix_inputs(ids)
    lower, _ = dec.ci_flat_from_inputs(inputs)  # [B, T, ΣC], with grad to the CI function
    return clean, lower


def test_sources_stay_in_unit_interval(setup):
    dec, ids = setup
    clean, ci = _flat_ci(dec, ids)
    adv = PersistentAdversary(dec.layout, (4, 8), dec.config.pgd, torch.Generator().manual_seed(0))
    for _ in range(5):
        adv.ascend(_loss_fn(dec, ids, clean), ci, lr=0.5)  # a large lr pushes many sources to the bounds
    flat = adv.sources
    assert flat.min().item() >= 0.0 and flat.max().item() <= 1.0
    assert (flat == 0).float().mean().item() > 0.05 and (flat == 1).float().mean().item() > 0.05
    assert adv.t == 5 and not flat.requires_grad
    assert flat.shape == (4, 8, 8 * 8 + 4 * 12 + 12)  # ΣC + one Δ channel per matrix (12 matrices)
    assert adv.per_matrix()["h.0.attn.q_proj"].shape == (4, 8, 9)  # C + 1 (Δ channel)


def test_only_sources_move_during_ascents(setup):
    dec, ids = setup
    clean, ci = _flat_ci(dec, ids)  # with grad to the CI function, as in training
    for p in dec.parameters():
        p.grad = None
    params = {id(p): p.detach().clone() for p in dec.parameters()}
    tparams = {k: v.clone() for k, v in dec.target.state_dict().items()}
    adv = PersistentAdversary(dec.layout, (4, 8), dec.config.pgd, torch.Generator().manual_seed(0))
    src0 = adv.sources.clone()
    for _ in range(2):
        adv.ascend(_loss_fn(dec, ids, clean), ci, lr=0.01)
    assert all(p.grad is None for p in dec.parameters())  # no parameter gradient was even computed
    assert all(torch.equal(p, params[id(p)]) for p in dec.parameters())
    assert all(torch.equal(v, tparams[k]) for k, v in dec.target.state_dict().items())
    moved = (adv.sources - src0).abs().sum().item()
    assert moved > 1.0


def test_adversarial_kl_not_below_stochastic_after_ascent(setup):
    dec, ids = setup
    clean, ci = _flat_ci(dec, ids)
    ci = ci.detach()
    adv = PersistentAdversary(dec.layout, (4, 8), dec.config.pgd, torch.Generator().manual_seed(0))
    loss_fn = _loss_fn(dec, ids, clean)
    with torch.no_grad():
        before = loss_fn(*adv.masks(ci, requires_grad=False)).item()
    for _ in range(10):
        adv.ascend(loss_fn, ci, lr=0.05)
    with torch.no_grad():
        after = loss_fn(*adv.masks(ci, requires_grad=False)).item()
        gen = torch.Generator().manual_seed(9)
        stoch = sum(loss_fn(*stochastic_masks_flat(ci, dec.layout, gen, "all")).item() for _ in range(8)) / 8
    adv.release()
    assert after > before
    assert after >= stoch, (after, stoch)
    pgd = pgd_attack(loss_fn, ci, dec.layout.L, n_steps=10, step_size=0.1, generator=torch.Generator().manual_seed(0))
    assert pgd >= stoch
