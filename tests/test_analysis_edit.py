"""Emoticon edit: the rank-1 weight delta, its output direction and sign, eye finding, the split, rank-1 LoRA."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vpd.analysis.edit import (
    choose_sign, edit_delta, edit_direction, split_eval, subcomponent_edit,
    with_weight_delta,
)
from vpd.analysis.lora import RankOneLoRA, edit_loss, train_lora
from vpd.data.emoticons import EmoticonVocab, find_eyes
from vpd.utils.divergence import KLTarget
from test_analysis_harvest import tiny_decomposition

MATRIX = "h.0.mlp.down_proj"
O_ID = 7


def test_edit_delta_is_rank_one_and_changes_only_that_matrix():
    dec = tiny_decomposition()
    target = dec.target
    delta = subcomponent_edit(dec, MATRIX, 3, target.wte.weight, O_ID, alpha=3.0, sign=-1.0)
    edited = with_weight_delta(target, MATRIX, delta)
    before, after = target.state_dict(), edited.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [f"{MATRIX}.weight"]
    diff = after[f"{MATRIX}.weight"] - before[f"{MATRIX}.weight"]
    assert torch.allclose(diff, delta, atol=1e-6)
    assert torch.linalg.matrix_rank(diff, rtol=1e-5) == 1
    # W' is the decomposition with U_c replaced: (V U')^T + Δ
    V, U = dec.components(MATRIX)
    U2 = U.clone()
    U2[3] = edit_direction(target.wte.weight, O_ID, 3.0, -1.0)
    assert torch.allclose((V @ U2).T + dec.delta(MATRIX), after[f"{MATRIX}.weight"], atol=1e-5)


def test_edited_subcomponent_writes_alpha_times_unit_unembedding():
    dec = tiny_decomposition()
    W = dict(dec.target.named_modules())[MATRIX].weight.detach()
    V, U = dec.components(MATRIX)
    alpha, c = 4.0, 5
    new_u = edit_direction(dec.target.wte.weight, O_ID, alpha, 1.0)
    u_o = dec.target.wte.weight[O_ID].detach()
    assert torch.allclose(new_u, alpha * u_o / u_o.norm())
    assert new_u.norm().item() == pytest.approx(alpha, rel=1e-6)
    W2 = W + edit_delta(V[:, c], U[c], new_u)
    x = torch.randn(20, W.shape[1])
    a = x @ V[:, c]  # [20] activations of the subcomponent
    # the output of the edited matrix minus everything but component c is a_c * (alpha u_o/||u_o||)
    y_rest = x @ W.T - a[:, None] * U[c]
    assert torch.allclose(x @ W2.T - y_rest, a[:, None] * new_u, atol=1e-5)


def _steer_component(dec, windows, c):
    """Point V_c along the mean input of the matrix so the subcomponent is strongly active everywhere."""
    _, xs = dec.matrix_inputs(windows)
    m = xs[MATRIX].reshape(-1, xs[MATRIX].shape[-1]).mean(0)
    with torch.no_grad():
        dec.comps[MATRIX].V[:, c] = 5 * m / m.norm() ** 2  # a_c = 5 on the mean input


def test_sign_rule_raises_p_o_on_hand_built_case():
    dec = tiny_decomposition()
    target = dec.target
    windows = torch.randint(0, 40, (6, 12), generator=torch.Generator().manual_seed(2))
    c = 2
    _steer_component(dec, windows, c)
    _, xs = dec.matrix_inputs(windows)
    act = xs[MATRIX] @ dec.components(MATRIX)[0][:, c]
    mask = act > 1.0  # where the subcomponent is strongly active
    assert mask.sum() > 10

    def p_o(model):
        return F.softmax(model(windows), -1)[..., O_ID][mask].mean().item()

    base = p_o(target)
    sign, p = choose_sign(target, dec, MATRIX, c, windows, mask, O_ID, alpha=6.0, batch_size=4)
    assert sign == 1.0  # positive activation: +u_o raises 'o'
    assert p[1.0] > base > p[-1.0]
    edited = with_weight_delta(target, MATRIX, subcomponent_edit(dec, MATRIX, c, target.wte.weight, O_ID, 6.0, sign))
    assert p_o(edited) == pytest.approx(p[1.0]) and p_o(edited) > 1.2 * base
    # flipping the component's input direction flips the chosen sign
    with torch.no_grad():
        dec.comps[MATRIX].V[:, c] *= -1
    sign2, _ = choose_sign(target, dec, MATRIX, c, windows, mask, O_ID, alpha=6.0, batch_size=4)
    assert sign2 == -1.0


def test_find_eyes_and_document_split():
    #  ids: 1 ':'  2 ';'  3 ')'  4 'o'  5 'x' (alnum)  6 ' ' (space)  0 end of text
    boundary = np.array([True, True, True, True, False, False, True])
    ev = EmoticonVocab(eye_ids=[1, 2], mouth_ids=[3, 4], boundary=boundary, target_id=4)
    toks = np.array([5, 1, 3, 6, 0, 2, 4, 5, 1, 5, 6, 0, 1, 3, 0])
    faces, other = find_eyes(toks, ev)
    # ':)' at 1 then ' ' = face; ';o' at 5 followed by 'x' = not a face; ':x' at 8 = other; ':)' at 12 then EOT = face
    assert faces.tolist() == [1, 12] and other.tolist() == [5, 8]
    docs = np.array([0, 0, 1, 2, 2, 2, 3, 4])
    move, note = split_eval(docs, n_val=1, min_eval=4, seed=0)
    assert 3 <= move.sum() <= len(docs) // 2 + 0 or move.sum() <= len(docs) // 2
    for d in np.unique(docs):  # whole documents move
        assert move[docs == d].all() or not move[docs == d].any()
    assert "by document" in note
    move2, note2 = split_eval(docs, n_val=5, min_eval=4, seed=0)
    assert not move2.any() and "val.bin" in note2


def test_rank_one_lora_trains_and_lowers_its_loss():
    dec = tiny_decomposition()
    target = dec.target
    w0 = {k: v.clone() for k, v in target.state_dict().items()}
    windows = torch.randint(0, 40, (8, 12), generator=torch.Generator().manual_seed(4))
    fire = torch.zeros(8, 12, dtype=torch.bool)
    fire[:, 6] = True
    res = train_lora(target, MATRIX, windows, fire, O_ID, lam=1.0, steps=40, lr=0.05, batch_size=4, seed=0)
    assert isinstance(res.lora, RankOneLoRA)
    delta = res.lora.delta()
    assert delta.shape == dict(target.named_modules())[MATRIX].weight.shape
    assert torch.linalg.matrix_rank(delta, rtol=1e-5) == 1
    assert np.mean(res.losses[-5:]) < np.mean(res.losses[:5]) - 0.2
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in w0.items())  # target untouched
    # the trained delta, applied as a weight, reproduces the loss of the hooked model and lowers CE('o')
    edited = with_weight_delta(target, MATRIX, delta)
    with torch.no_grad():
        base = target(windows)
        _, ce_before, kl_before = edit_loss(base, KLTarget(base), fire, O_ID, 1.0)
        _, ce_after, kl_after = edit_loss(edited(windows), KLTarget(base), fire, O_ID, 1.0)
    assert ce_after < ce_before and kl_after > 0 and kl_before == pytest.approx(0.0, abs=1e-6)


def test_ranking_precision_recall_against_direct_ci():
    from vpd.analysis.config import EditConfig
    from vpd.analysis.edit import EyeWindows, rank_subcomponents

    dec = tiny_decomposition()
    g = torch.Generator().manual_seed(8)

    def windows(n):
        return EyeWindows(torch.randint(0, 40, (n, 12), generator=g), np.full(n, 9), np.full(n, "train", dtype=object),
                          np.arange(n), np.arange(n))

    pos, neg = windows(6), windows(10)
    cfg = EditConfig(fire_threshold=0.1)
    table = rank_subcomponents(dec, pos, neg, neg_total=40, cfg=cfg, d_model=16, batch_size=4)
    ci_p, ci_n = dec.ci(pos.windows), dec.ci(neg.windows)
    assert (table.f1.diff().dropna() <= 1e-12).all()  # best first
    for r in table.itertuples():
        tp = int((ci_p[r.matrix][:, 9, r.c] > 0.1).sum())
        fp = int((ci_n[r.matrix][:, 9, r.c] > 0.1).sum())
        assert r.fires_on_eyes == tp and r.fires_on_other_sampled == fp
        assert r.recall == pytest.approx(tp / 6)
        assert r.precision == pytest.approx(tp / (tp + fp * 40 / 10))  # false positives at the corpus ratio
        assert r.editable == r.matrix.endswith(("down_proj", "o_proj"))  # both write to the residual stream
