"""Masked forward, routing, wrapping and persistence of the components."""

import pytest
import torch

from vpd.config import TargetModelConfig
from vpd.decomp import Decomposition, DecompositionConfig
from vpd.decomp.masks import stochastic_masks, uniform_k_subset_routing
from vpd.decomp.trainer import Trainer
from vpd.target.model import TargetLM


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: tests stay fast when other jobs share the cores (OpenMP spin-waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_target(seed=0):
    torch.manual_seed(seed)
    return TargetLM(TargetModelConfig(n_layer=2, d_model=16, n_head=2, d_mlp=32, context=8, vocab_size=300))


def tiny_config(**kw):
    d = dict(matrices=[{"pattern": "h.*.attn.*", "C": 8}, {"pattern": "h.*.mlp.*", "C": 12}],
             ci_fn=dict(d_model=16, n_blocks=1, n_heads=2, d_mlp=32), steps=4, batch_size=2, seq_len=8)
    d.update(kw)
    return DecompositionConfig.from_dict(d)


IDS = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(1))


def test_all_ones_with_delta_equals_target():
    target = tiny_target()
    dec = Decomposition(target, tiny_config())
    clean = dec.target_forward(IDS)
    ones = {n: torch.ones(2, 8, c) for n, c in dec.C.items()}
    out = dec.masked_forward(IDS, ones, {n: 1.0 for n in dec.names})
    assert (out - clean).abs().max().item() < 1e-5
    # with random V, U the components alone are far from W: excluding Δ changes the logits
    assert (dec.masked_forward(IDS, ones) - clean).abs().max().item() > 1e-2


def test_masked_forward_matches_explicit_formula():
    """y = ((xV)*m)U + m_Δ (x Δ^T), with Δ formed explicitly, equals the hook's rewrite."""
    target = tiny_target()
    dec = Decomposition(target, tiny_config())
    g = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(2, 8, c, generator=g) for n, c in dec.C.items()}
    dmasks = {n: torch.rand(2, 8, generator=g) for n in dec.names}
    got = dec.masked_forward(IDS, masks, dmasks)
    # explicit version: swap each Linear's forward for the textbook formula
    originals = {}
    for n in dec.names:
        lin = dec.comps[n].linear
        V, U, D = dec.comps[n].V.detach(), dec.comps[n].U.detach(), dec.delta(n)
        originals[n] = lin.forward
        lin.forward = lambda x, V=V, U=U, D=D, m=masks[n], md=dmasks[n]: ((x @ V) * m) @ U + md[..., None] * (x @ D.T)
    try:
        with torch.no_grad():
            ref = target(IDS)
    finally:
        for n, f in originals.items():
            del dec.comps[n].linear.forward
    assert (got - ref).abs().max().item() < 1e-5


def test_delta_excluded_gap_bounded_by_faithfulness():
    """With C >= rank and V, U fitted by the warm-up, dropping Δ moves logits by O(sqrt(Δ-L2))."""
    target = tiny_target()
    cfg = tiny_config(matrices=[{"pattern": "h.*", "C": 32}], faithfulness_warmup_steps=300, faithfulness_warmup_lr=3e-3)
    dec = Decomposition(target, cfg)
    clean = dec.target_forward(IDS)
    ones = {n: torch.ones(2, 8, c) for n, c in dec.C.items()}
    gaps = []
    for _ in range(2):
        Trainer(dec, lambda g: IDS, progress=False).faithfulness_warmup()
        faith = sum(dec.delta(n).pow(2).sum() for n in dec.names) / sum(dec.delta(n).numel() for n in dec.names)
        gap = (dec.masked_forward(IDS, ones) - clean).abs().max().item()
        gaps.append((faith.item(), gap))
    (f1, g1), (f2, g2) = gaps
    assert f2 < f1 < 1e-3
    assert g2 < g1
    for f, gap in gaps:
        assert gap < 25 * f**0.5, (f, gap)  # measured ratio gap / sqrt(Δ-L2) is 8-11 here


def test_target_weights_frozen_and_hooks_removed():
    target = tiny_target()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    dec = Decomposition(target, tiny_config(faithfulness_warmup_steps=3, eval_every=2))
    Trainer(dec, lambda g: torch.randint(0, 300, (2, 8), generator=g), progress=False).run()
    assert all(not p.requires_grad for p in target.parameters())
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m.linear._forward_hooks for m in dec.comps.mats)
    assert dec.comps["h.0.attn.q_proj"].V.grad is not None  # the components did train


def test_pattern_matching_nothing_lists_names():
    with pytest.raises(ValueError, match=r"'h\.\*\.mlp\.up' matches no nn\.Linear.*h\.0\.mlp\.c_fc"):
        Decomposition(tiny_target(), tiny_config(matrices=[{"pattern": "h.*.mlp.up", "C": 4}]))


def test_routing_counts_and_uniform_k():
    names = ["a", "b", "c", "d"]
    routed = uniform_k_subset_routing(names, (4000,), torch.Generator().manual_seed(0), torch.device("cpu"))
    k = torch.stack([routed[n] for n in names]).sum(0)  # [4000]
    assert int(k.min()) >= 1 and int(k.max()) <= 4
    counts = torch.bincount(k, minlength=5)[1:].float()  # expected 1000 each
    assert (counts - 1000).abs().max().item() < 120, counts.tolist()
    # each matrix is routed with probability E[k]/L = 2.5/4
    for n in names:
        assert abs(routed[n].float().mean().item() - 0.625) < 0.03


def test_stochastic_masks_respect_ci_and_routing():
    g = torch.Generator().manual_seed(0)
    ci = {"a": torch.rand(50, 8, 3, generator=g), "b": torch.rand(50, 8, 5, generator=g)}
    masks, dmasks = stochastic_masks(ci, torch.Generator().manual_seed(1))
    for n in ci:
        assert bool((masks[n] >= ci[n] - 1e-7).all()) and bool((masks[n] <= 1).all())
    # an unrouted position has m = 1 and m_Δ = 1 on every channel (original weight, exactly)
    unrouted = {n: (masks[n] == 1).all(-1) & (dmasks[n] == 1) for n in ci}
    frac = sum(u.float().mean().item() for u in unrouted.values()) / 2
    assert abs(frac - 0.25) < 0.06  # L = 2: k = 1 half the time, then one of two matrices is unrouted
    assert not bool((unrouted["a"] & unrouted["b"]).any())  # at least one matrix routed everywhere


def test_save_load_roundtrip_and_mismatch(tmp_path):
    dec = Decomposition(tiny_target(), tiny_config(), seed=5)
    with torch.no_grad():
        dec.comps["h.1.mlp.c_fc"].V.mul_(2)
    dec.save(tmp_path)
    dec2 = Decomposition.load(tmp_path, tiny_target())
    for n in dec.names:
        assert torch.equal(dec.components(n)[0], dec2.components(n)[0])
    c1, c2 = dec.ci(IDS), dec2.ci(IDS)
    assert all(torch.equal(c1[n], c2[n]) for n in dec.names)
    assert Decomposition.subcomponent_name("h.2.mlp.down_proj", 2359) == "2.mlp.down_proj:2359"
    other = TargetLM(TargetModelConfig(n_layer=2, d_model=16, n_head=2, d_mlp=48, context=8, vocab_size=300))
    with pytest.raises(ValueError, match=r"h\.0\.mlp\.c_fc: saved \(32, 16\), target \(48, 16\)"):
        Decomposition.load(tmp_path, other)
