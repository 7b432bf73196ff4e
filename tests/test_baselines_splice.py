"""Splicing all MLPs at once: exact replacements reproduce the target's logits."""

import types

import pytest
import torch

from vpd.baselines.splice import (
    ModuleReplacement, TranscoderReplacement, ZeroReplacement, evaluate_splice, splice_logits,
)
from vpd.baselines.transcoders import Transcoder, capture_mlp_io, mlp_modules
from vpd.config import TargetModelConfig
from vpd.target.model import TargetLM

CFG = TargetModelConfig(n_layer=3, d_model=16, n_head=2, d_mlp=24, context=8, vocab_size=260)


def strong_target(seed=0, relu=False):
    """A tiny target whose MLPs matter (larger weights than the default init); optionally ReLU MLPs."""
    torch.manual_seed(seed)
    model = TargetLM(CFG).eval()
    with torch.no_grad():
        for block in model.h:
            block.mlp.c_fc.weight.normal_(0, 0.5)
            block.mlp.down_proj.weight.normal_(0, 0.5)
    if relu:
        for mlp in mlp_modules(model):
            mlp.forward = types.MethodType(lambda self, x: self.down_proj(torch.relu(self.c_fc(x))), mlp)
    return model


def idx(seed=1, B=3, T=8):
    return torch.randint(0, CFG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def relu_mlp_transcoder(model, kind):
    """A transcoder whose latents are the ReLU MLPs' hidden units, with unit-norm decoders.

    Latent c of layer i: encoder row c_fc[c] * n_c, decoder down_proj[:, c] / n_c (n_c its norm);
    ReLU(n z) = n ReLU(z) for n > 0, so the product is unchanged. CLT cross-layer decoders are 0.
    """
    n, d, h = CFG.n_layer, CFG.d_model, CFG.d_mlp
    tc = Transcoder(kind, n, d, d, n_latents=h, k=h)
    with torch.no_grad():
        for i, mlp in enumerate(mlp_modules(model)):
            W, D = mlp.c_fc.weight, mlp.down_proj.weight  # [h, d], [d, h]
            norms = D.norm(dim=0)  # [h]
            tc.W_enc[i].copy_((W * norms[:, None]).T)
            tc.W_dec[i].zero_()
            tc.W_dec[i][:, 0, :].copy_((D / norms[None, :]).T)
        tc.b_enc.zero_()
        tc.b_dec.zero_()
        tc.threshold.zero_()
    return tc


def test_module_replacement_is_exact_and_hooks_are_removed():
    model = strong_target()
    x = idx()
    with torch.no_grad():
        ref = model(x)
    out = splice_logits(model, ModuleReplacement(mlp_modules(model)), x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in mlp_modules(model))
    # zero ablation is not a no-op: the test model's MLPs matter
    zero = splice_logits(model, ZeroReplacement(CFG.n_layer), x)
    assert (zero - ref).abs().max() > 0.1


@pytest.mark.parametrize("kind", ["plt", "clt"])
@pytest.mark.parametrize("mode", ["threshold", "batchtopk"])
def test_transcoder_containing_relu_mlps_splices_exactly(kind, mode):
    model = strong_target(relu=True)
    tc = relu_mlp_transcoder(model, kind)
    for i in range(CFG.n_layer):
        assert torch.allclose(tc.decoder_norms(i), torch.ones(CFG.d_mlp), atol=1e-6)
    x = idx()
    with torch.no_grad():
        ref = model(x)
    out = splice_logits(model, TranscoderReplacement(tc, mode), x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    assert (splice_logits(model, ZeroReplacement(CFG.n_layer), x) - ref).abs().max() > 0.1  # non-trivial
    # L0 equals the MLP's own count of positive hidden units; active params use the method's costs
    windows = torch.cat([x, x[:, :1]], dim=1)  # [B, T + 1]
    res = evaluate_splice(model, TranscoderReplacement(tc, mode), windows, batch_size=2)
    assert res.ce_increase == pytest.approx(0.0, abs=1e-5) and res.kl == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad(), capture_mlp_io(model) as (ins, _):
        model(windows[:, :-1])
    active = [(mlp.c_fc(ins[i]) > 0).sum().item() / ins[i].shape[:-1].numel() for i, mlp in enumerate(mlp_modules(model))]
    d = CFG.d_model
    costs = [2 * d] * 3 if kind == "plt" else [d + 3 * d, d + 2 * d, d + d]
    assert res.latent_param_cost == costs
    assert res.active_params == pytest.approx(sum(a * c for a, c in zip(active, costs)))


def test_errors_propagate_through_the_residual():
    """A shift of layer 0's replacement output reaches the input that layer 1's replacement sees."""
    model = strong_target()
    seen = {}

    class Probe(ModuleReplacement):
        def __init__(self, modules, shift):
            super().__init__(modules)
            self.shift = shift

        def replace(self, layer, x):
            seen[(self.shift, layer)] = x.clone()
            y, a = super().replace(layer, x)
            return (y + self.shift if layer == 0 else y), a

    x = idx()
    splice_logits(model, Probe(mlp_modules(model), 0.0), x)
    shifted = splice_logits(model, Probe(mlp_modules(model), 1.0), x)
    with torch.no_grad(), capture_mlp_io(model) as (ins, _):
        ref = model(x)
    assert torch.equal(seen[(0.0, 1)], ins[1])  # unshifted: the clean input
    assert not torch.allclose(seen[(1.0, 1)], ins[1], atol=1e-3)
    assert not torch.allclose(shifted, ref, atol=1e-3)
