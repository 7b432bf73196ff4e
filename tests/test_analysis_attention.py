"""q/k pair scores: a hand-built attention layer that attends to the previous token scores highest at
offset 1; per-head norms; the one-position ablation removes exactly that subcomponent's effect."""

import pytest
import torch

from vpd.analysis.attention import (
    ablated_attention_by_offset,
    attention_by_offset,
    pair_scores,
    qk_head_norms,
    top_pairs,
    zscore_per_head,
)
from vpd.config import TargetModelConfig
from vpd.decomp import Decomposition, DecompositionConfig
from vpd.target.model import TargetLM


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rot(v: torch.Tensor, angle: float) -> torch.Tensor:
    c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
    return torch.stack([v[0] * c - v[1] * s, v[0] * s + v[1] * c])


def _prev_token_model(scale: float = 20.0):
    """1 layer, 4 heads of size 2 (RoPE angle = position radians); every token embeds to the same
    vector, so q and k are constant and only RoPE decides where a query looks: q_h = R(-1) k_h
    (heads 0 and 1; heads 2 and 3 are silent)."""
    torch.manual_seed(0)
    mcfg = TargetModelConfig(n_layer=1, d_model=8, n_head=4, d_mlp=8, context=8, vocab_size=300)
    target = TargetLM(mcfg)
    cfg = DecompositionConfig(matrices=[{"pattern": "h.0.attn.q_proj", "C": 2}, {"pattern": "h.0.attn.k_proj", "C": 2}],
                              steps=1, batch_size=1, ci_fn={"kind": "per_matrix_mlp", "hidden": [4]})
    with torch.no_grad():
        target.wte.weight.fill_(1.0)  # RMSNorm -> x = (1, ..., 1)
    dec = Decomposition(target, cfg)
    k_dir = torch.tensor([1.0, 0.0])
    q_dir = _rot(k_dir, -1.0) * scale
    x_hat = torch.ones(8) / 8 ** 0.5  # unit V: activation a = x . V = sqrt(8)
    with torch.no_grad():
        for name, u_heads in (("h.0.attn.q_proj", (q_dir, 0.3 * q_dir)), ("h.0.attn.k_proj", (k_dir, k_dir))):
            V = torch.stack([x_hat, torch.tensor([1.0, -1.0] * 4) / 8 ** 0.5], 1)  # [d_in, C]; c=1 is off (x . V = 0)
            U = torch.zeros(2, 8)
            U[0, :2], U[0, 2:4] = u_heads
            U[1] = torch.linspace(0.1, 0.8, 8)
            dec.comps[name].V.copy_(V), dec.comps[name].U.copy_(U)
            dict(target.named_modules())[name].weight.copy_((V @ U).T)  # W = (V U)^T exactly
    return target, dec


def test_hand_built_previous_token_layer_scores_peak_at_offset_one():
    target, dec = _prev_token_model()
    ids = torch.randint(0, 300, (3, 8), generator=torch.Generator().manual_seed(0))
    by = attention_by_offset(target, ids, 6)  # [1, H, 7]
    assert int(by[0, 0].argmax()) == 1 and by[0, 0, 1] > 0.5, by  # the model really attends to t - 1
    _, Uq = dec.components("h.0.attn.q_proj")
    _, Uk = dec.components("h.0.attn.k_proj")
    mean = torch.tensor([2.0, 1.0])
    s = pair_scores(Uq, Uk, mean, mean, target.rope_cos, target.rope_sin, 4, 6)  # [2, 2, H, 7]
    assert s.shape == (2, 2, 4, 7)
    assert int(s[0, 0, 0].argmax()) == 1 and int(s[0, 0, 1].argmax()) == 1
    # at offset 1 the rotated query is parallel to the key: |2 q_dir| |2 k_dir| / sqrt(hd)
    assert torch.isclose(s[0, 0, 0, 1], torch.tensor(2.0 * 20.0 * 2.0 / 2 ** 0.5), rtol=1e-4)
    assert torch.allclose(s[0, 0, 2:], torch.zeros(2, 7))
    z = zscore_per_head(s)
    assert torch.allclose(z[:, :, 0].mean(), torch.tensor(0.0), atol=1e-5)
    top = top_pairs(z, ["q0", "q1"], ["k0", "k1"], n=4, prev_max=2)
    row = top[(top.q == "q0") & (top.k == "k0")].iloc[0]
    assert row.previous_token and row.pos_peak_offset == 1


def test_head_norms_and_ablation_of_the_previous_token_query():
    target, dec = _prev_token_model()
    df = qk_head_norms(dec, 0, 4, {"h.0.attn.q_proj": torch.tensor([True, True]), "h.0.attn.k_proj": torch.tensor([True, False])})
    q0 = df[(df.matrix == "q") & (df.c == 0)].set_index("head")
    V, _ = dec.components("h.0.attn.q_proj")
    assert q0.loc[0, "norm"] == pytest.approx(float(V[:, 0].norm()) * 20.0, rel=1e-5)
    assert q0.loc[1, "norm"] == pytest.approx(float(V[:, 0].norm()) * 6.0, rel=1e-5)
    assert q0["frac"].sum() == pytest.approx(1.0)
    assert q0.loc[2, "norm"] == 0 and q0.loc[3, "norm"] == 0
    assert len(df[df.matrix == "k"]) == 4  # only the alive k subcomponent, 4 heads
    ids = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(1))
    before = attention_by_offset(target, ids, 6, query_pos=-1)
    after = ablated_attention_by_offset(dec, target, ids, "h.0.attn.q_proj", 0, -1, 6)
    assert before[0, 0, 1] > 0.5
    assert torch.allclose(after[0, 0], torch.full((7,), 1 / 8), atol=1e-5)  # q = 0: uniform over 8 keys
    # ablating the silent subcomponent changes nothing
    same = ablated_attention_by_offset(dec, target, ids, "h.0.attn.q_proj", 1, -1, 6)
    assert torch.allclose(same, before, atol=1e-6)
