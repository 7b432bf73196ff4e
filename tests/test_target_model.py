"""The target LM: module names, no biases, tied embeddings, causality, RoPE, size, persistence."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from vpd.config import TargetModelConfig
from vpd.target.model import TargetLM, apply_rope, matrix_names, rope_tables

TINY = dict(n_layer=4, d_model=32, n_head=4, d_mlp=64, context=16, vocab_size=300)


def tiny(seed: int = 0, **overrides) -> TargetLM:
    torch.manual_seed(seed)
    return TargetLM(TargetModelConfig(**{**TINY, **overrides}))


def test_module_names_are_the_24_matrices():
    model = tiny()
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    expected = [
        f"h.{i}.{m}"
        for i in range(4)
        for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.c_fc", "mlp.down_proj")
    ]
    assert linears == expected == matrix_names(4)
    assert len(linears) == 24
    assert tuple(model.get_submodule("h.0.mlp.c_fc").weight.shape) == (64, 32)
    assert tuple(model.get_submodule("h.3.mlp.down_proj").weight.shape) == (32, 64)


def test_no_biases_and_tied_embeddings():
    model = tiny()
    assert all(getattr(m, "bias", None) is None for m in model.modules() if isinstance(m, nn.Linear))
    assert not any("bias" in name for name, _ in model.named_parameters())
    # One token matrix only: no separate unembedding parameter, and the logits use wte.
    vocab_shaped = [n for n, p in model.named_parameters() if model.cfg.vocab_size in p.shape]
    assert vocab_shaped == ["wte.weight"]
    idx = torch.randint(0, 300, (2, 8))
    with torch.no_grad():
        h, _ = model._trunk(idx, need_weights=False)
        assert torch.allclose(model(idx), h @ model.wte.weight.T, atol=1e-6)
    loss = model(idx).logsumexp(-1).sum()
    loss.backward()
    # Gradient reaches wte through the unembedding even for tokens not in the input.
    unused = torch.ones(300, dtype=torch.bool)
    unused[idx.flatten()] = False
    assert model.wte.weight.grad[unused].abs().sum() > 0


def test_init_std():
    model = TargetLM(TargetModelConfig(n_layer=2, d_model=256, n_head=4, d_mlp=1024, context=16, vocab_size=1000))
    assert model.get_submodule("h.0.attn.q_proj").weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.get_submodule("h.0.mlp.down_proj").weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert model.get_submodule("h.1.attn.o_proj").weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_causality():
    model = tiny().eval()
    idx = torch.randint(0, 300, (2, 16))
    changed = idx.clone()
    t = 9
    changed[:, t] = (idx[:, t] + 1) % 300
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t], b[:, t])


def test_rope_scores_depend_only_on_offset():
    hd, base = 16, 10000.0
    cos, sin = rope_tables(64, hd, base)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(hd, generator=g, dtype=torch.float32)
    k = torch.randn(hd, generator=g, dtype=torch.float32)

    def score(i: int, j: int) -> float:
        # Same q at position i, same k at position j; shape [1, 1, 1, hd] as in attention.
        qi = apply_rope(q.view(1, 1, 1, hd), cos[i : i + 1], sin[i : i + 1])
        kj = apply_rope(k.view(1, 1, 1, hd), cos[j : j + 1], sin[j : j + 1])
        return (qi * kj).sum().item()

    for offset in (0, 1, 5, 17):
        scores = [score(j + offset, j) for j in (0, 3, 20, 40)]
        assert max(scores) - min(scores) < 1e-4, (offset, scores)
    assert abs(score(5, 0) - score(6, 0)) > 1e-3  # the score does change with the offset
    # A rotation preserves norms.
    rotated = apply_rope(q.view(1, 1, 1, hd), cos[7:8], sin[7:8])
    assert rotated.norm().item() == pytest.approx(q.norm().item(), rel=1e-6)


def test_paper_config_size_on_meta_device():
    cfg = TargetModelConfig(n_layer=4, d_model=768, n_head=6, d_mlp=3072, context=512, vocab_size=50277)
    with torch.device("meta"):
        model = TargetLM(cfg)
    assert model.num_params(non_embedding=False) == pytest.approx(67e6, rel=0.01)
    assert model.num_params(non_embedding=True) == pytest.approx(28.3e6, rel=0.01)
    # 6N with N = block matrices + unembedding, plus the attention term.
    n = 4 * (4 * 768 * 768 + 2 * 768 * 3072) + 50277 * 768
    assert model.flops_per_token() == 6 * n + 12 * 4 * 512 * 768


def test_attention_patterns_match_forward():
    model = tiny().eval()
    idx = torch.randint(0, 300, (3, 12))
    logits, att = model.attention_patterns(idx)
    assert att.shape == (4, 3, 4, 12, 12)
    assert torch.allclose(att.sum(-1), torch.ones(4, 3, 4, 12), atol=1e-5)
    assert att.triu(diagonal=1).abs().max() == 0  # causal
    with torch.no_grad():
        assert torch.allclose(logits, model(idx), atol=1e-5)


def test_sequence_longer_than_context_errors():
    with pytest.raises(ValueError, match="exceeds the model's context 16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_save_and_load_round_trip(tmp_path):
    model = tiny(seed=3).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = TargetLM.from_pretrained(tmp_path).eval()
    assert loaded.cfg == model.cfg
    idx = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(idx), loaded(idx))


def test_load_with_mismatched_config_errors(tmp_path):
    tiny().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["d_mlp"] = 128
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model\.safetensors does not match .*config\.json.*h\.0\.mlp\.c_fc"):
        TargetLM.from_pretrained(tmp_path)
    cfg["n_layer"] = 5
    cfg["d_mlp"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"missing h\.4\."):
        TargetLM.from_pretrained(tmp_path)
    cfg["n_head"] = 5  # 32 does not split into 5 heads
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json is not a valid TargetModelConfig"):
        TargetLM.from_pretrained(tmp_path)


def test_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        TargetLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_matches_unfused(dtype, monkeypatch):
    """forward(idx, targets) equals cross_entropy(forward(idx)) in value and in every gradient."""
    import vpd.target.loss as loss_mod

    monkeypatch.setattr(loss_mod, "CHUNK_BYTES", 7 * 4 * 300)  # 7 rows per chunk: several chunks + a remainder
    idx, targets = torch.randint(0, 300, (3, 16)), torch.randint(0, 300, (3, 16))
    grads, losses = [], []
    for fused in (True, False):
        model = tiny(seed=1)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            if fused:
                loss = model(idx, targets=targets)
            else:
                loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    # Relative gradient error: fp32 rounding only; bf16 rounds the logit gradient once more (~2e-3 seen).
    loss_tol, grad_tol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-3, 1e-2)
    assert losses[0] == pytest.approx(losses[1], abs=loss_tol)
    for name in grads[0]:
        a, b = grads[0][name], grads[1][name]
        assert (a - b).norm() <= grad_tol * b.norm(), name
    with torch.no_grad():  # the no-grad path (evaluation) gives the same value
        assert tiny(seed=1)(idx, targets=targets).item() == pytest.approx(losses[1], abs=loss_tol)
