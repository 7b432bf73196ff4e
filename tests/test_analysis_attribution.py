"""Attribution graphs: edges equal the analytic gradient x activation x CI on a hand-built linear
model; the JSON has circuit-tracer's shape; pruning keeps the target logit under CI masks; the
graph forward equals the engine's CI-masked forward on a real TargetLM; the pruning objective's
attack stays on its surface in [0, 1] and gives the CI the analytic gradient (1 - r) dCE/dm."""

import pytest
import torch
import torch.nn as nn

from vpd.analysis.attribution import attribution_graph, graph_to_json
from vpd.analysis.graph_config import AttributionConfig, PruneVariant
from vpd.analysis.pruning import PromptObjective, prune_prompt, score_prompt
from vpd.config import TargetModelConfig
from vpd.decomp import Decomposition, DecompositionConfig
from vpd.target.model import TargetLM


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread avoids OpenMP spin-waits on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TwoLinear(nn.Module):
    def __init__(self, d: int = 4, v: int = 5):
        super().__init__()
        self.l1 = nn.Linear(d, d, bias=False)
        self.l2 = nn.Linear(d, v, bias=False)

    def forward(self, x):
        return self.l2(self.l1(x))


def _hand_built(C: int = 3, T: int = 2, d: int = 4, v: int = 5):
    torch.manual_seed(0)
    target = TwoLinear(d, v)
    cfg = DecompositionConfig(matrices=[{"pattern": "l1", "C": C}, {"pattern": "l2", "C": C}], steps=1, batch_size=1,
                              ci_fn={"kind": "per_matrix_mlp", "hidden": [4]}, output_loss="mse")
    dec = Decomposition(target, cfg)
    V1, U1 = torch.randn(d, C), torch.randn(C, d)
    V2, U2 = torch.randn(d, C), torch.randn(C, v)
    with torch.no_grad():
        dec.comps["l1"].V.copy_(V1), dec.comps["l1"].U.copy_(U1)
        dec.comps["l2"].V.copy_(V2), dec.comps["l2"].U.copy_(U2)
    x = torch.randn(1, T, d)
    g1 = torch.tensor([[[0.5, 0.0, 1.0], [0.3, 0.7, 0.0]]])  # [1, T, C]; zeros are not nodes
    g2 = torch.tensor([[[1.0, 0.2, 0.0], [0.0, 0.6, 0.9]]])
    return dec, x, {"l1": g1, "l2": g2}, (V1, U1, V2, U2)


def test_edges_equal_gradient_times_activation_times_ci():
    dec, x, ci, (V1, U1, V2, U2) = _hand_built()
    k = 3
    graph = attribution_graph(dec, x, ci, k)
    a1 = x[0] @ V1  # [T, C]
    s1 = a1 * ci["l1"][0]
    a2 = s1 @ U1 @ V2
    s2 = a2 * ci["l2"][0]
    ids = {(n.matrix, n.pos, n.index): i for i, n in enumerate(graph.nodes) if n.kind == "subcomponent"}
    assert len(ids) == int((ci["l1"] > 0).sum() + (ci["l2"] > 0).sum())
    logit_id = len(graph.nodes) - 1
    checked = 0
    for (m, t, c), i in ids.items():
        assert torch.isclose(torch.tensor(graph.nodes[i].activation), (a1 if m == "l1" else a2)[t, c], atol=1e-5)
        if m != "l2":
            continue
        for (m2, t2, c2), j in ids.items():
            if m2 != "l1":
                continue
            # d a2_c / d s1_c' = U1[c'] . V2[:, c] (same position only), times a1_c' g1_c'
            expected = (U1[c2] @ V2[:, c]) * a1[t2, c2] * ci["l1"][0, t2, c2] if t2 == t else torch.tensor(0.0)
            assert torch.isclose(graph.adjacency[i, j], expected, atol=1e-5), (t, c, t2, c2)
            checked += 1
        # into the logit (last position): U2[c, k] * a2_c * g2_c; l1 nodes reach it only through l2
        expected = U2[c, k] * a2[t, c] * ci["l2"][0, t, c] if t == 1 else torch.tensor(0.0)
        assert torch.isclose(graph.adjacency[logit_id, i], expected, atol=1e-5)
    assert checked > 0
    for (m, t, c), j in ids.items():
        if m == "l1":
            assert graph.adjacency[logit_id, j] == 0
    # no edge runs backwards in the node order (a DAG, as the influence computation assumes)
    assert torch.all(graph.adjacency.triu() == 0)


def test_json_has_circuit_tracer_shape_and_links_refer_to_nodes():
    dec, x, ci, _ = _hand_built()
    graph = attribution_graph(dec, x, ci, 2)
    data = graph_to_json(graph, slug="toy", prompt="a b", token_strings=["a", "b"], target_string="c",
                         subcomponent_name=dec.subcomponent_name)
    assert {"metadata", "qParams", "nodes", "links"} <= set(data)
    assert {"slug", "scan", "prompt_tokens", "prompt", "schema_version"} <= set(data["metadata"])
    ids = [n["node_id"] for n in data["nodes"]]
    assert len(ids) == len(set(ids))
    assert data["links"] and all(lk["source"] in ids and lk["target"] in ids for lk in data["links"])
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1
    for n in data["nodes"]:
        assert {"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "influence"} <= set(n)
    # the logit's own influence row sums the path weights: every subcomponent node reaching it is > 0
    logit = data["nodes"][-1]
    assert logit["feature_type"] == "logit" and 0 < logit["token_prob"] < 1


def _tiny_lm(seed: int = 0):
    torch.manual_seed(seed)
    mcfg = TargetModelConfig(n_layer=2, d_model=16, n_head=2, d_mlp=32, context=8, vocab_size=300)
    target = TargetLM(mcfg)
    cfg = DecompositionConfig(matrices=[{"pattern": "h.*.attn.*", "C": 6}, {"pattern": "h.*.mlp.*", "C": 8}],
                              steps=1, batch_size=1, ci_fn={"kind": "per_matrix_mlp", "hidden": [8]})
    return Decomposition(target, cfg, seed=seed)


def test_graph_forward_matches_engine_ci_masked_forward_and_has_attention_edges():
    dec = _tiny_lm()
    ids = torch.tensor([[5, 17, 42, 7]])
    ci = {n: torch.rand(1, 4, c, generator=torch.Generator().manual_seed(i)) * (torch.rand(1, 4, c) > 0.5)
          for i, (n, c) in enumerate(dec.C.items())}
    graph = attribution_graph(dec, ids, ci, 11, embedding=dec.target.wte, tokens=ids[0].tolist())
    ref = dec.masked_forward(ids, ci, None)[0, -1]
    assert torch.allclose(graph.logits, ref.float(), atol=1e-4)
    pos = {i: n.pos for i, n in enumerate(graph.nodes)}
    tgt, src = torch.nonzero(graph.adjacency, as_tuple=True)
    assert any(pos[int(s)] < pos[int(t)] for t, s in zip(tgt, src)), "no cross-position edge through attention"


def test_pruning_keeps_target_under_ci_masks_and_removes_nodes():
    dec = _tiny_lm(1)
    ids = torch.tensor([[5, 17, 42, 7]])
    target_logits = dec.target_forward(ids)[0, -1]
    tok = int(target_logits.argmax())
    cfg = AttributionConfig(steps=120, lr=0.05, minimality_coeff=0.02, eval_stochastic_samples=4, eval_pgd_restarts=1,
                            eval_pgd_steps=4)
    gen = torch.Generator().manual_seed(0)
    ones = {n: torch.ones(1, 4, c) for n, c in dec.C.items()}
    res = prune_prompt(dec, ids, tok, PruneVariant(ci_masked=1.0), cfg, gen, ci_upper=ones)
    scores = score_prompt(dec, ids, tok, res.ci, cfg, gen)
    total = sum(dec.C.values()) * 4
    assert scores.n_nodes < total
    # the pruned circuit still predicts the target token: logit gap within tolerance, P not lower than the target's - 0.05
    masked = dec.masked_forward(ids, res.ci, None)[0, -1]
    assert int(masked.argmax()) == tok
    assert scores.p_ci >= scores.p_target - 0.05
    assert 0 <= scores.p_adversarial <= 1 and 0 <= scores.p_stochastic <= 1 and 0 <= scores.p_adversarial_all <= 1
    assert res.history[0]["n_nodes"] == total and res.history[-1]["n_nodes"] == scores.n_nodes


def test_adversarial_term_gives_ci_the_analytic_gradient_one_minus_source():
    """m = g + (1-g) r: dCE/dg = (1 - r) dCE/dm, zero exactly where the attack switched a node fully on."""
    dec, x, ci, (V1, U1, V2, U2) = _hand_built()
    k, last = 2, x.shape[1] - 1
    obj = PromptObjective(dec, x, k, "ce")
    g = dec.layout.cat(ci).clone().requires_grad_(True)  # [1, T, 6], l1 then l2
    src = torch.rand(1, 2, 6 + 2, generator=torch.Generator().manual_seed(1))
    src[0, last, 3] = 1.0  # l2 channel 0 fully on at the last position
    obj.recon(obj.logits_sources(g, src)).backward()
    r1, r2, rd1, rd2 = src[0, last, :3], src[0, last, 3:6], src[0, last, 6], src[0, last, 7]
    m1 = ci["l1"][0, last] + (1 - ci["l1"][0, last]) * r1
    m2 = ci["l2"][0, last] + (1 - ci["l2"][0, last]) * r2
    D1, D2 = dec.delta("l1").float(), dec.delta("l2").float()  # [d_out, d_in]
    xl = x[0, last]
    a1 = xl @ V1
    y1 = (a1 * m1) @ U1 + rd1 * (xl @ D1.T)
    a2 = y1 @ V2
    y2 = (a2 * m2) @ U2 + rd2 * (y1 @ D2.T)
    e = torch.softmax(y2, -1) - torch.nn.functional.one_hot(torch.tensor(k), y2.shape[-1]).float()  # dCE/dy2
    dm2 = a2 * (U2 @ e)
    dy1 = V2 @ (m2 * (U2 @ e)) + rd2 * (e @ D2)
    dm1 = a1 * (U1 @ dy1)
    expected = torch.cat([(1 - r1) * dm1, (1 - r2) * dm2])
    assert torch.allclose(g.grad[0, last], expected, atol=1e-5)
    assert g.grad[0, last, 3] == 0 and (g.grad[0, last, [0, 1, 2, 4, 5]].abs() > 0).all()
    assert torch.all(g.grad[0, :last] == 0)  # no mixing across positions in this model


def test_attack_sources_stay_on_the_surface_in_unit_interval_and_persist():
    dec = _tiny_lm(2)
    ids = torch.tensor([[5, 17, 42, 7]])
    n, L = dec.layout.total, dec.layout.L
    surface = torch.rand(1, 4, n, generator=torch.Generator().manual_seed(0)) > 0.5
    obj = PromptObjective(dec, ids, 3, "ce", surface)
    g = torch.rand(1, 4, n, generator=torch.Generator().manual_seed(1)) * surface
    gen = torch.Generator().manual_seed(2)
    src = obj.attack(g, 3, 0.7, gen)  # big steps: most sources hit a clamp
    again = obj.attack(g, 3, 0.7, gen, src)  # a persistent continuation
    for s in (src, again):
        assert s.shape == (1, 4, n + L) and s.min() >= 0 and s.max() <= 1
        assert torch.all(s[..., :n][~surface] == 0)  # off the surface: ablated
        assert (s[..., n:] > 0).any()  # the Δ channels are always attacked
    assert ((src == 0) | (src == 1)).float().mean() > 0.5
    assert torch.equal(obj.attack(g, 0, 0.7, gen, src), src)  # 0 steps: the persistent sources unchanged
    # the attack raises the CE it ascends
    fresh = obj.init_sources(g, torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert obj.recon(obj.logits_sources(g, again)) > obj.recon(obj.logits_sources(g, fresh))


def test_adversarial_pruning_keeps_nodes_within_the_active_set():
    dec = _tiny_lm(1)
    ids = torch.tensor([[5, 17, 42, 7]])
    tok = int(dec.target_forward(ids)[0, -1].argmax())
    cfg = AttributionConfig(steps=8, stochastic_samples=1, pgd_steps=2, eval_stochastic_samples=2, eval_pgd_restarts=1,
                            eval_pgd_steps=2)
    gen = torch.Generator().manual_seed(0)
    ci_upper = {n: torch.rand(1, 4, c, generator=gen) * (torch.rand(1, 4, c, generator=gen) > 0.6) for n, c in dec.C.items()}
    variant = PruneVariant(stochastic=1.0, adversarial=1.0, minimality_scale=0.5)
    res = prune_prompt(dec, ids, tok, variant, cfg, gen, ci_upper=ci_upper)
    for n in dec.names:
        assert torch.all(res.ci[n][ci_upper[n] == 0] == 0)
    assert "adversarial" in res.history[-1] and res.history[0]["n_nodes"] == sum(int((v > 0).sum()) for v in ci_upper.values())
