"""Fused elementwise kernels (decomp/fused.py): the same values and gradients as the reference
formulas, eagerly and compiled, in every region of the readouts; and a decomposition with fusion
on follows the same losses as with fusion off."""

import math

import pytest
import torch

from vpd.decomp import fused
from vpd.decomp.adversary import PersistentAdversary
from vpd.decomp.config import PGDConfig
from vpd.decomp.losses import importance_minimality_loss
from vpd.decomp.masks import FlatLayout, source_mask
from vpd.decomp.sigmoids import lower_and_upper_leaky, lower_leaky, upper_leaky

# every region of both readouts: below 0, 0, inside, 1, above 1
Z = torch.tensor([[-2.0, -0.3, 0.0, 0.25, 0.5, 1.0, 1.5, 4.0]] * 2)
# upstream gradients of both signs, so the lower readout's leak (only for grad < 0) is exercised
G_LO = torch.tensor([[1.0, -2.0, -1.0, 3.0, -0.5, 2.0, -1.0, 1.0], [-1.0, 2.0, 1.0, -3.0, 0.5, -2.0, 1.0, -1.0]])
G_UP = torch.tensor([[0.5, 1.0, -1.0, 2.0, 1.0, -0.5, 3.0, -2.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])


@pytest.fixture
def fusion(request):
    fused.set_enabled(request.param)
    yield request.param
    fused.set_enabled(False)


def _readout_grads(fn_pair):
    z = Z.clone().requires_grad_(True)
    lo, up = fn_pair(z)
    torch.autograd.backward([lo, up], [G_LO, G_UP])
    return lo.detach(), up.detach(), z.grad


@pytest.mark.parametrize("fusion", [False, True], indirect=True)
def test_fused_readouts_match_the_two_sigmoids(fusion):
    lo, up, grad = _readout_grads(lambda z: lower_and_upper_leaky(z, 0.01))
    lo_ref, up_ref, grad_ref = _readout_grads(lambda z: (lower_leaky(z, 0.01), upper_leaky(z, 0.01)))
    assert torch.equal(lo, lo_ref) and torch.equal(up, up_ref)
    assert torch.allclose(grad, grad_ref, atol=1e-7)
    # hand-computed first row: lower passes (0,1], leaks 0.01*g for z<=0 only when g<0;
    # upper has slope 0 below 0, 1 on [0, 1], 0.01 above 1
    lower_part = [0.0, -0.02, -0.01, 3.0, -0.5, 2.0, 0.0, 0.0]
    upper_part = [0.0, 0.0, -1.0, 2.0, 1.0, -0.5, 0.03, -0.02]
    assert torch.allclose(grad[0], torch.tensor(lower_part) + torch.tensor(upper_part), atol=1e-7)


@pytest.mark.parametrize("fusion", [False, True], indirect=True)
def test_source_mask_values_and_gradients(fusion):
    g = torch.tensor([[0.0, 0.25, 1.0]], requires_grad=True)
    s = torch.tensor([[0.5, 0.5, 0.9]], requires_grad=True)
    m = source_mask(g, s)
    assert torch.allclose(m, torch.tensor([[0.5, 0.625, 1.0]]))
    m.backward(torch.tensor([[2.0, 1.0, 1.0]]))
    assert torch.allclose(g.grad, torch.tensor([[1.0, 0.5, 0.1]]))  # grad * (1 - s)
    assert torch.allclose(s.grad, torch.tensor([[2.0, 0.75, 0.0]]))  # grad * (1 - g)
    # sources only (the adversary's ascents): no gradient is formed for g
    g2, s2 = g.detach(), s.detach().requires_grad_(True)
    source_mask(g2, s2).sum().backward()
    assert torch.allclose(s2.grad, 1 - g2)


@pytest.mark.parametrize("fusion", [False, True], indirect=True)
def test_minimality_fused_equals_reference(fusion):
    g = torch.tensor([[0.0, 0.5, 1.2], [0.3, 0.0, 0.9]], requires_grad=True)
    loss = importance_minimality_loss({"a": g}, 1.5, 0.5)
    loss.backward()
    base = g.detach() + 1e-12
    s = base.pow(1.5).sum(0)
    ref = (s / 2 + 0.5 * (s / 2) * torch.log2(1 + s)).sum()
    assert torch.allclose(loss, ref, rtol=1e-6)
    # analytic: dL/ds_c = 1/N + β/N (log2(1+s) + s/((1+s) ln 2)); ds/dg = p (g+eps)^(p-1)
    dlds = 0.5 + 0.25 * (torch.log2(1 + s) + s / ((1 + s) * torch.log(torch.tensor(2.0))))
    assert torch.allclose(g.grad, dlds * 1.5 * base.pow(0.5), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fusion", [False, True], indirect=True)
def test_adversary_adam_step_fused_equals_eager(fusion):
    layout = FlatLayout(["a", "b"], [3, 2])
    cfg = PGDConfig(lr=0.1)
    grads = [torch.tensor([[[1.0, -1.0, 0.5, 0.0, 2.0]]]), torch.tensor([[[-0.5, 0.25]]])]

    def run(on: bool):
        fused.set_enabled(on)
        adv = PersistentAdversary(layout, (1, 1), cfg, generator=torch.Generator().manual_seed(0))
        for _ in range(3):
            adv.step(grads, 0.1)
        return adv.sources, torch.cat(adv.m, -1), torch.cat(adv.v, -1)

    ref = run(False)
    got = run(fusion)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-6)
    assert float(got[0].min()) >= 0.0 and float(got[0].max()) <= 1.0


def test_decomposition_with_fusion_follows_the_eager_losses():
    """Six steps of a small decomposition, fused vs eager: the same losses to float rounding."""
    from vpd.config import TargetModelConfig
    from vpd.decomp import DecompositionConfig, decompose
    from vpd.target.model import TargetLM

    def run(on: bool) -> list[dict]:
        torch.manual_seed(0)
        target = TargetLM(TargetModelConfig(n_layer=2, d_model=16, n_head=2, d_mlp=32, context=8, vocab_size=300))
        cfg = DecompositionConfig.from_dict(dict(
            matrices=[{"pattern": "h.*.attn.*", "C": 8}, {"pattern": "h.*.mlp.*", "C": 12}],
            ci_fn=dict(d_model=16, n_blocks=1, n_heads=2, d_mlp=32), steps=6, batch_size=2, seq_len=8,
            lr=3e-3, faithfulness_warmup_steps=5, eval_every=100, log_every=1, fused_kernels=on,
            pgd=dict(eval_steps=2, warmup_frac=0.5)))
        dec = decompose(target, lambda g: torch.randint(0, 300, (2, 8), generator=g), cfg, seed=2, progress=False)
        fused.set_enabled(False)
        return [r for r in dec.history if r["phase"] == "train"]

    eager, with_fusion = run(False), run(True)
    assert len(eager) == len(with_fusion) == 6
    for a, b in zip(eager, with_fusion):
        for key in ("stochastic_recon", "adversarial_recon", "importance_minimality", "total"):
            assert math.isclose(a[key], b[key], rel_tol=2e-4, abs_tol=1e-6), (key, a["step"], a[key], b[key])
        assert a["l0_total"] == b["l0_total"]


def test_a_kernel_that_cannot_compile_warns_and_runs_eagerly(monkeypatch, caplog):
    """No C++ compiler (or an unsupported backend): the first call warns and returns the eager
    result; the small kernels then all stay eager, a whole-model kernel only turns itself off."""
    def broken_compile(fn, **kw):
        def run(*args):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(fused, "_failed", False)  # restored after the test
    fused.set_enabled(True)
    try:
        model_graph = fused.kernel(lambda a: a + 1, fullgraph=False)
        with caplog.at_level("WARNING", logger="vpd"):
            assert torch.equal(model_graph(torch.ones(2)), torch.full((2,), 2.0))
        assert "could not be compiled" in caplog.text and model_graph.failed and fused.enabled()

        small = fused.kernel(lambda a: a * 3)
        assert torch.equal(small(torch.ones(2)), torch.full((2,), 3.0))
        assert not fused.enabled()  # every small kernel now runs eagerly
    finally:
        fused.set_enabled(False)


def _small_config(**kw):
    from vpd.decomp import DecompositionConfig

    return DecompositionConfig.from_dict(dict(matrices=[{"pattern": "h.*.mlp.*", "C": 4}], batch_size=2, seq_len=8,
                                              ci_fn=dict(d_model=16, n_blocks=1, n_heads=2, d_mlp=32), **kw))


@pytest.mark.parametrize("on, steps, min_steps, compiles", [(True, 600, 1000, False), (True, 999, 1000, False),
                                                            (True, 1000, 1000, True), (True, 4000, 1000, True),
                                                            (True, 5, 0, True), (False, 4000, 0, False)])
def test_only_runs_of_at_least_the_minimum_steps_compile(on, steps, min_steps, compiles):
    assert _small_config(fused_kernels=on, steps=steps, fused_kernels_min_steps=min_steps).compiles is compiles


@pytest.mark.parametrize("min_steps, expected", [(4, False), (3, True)])
def test_the_trainer_compiles_by_the_run_length(min_steps, expected):
    from vpd.config import TargetModelConfig
    from vpd.decomp import Decomposition
    from vpd.decomp.trainer import Trainer
    from vpd.target.model import TargetLM

    target = TargetLM(TargetModelConfig(n_layer=1, d_model=16, n_head=2, d_mlp=32, context=8, vocab_size=300))
    cfg = _small_config(fused_kernels=True, steps=3, fused_kernels_min_steps=min_steps)
    try:
        Trainer(Decomposition(target, cfg, seed=0), lambda g: torch.randint(0, 300, (2, 8), generator=g), progress=False)
        assert fused.enabled() is expected
    finally:
        fused.set_enabled(False)
